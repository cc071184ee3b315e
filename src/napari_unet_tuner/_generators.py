"""Helpers for the progress-yielding generators that long runs are built from."""

from __future__ import annotations

from collections.abc import Callable, Generator
from typing import TypeVar

R = TypeVar("R")
Y = TypeVar("Y")


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
