"""Helpers for the progress-yielding generators that long runs are built from."""

from __future__ import annotations

from collections.abc import Callable, Generator
from typing import TypeVar

R = TypeVar("R")
Y = TypeVar("Y")
Z = TypeVar("Z")


def map_progress(gen: Generator[Y, None, R], convert: Callable[[Y], Z]) -> Generator[Z, None, R]:
    """Re-yield a generator's records converted, and return its return value.

    For a long run built from a shorter one: ``result = yield from map_progress(inner, f)``.
    """
    while True:
        try:
            record = next(gen)
        except StopIteration as stop:
            return stop.value
        yield convert(record)


def run_to_completion(
    gen: Generator[Y, None, R], on_progress: Callable[[Y], object] | None = None
) -> R:
    """Exhaust a generator and return its return value.

    Parameters
    ----------
    gen : generator
        A long run that yields progress records and returns its result.
    on_progress : callable, optional
        Called with every record it yields (e.g. to update a progress bar).
    """
    while True:
        try:
            record = next(gen)
        except StopIteration as stop:
            return stop.value
        if on_progress is not None:
            on_progress(record)
