"""Learn as I correct: a `LiveTrainer` in a worker, fed the annotation layers as they change."""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING

from magicgui.widgets import CheckBox, Container, Label
from napari.qt.threading import create_worker
from qtpy.QtCore import QTimer

from napari_unet_tuner._widgets.worker_errors import report_errors_plainly
from napari_unet_tuner._widgets.wrapping_label import insert_wrapping_label
from napari_unet_tuner.config import TrainingConfig
from napari_unet_tuner.training.data import AnnotatedImage
from napari_unet_tuner.training.live import LiveTrainer
from napari_unet_tuner.training.records import TrainingProgress

if TYPE_CHECKING:
    from napari_unet_tuner._widgets.tuner import UNetTunerWidget

# Annotations are taken this long after the last brush stroke: one copy of
# the layers per pause in painting, never one per stroke.
PICKUP_MS = 1500
# The field of view is re-segmented with the model being trained this often.
LIVE_PREVIEW_SECONDS = 4.0


class LivePanel(Container):
    """A checkbox that trains while the user corrects, and a line that says how it goes.

    Parameters
    ----------
    tuner : UNetTunerWidget
        The widget whose active model is the start and whose versions get the offers.
    annotated_images : callable
        Returns the selected annotation layers with their images, as copies.
    annotation_layers : callable
        Returns the selected annotation layers, whose edits are watched.
    """

    def __init__(
        self,
        tuner: UNetTunerWidget,
        annotated_images: Callable[[], list[AnnotatedImage]],
        annotation_layers: Callable[[], list],
    ) -> None:
        super().__init__(labels=False)
        self._tuner = tuner
        self._annotated_images = annotated_images
        self._annotation_layers = annotation_layers
        self.trainer: LiveTrainer | None = None
        self.worker = None
        self._preview_worker = None
        self._watched: list = []
        self._offer_index: int | None = None
        # The counts of the last validation: what the model reproduces now.
        self.counts = None
        self.toggle = CheckBox(
            text="Learn as I correct",
            value=False,
            tooltip="Train in the background while you correct: each pause in painting is "
            f"learned, the field of view is re-segmented every {LIVE_PREVIEW_SECONDS:.0f} s "
            "with the model being trained, and each model that reproduces more of your "
            "corrections becomes the active version (not saved until you save it). "
            "Your layers are never changed.",
        )
        self.toggle.changed.connect(self._on_toggle)
        self.status = Label(value="")
        self.append(self.toggle)
        insert_wrapping_label(self, len(self), self.status)
        self._pickup = QTimer()
        self._pickup.setSingleShot(True)
        self._pickup.setInterval(PICKUP_MS)
        self._pickup.timeout.connect(self.give_annotations)

    @property
    def running(self) -> bool:
        """Whether live training is on."""
        return self.worker is not None

    def _on_toggle(self, on: bool) -> None:
        if on and self.worker is None:
            self.start()
        elif not on and self.worker is not None:
            self.stop()

    def start(self):
        """Start training live on the selected annotation layers; return the worker."""
        start = self._tuner.versions.active
        if start is None:
            self.status.value = "Load a model first."
            self.toggle.value = False
            return None
        self.trainer = LiveTrainer(start, TrainingConfig(device=self._tuner.device))
        self._offer_index = None
        self._watch(self._annotation_layers())
        self.give_annotations()
        worker = create_worker(
            self._tuner.warm_up.after(self.trainer.run),
            preview_every=LIVE_PREVIEW_SECONDS,
            _start_thread=False,
            _ignore_errors=True,
        )
        report_errors_plainly(worker)
        worker.yielded.connect(self._on_record)
        worker.finished.connect(self._done)
        self.worker = worker
        worker.start()
        return worker

    def stop(self) -> None:
        """Stop training; the active version stays the best offered."""
        self._pickup.stop()
        self._watch([])
        if self.trainer is not None:
            self.trainer.stop()
        self.status.value = "stopping..."

    def abort(self) -> None:
        """Stop without waiting for anything (the viewer is closing)."""
        self.stop()
        if self.worker is not None:
            self.worker.quit()

    def annotations_edited(self, event=None) -> None:
        """Take the annotations once painting pauses for `PICKUP_MS` (called on each stroke)."""
        self._pickup.start()

    def give_annotations(self) -> None:
        """Hand the trainer a copy of the selected annotations now."""
        if self.trainer is None:
            return
        self._watch(self._annotation_layers())  # layers added since
        annotated = self._annotated_images()
        if annotated:
            self.trainer.update(annotated)
        else:
            self.status.value = "Correct a prediction or scribble: learning starts then."

    def _watch(self, layers: list) -> None:
        for layer in self._watched:
            layer.events.paint.disconnect(self.annotations_edited)
            layer.events.data.disconnect(self.annotations_edited)
        self._watched = list(layers)
        for layer in self._watched:
            layer.events.paint.connect(self.annotations_edited)
            layer.events.data.connect(self.annotations_edited)

    def _on_record(self, record: TrainingProgress) -> None:
        trainer = self.trainer
        if record.kind == "validation" and record.corrections is not None:
            self.counts = record.corrections
            self.status.value = f"learning (step {record.step}): {record.corrections.describe()}"
        elif record.kind == "offer":
            self._offer(record)
        elif record.kind == "preview" and self._preview_worker is None:
            if not self._tuner.segmenting:
                self._preview_worker = self._tuner.segment(record.snapshot, field_of_view=True)
                if self._preview_worker is not None:
                    self._preview_worker.finished.connect(self._preview_done)
        if trainer is not None and trainer.problem:
            self.status.value = f"still learning the last usable annotations: {trainer.problem}"

    def _offer(self, record: TrainingProgress) -> None:
        """Show a better model: one live version, replaced by each better one, active."""
        versions = self._tuner.versions
        if self._offer_index is None:
            self._offer_index = versions.add(record.snapshot)
        else:
            versions.replace(self._offer_index, record.snapshot)
        self._tuner.on_model_changed()
        self.status.value = f"new version v{self._offer_index}: {record.corrections.describe()}"

    def _preview_done(self) -> None:
        self._preview_worker = None

    def _done(self) -> None:
        self.worker = None
        self.trainer = None
        self._watch([])
        if self.toggle.value:
            self.toggle.value = False
        kept = "" if self._offer_index is None else f"; v{self._offer_index} is the best so far"
        self.status.value = "stopped" + kept
