"""Helpers for the progress-yielding generators that long runs are built from."""

from __future__ import annotations

from collections.abc import Generator
from typing import TypeVar

R = TypeVar("R")


def run_to_completion(gen: Generator[object, None, R]) -> R:
    """Exhaust a generator, discarding what it yields, and return its return value."""
    while True:
        try:
            next(gen)
        except StopIteration as stop:
            return stop.value
