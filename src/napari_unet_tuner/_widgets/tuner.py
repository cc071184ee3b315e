"""The dock widget: model, segment, annotate, fine-tune, in four panels over the core."""

from __future__ import annotations

from typing import TYPE_CHECKING

from magicgui.widgets import Container
from napari.qt.threading import WorkerBase
from qtpy.QtCore import QTimer
from qtpy.QtWidgets import QApplication, QTabWidget

from napari_unet_tuner._widgets.annotate_panel import AnnotatePanel
from napari_unet_tuner._widgets.collector import CollectorFreeze
from napari_unet_tuner._widgets.model_panel import ModelPanel
from napari_unet_tuner._widgets.segment_panel import SegmentPanel
from napari_unet_tuner._widgets.train_panel import TrainPanel
from napari_unet_tuner._widgets.warm_up import ImportWarmUp, show_progress
from napari_unet_tuner.versions import ModelVersions

if TYPE_CHECKING:
    import napari

TAB_TITLES = ("1 Model", "2 Segment", "3 Annotate", "4 Fine-tune")


class UNetTunerWidget(Container):
    """Segment the open image, paint corrections or scribbles, fine-tune, segment again.

    Parameters
    ----------
    viewer : napari.viewer.Viewer
        The viewer whose layers it segments and learns from.
    warm_up : ImportWarmUp, optional
        The heavy imports, started by `TunerDock`; without one, the widget
        starts its own.
    """

    def __init__(self, viewer: napari.viewer.Viewer, warm_up: ImportWarmUp | None = None) -> None:
        super().__init__(labels=False)
        self.viewer = viewer
        self.versions = ModelVersions()
        self.model_panel = ModelPanel(self)
        self.segment_panel = SegmentPanel(self)
        self.annotate_panel = AnnotatePanel(self)
        self.train_panel = TrainPanel(self)
        # One step of the loop at a time, in tabs: four panels stacked need more
        # height than a 1280 x 720 laptop screen has.
        self.tabs = QTabWidget()
        self.tabs.setDocumentMode(True)
        for title, panel in zip(TAB_TITLES, self.panels, strict=True):
            panel.native.layout().addStretch(1)  # controls at the top, not spread out
            self.tabs.addTab(panel.native, title)
        self.native.layout().addWidget(self.tabs)
        self.native.setMinimumWidth(300)
        self.native.setMaximumWidth(420)
        self.model_panel.load_default(None if warm_up is None else warm_up.result)
        self._collector: CollectorFreeze | None = None
        if warm_up is None:
            # Made directly (a script), not by the dock: the heavy imports start
            # once the GUI thread's own work is done. The two threads would
            # share the GIL: the default model loaded in 400-1000 ms beside
            # the imports instead of 30 ms.
            self._collector = CollectorFreeze(viewer)
            self._collector.watch(self.native)
            warm_up = ImportWarmUp(freeze=self._collector.freeze)
            show_progress(warm_up, self.native)
        self.warm_up = warm_up
        # Closing napari mid-run abandons the run (nothing is written while it
        # runs) instead of leaving a thread to die on deleted Qt objects.
        app = QApplication.instance()
        if app is not None:
            app.aboutToQuit.connect(self.shutdown)
        segment, train = self.segment_panel, self.train_panel
        self.native.destroyed.connect(lambda *_: _stop_workers(segment, train, detach=True))

    @property
    def panels(self) -> tuple[Container, ...]:
        """The model, segment, annotate and fine-tune panels, in the order of the loop."""
        return self.model_panel, self.segment_panel, self.annotate_panel, self.train_panel

    def show_tab(self, panel: Container) -> None:
        """Bring a panel's tab to the front."""
        self.tabs.setCurrentIndex(self.panels.index(panel))

    @property
    def image_layer(self) -> napari.layers.Image | None:
        """The image layer chosen in the segment panel."""
        return self.segment_panel.image.value

    # What the panels ask of each other goes through these few methods, so
    # that no panel drives another's widgets (the loop's wiring is here).

    @property
    def device(self) -> str:
        """The device chosen in the model panel (``"auto"``, ``"cpu"``, ...)."""
        return self.model_panel.device.value

    @property
    def segmenting(self) -> bool:
        """Whether a segmentation is running."""
        return self.segment_panel.worker is not None

    def segment(self, checkpoint=None, field_of_view: bool = False) -> WorkerBase | None:
        """Segment the chosen image now (with ``checkpoint``: a preview); return the worker."""
        return self.segment_panel.run(checkpoint, field_of_view=field_of_view)

    def segment_soon(self) -> None:
        """Segment the chosen image with the active model in a later turn of the event loop."""
        QTimer.singleShot(0, self.segment_panel.run)

    def diameter_for(self, image: napari.layers.Image):
        """Return the object size segmentation uses for ``image`` (see the segment panel)."""
        return self.segment_panel.diameter_for(image)

    def segments_in_3d(self, image: napari.layers.Image, data) -> bool:
        """Whether ``image`` is segmented into 3D objects."""
        return self.segment_panel.segments_in_3d(image, data)

    def new_corrections_layer(self) -> napari.layers.Labels:
        """Add a corrections layer over the latest segmentation (see the annotate panel)."""
        return self.annotate_panel.make_corrections_layer()

    def annotations_changed(self) -> None:
        """Offer the current annotation layers to fine-tuning."""
        self.train_panel.reset_choices()

    def on_segmented(self) -> None:
        """Start the review over on the segmentation just shown."""
        self.annotate_panel.review.on_segmented()

    def on_model_changed(self) -> None:
        """Refresh what shows the active model (its card and the version list)."""
        self.model_panel.refresh()

    def shutdown(self) -> None:
        """Abandon running work and wait briefly for the threads to end."""
        _stop_workers(self.segment_panel, self.train_panel)

    def reset_choices(self, event=None) -> None:
        """Keep every layer combo in sync with the viewer's layers."""
        # The panels live in tabs, not in this container's own list of widgets.
        for panel in self.panels:
            panel.reset_choices(event)
        self.annotate_panel.update_summary()


_SHUTDOWN_WAIT_MS = 3000


def _stop_workers(segment: SegmentPanel, train: TrainPanel, detach: bool = False) -> None:
    """Quit both panels' workers at their next yield and wait for them.

    With ``detach`` (the widget is being deleted) their signals are first
    disconnected: a progress record or a "finished" already on its way
    would otherwise reach buttons and plots that no longer exist.
    """
    if detach:
        workers = (
            segment.worker,
            train.worker,
            getattr(train, "_preview_worker", None),
            train.live.worker,
            getattr(train.live, "_preview_worker", None),
        )
        for worker in workers:
            if worker is not None:
                _disconnect(worker)
    segment.cancel()
    train.abort()
    WorkerBase.await_workers(msecs=_SHUTDOWN_WAIT_MS)


def _disconnect(worker: WorkerBase) -> None:
    for name in ("yielded", "returned", "finished", "aborted"):
        signal = getattr(worker, name, None)  # a function worker yields nothing
        if signal is None:
            continue
        try:
            signal.disconnect()
        except (TypeError, RuntimeError):
            pass  # nothing connected, or already gone
