"""Short full garbage collections once a session has imported torch."""

from __future__ import annotations

import gc
from typing import TYPE_CHECKING

from qtpy.QtCore import QEvent, QObject, QTimer

if TYPE_CHECKING:
    import napari
    from qtpy.QtWidgets import QWidget


class CollectorFreeze(QObject):
    """Take what is alive after the heavy imports out of Python's full collections.

    Torch and the rest of the warm-up add some 250,000 objects that live as
    long as the process. Each full garbage collection scans every object
    while it holds the GIL, so the viewer froze for each one: 360-500 ms on
    a busy machine here, on the first Segment pressed while the widget still
    imported (benchmarks/bench_responsiveness.py). `gc.freeze` moves every
    live object to a generation that collections skip, in no time.

    What is frozen is freed as usual when nothing refers to it any more;
    only reference cycles wait. Among what was alive at the freeze, the
    viewer and its layers can become such cycles. So the first removal of a
    layer from the viewer, or the closing of the widget's window, unfreezes
    everything: collections then scan all objects again, as without the
    freeze. A layer removed while the imports run means no freeze at all.

    Parameters
    ----------
    viewer : napari.viewer.Viewer
        The viewer whose layers may be frozen.
    """

    def __init__(self, viewer: napari.viewer.Viewer) -> None:
        super().__init__()
        self._frozen = False
        self._released = False
        viewer.layers.events.removed.connect(self.release)

    @property
    def frozen(self) -> bool:
        """Whether this session's objects are frozen now."""
        return self._frozen

    def freeze(self) -> None:
        """Freeze every live object, unless released or frozen already.

        Called by the warm-up thread while collection is paused, so that no
        collection runs between the imports and the freeze.
        """
        # Another widget's freeze is still on: its owner tracks those objects.
        if self._released or gc.get_freeze_count():
            return
        gc.freeze()
        self._frozen = True
        if self._released:  # a layer went while this thread froze
            self.release()

    def release(self, *_: object) -> None:
        """Unfreeze (a frozen layer or window may now be garbage); never freeze again."""
        self._released = True
        if self._frozen:
            self._frozen = False
            gc.unfreeze()

    def watch(self, widget: QWidget) -> None:
        """Release when ``widget`` is deleted, or the window it is docked in closes."""
        widget.destroyed.connect(self.release)
        QTimer.singleShot(0, lambda: self._watch_window(widget))

    def _watch_window(self, widget: QWidget) -> None:
        # Docked by the time the event loop runs again: window() is the viewer's.
        try:
            widget.window().installEventFilter(self)
        except RuntimeError:
            self.release()  # deleted before it was docked

    def eventFilter(self, watched: QObject, event: QEvent) -> bool:  # noqa: N802 - Qt's name
        """Release on the watched window's close; let every event through."""
        if event.type() == QEvent.Type.Close:
            self.release()
        return False
