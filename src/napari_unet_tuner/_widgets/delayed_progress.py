"""A napari progress bar that shows only once the work outlasts a delay."""

from __future__ import annotations

from napari.utils import progress
from qtpy.QtCore import QTimer
from qtpy.QtWidgets import QWidget

#: Work shorter than this shows no bar (a segmentation of a plane takes about 1 s).
SHOW_AFTER_MS = 1500


class DelayedProgress:
    """napari's progress bar for work that is often short.

    Each new napari progress bar repaints the whole window at once (Qt's
    ``QProgressBar.setValue`` paints synchronously and napari shows its
    activity indicator); with the OpenGL canvas composited in, that froze a
    busy, software-rendered viewer 50-130 ms at every segmentation. A bar
    for work that ends in a second tells the user nothing, so it appears
    only once the work has run ``delay_ms``, showing how far it got.

    Parameters
    ----------
    description : str
        The bar's text.
    owner : QWidget
        The widget the work belongs to: no bar appears once it is deleted.
    delay_ms : int
        How long the work runs before the bar appears.
    """

    def __init__(self, description: str, owner: QWidget, delay_ms: int = SHOW_AFTER_MS):
        self._description = description
        self._done = 0
        self._total = 0
        self._bar: progress | None = None
        self._timer = QTimer(owner)
        self._timer.setSingleShot(True)
        self._timer.timeout.connect(self._show)
        self._timer.start(delay_ms)

    @property
    def shown(self) -> bool:
        """Whether the bar is on screen (the work outlasted the delay)."""
        return self._bar is not None

    def set_description(self, description: str) -> None:
        """Change the bar's text."""
        self._description = description
        if self._bar is not None:
            self._bar.set_description(description)

    def update_to(self, done: int, total: int) -> None:
        """Record that ``done`` of ``total`` steps are finished."""
        self._done, self._total = done, total
        if self._bar is not None:
            self._bar.total = total
            self._bar.update(done - self._bar.n)

    def close(self) -> None:
        """End the bar (or its wait): the work is over."""
        self._timer.stop()
        if self._bar is not None:
            self._bar.close()

    def _show(self) -> None:
        self._bar = progress(total=self._total, desc=self._description)
        self._bar.update(self._done)
