"""What napari docks: a panel that shows at once and holds the tuner once torch is loaded.

This module imports neither torch nor the core: importing them on the GUI
thread, when napari docked the tuner itself, froze the viewer for 2 s on a
quiet machine.
"""

from __future__ import annotations

import time
from typing import TYPE_CHECKING

from magicgui.widgets import Container, Label
from qtpy.QtCore import QTimer
from qtpy.QtWidgets import QApplication

from napari_unet_tuner._widgets.collector import CollectorFreeze
from napari_unet_tuner._widgets.warm_up import ImportWarmUp, show_progress

if TYPE_CHECKING:
    import napari

    from napari_unet_tuner._widgets.tuner import UNetTunerWidget

LOADING_TEXT = "Loading torch and the default model (a few seconds)..."
# napari paints the window with the new dock (the canvas shrinks) in the next
# turns of its event loop; with the imports already running beside it, each of
# its OpenGL calls waited for the GIL and that paint froze a busy viewer
# 350-590 ms, against 130-220 ms with the imports started this much later.
WARM_UP_DELAY_S = 0.3


class TunerDock(Container):
    """Shows "loading" while a thread imports torch, then the `UNetTunerWidget`.

    Parameters
    ----------
    viewer : napari.viewer.Viewer
        Injected by napari.

    Attributes
    ----------
    tuner : UNetTunerWidget or None
        The tuner, once the imports have ended.
    """

    def __init__(self, viewer: napari.viewer.Viewer) -> None:
        super().__init__(labels=False)
        self.viewer = viewer
        self.tuner: UNetTunerWidget | None = None
        self._loading = Label(value=LOADING_TEXT)
        self.append(self._loading)
        self.collector = CollectorFreeze(viewer)
        self.collector.watch(self.native)
        self.warm_up = ImportWarmUp(freeze=self.collector.freeze, delay_s=WARM_UP_DELAY_S)
        show_progress(self.warm_up, self.native)
        self._timer = QTimer(self.native)
        self._timer.setInterval(50)
        self._timer.timeout.connect(self._show_tuner_when_loaded)
        self._timer.start()

    def wait_for_tuner(self, timeout_s: float = 300.0) -> UNetTunerWidget:
        """Process Qt events until the tuner shows, then return it.

        For scripts and benchmarks that drive the widget; the GUI itself
        never waits.
        """
        app = QApplication.instance()
        deadline = time.monotonic() + timeout_s
        while self.tuner is None:
            if time.monotonic() > deadline:
                raise TimeoutError(f"the U-Net Tuner did not load within {timeout_s:.0f} s")
            app.processEvents()
            time.sleep(0.01)
        return self.tuner

    def _show_tuner_when_loaded(self) -> None:
        if not self.warm_up.done:
            return
        self._timer.stop()
        # Imported by the warm-up thread by now (or, had it failed, here).
        from napari_unet_tuner._widgets.tuner import UNetTunerWidget

        self.tuner = UNetTunerWidget(self.viewer, warm_up=self.warm_up)
        self.remove(self._loading)
        self.native.layout().setContentsMargins(0, 0, 0, 0)  # the tuner has its own
        self.append(self.tuner)
