"""Fine-tune panel: train on every painted layer in a worker, with a live curve and preview."""

from __future__ import annotations

import threading
from typing import TYPE_CHECKING

import numpy as np
from magicgui.widgets import CheckBox, ComboBox, Container, Label, PushButton, Select, SpinBox
from napari.qt.threading import create_worker
from napari.utils.notifications import show_error, show_info

from napari_unet_tuner._widgets.layers import LAYER_TAG, anisotropy_of, layer_array
from napari_unet_tuner._widgets.live_panel import LivePanel
from napari_unet_tuner._widgets.loss_plot import LossPlot
from napari_unet_tuner._widgets.worker_errors import report_errors_plainly
from napari_unet_tuner._widgets.wrapping_label import insert_wrapping_label
from napari_unet_tuner.config import TrainingConfig
from napari_unet_tuner.inference.object_size import annotation_scale
from napari_unet_tuner.training.data import AnnotatedImage
from napari_unet_tuner.training.review import reviewed_region
from napari_unet_tuner.training.trainer import FineTuneResult, TrainingProgress, iter_fine_tune

if TYPE_CHECKING:
    from napari_unet_tuner._widgets.tuner import UNetTunerWidget

PREVIEW_SECONDS = 5.0


def is_annotation(layer) -> bool:
    """Whether a layer is something the user painted (not one of the plugin's predictions)."""
    from napari.layers import Labels

    if not isinstance(layer, Labels):
        return False
    return bool(layer.metadata.get("mode")) or not layer.metadata.get(LAYER_TAG)


class TrainPanel(Container):
    """Fine-tune the active model on every annotation layer of the session, each with its image."""

    def __init__(self, tuner: UNetTunerWidget) -> None:
        super().__init__()
        self._tuner = tuner
        self.worker = None
        self._stop = threading.Event()
        self._preview_worker = None
        self._result: FineTuneResult | None = None
        self._offered = None
        self._listed: set[int] = set()
        self.annotation = Select(
            label="learn from",
            choices=self._annotation_choices,
            allow_multiple=True,
            tooltip="Every layer you corrected or scribbled on, each with its image: all are "
            "learned together, so nothing corrected earlier is forgotten. Deselect one to "
            "leave it out.",
        )
        self.annotation.native.setMaximumHeight(80)
        self.mode = ComboBox(
            label="mode",
            choices=["corrections", "scribbles"],
            tooltip="For layers you made yourself (the Annotate buttons set it for theirs).\n"
            "corrections: 0 = background, each label an object, everything reviewed.\n"
            "scribbles: 0 = not annotated, 1 = background, 2, 3, ... = objects.",
        )
        self.seconds = SpinBox(
            label="seconds",
            value=60,
            min=5,
            max=3600,
            step=5,
            tooltip="Training time budget; training may stop earlier when it stops improving.",
        )
        self.preview = CheckBox(
            text="live preview",
            value=True,
            tooltip="Re-segment the field of view with the model being trained "
            f"every {PREVIEW_SECONDS:.0f} s.",
        )
        self.run_button = PushButton(
            text="Fine-tune", tooltip="Train the active model on the selected annotations."
        )
        self.stop_button = PushButton(
            text="Stop", enabled=False, tooltip="Stop now and keep the best model so far."
        )
        self.keep_button = PushButton(
            text="Keep that model anyway",
            visible=False,
            tooltip="Nothing was learned, but a model got more corrections right at the cost of "
            "other objects (the message says which): add it as a new version anyway.",
        )
        self.run_button.changed.connect(self.run)
        self.stop_button.changed.connect(self.stop)
        self.keep_button.changed.connect(self.keep_anyway)
        self.plot = LossPlot()
        self.status = Label(
            value="", tooltip="Steps per second and time left; at the end, what was learned."
        )
        self.scores = Label(
            value="",
            tooltip="How many of your corrections the model reproduces, and how many of the "
            "objects you left unchanged it keeps.",
        )
        buttons = Container(
            widgets=[self.run_button, self.stop_button], layout="horizontal", labels=False
        )
        self.live = LivePanel(tuner, self.annotated_images, lambda: list(self.annotation.value))
        self.extend([self.annotation, self.mode, self.seconds, self.preview, buttons, self.live])
        # Messages are sentences, not one-word states: they wrap, above the curve.
        insert_wrapping_label(self, len(self), self.status)
        insert_wrapping_label(self, len(self) + 1, self.scores)
        # Below the message that says why it is offered (a container's own
        # widgets come before the wrapping labels).
        self.native.layout().addWidget(self.keep_button.native)
        self.native.layout().addWidget(self.plot)

    def _annotation_choices(self, widget=None) -> list[tuple[str, object]]:
        layers = [layer for layer in self._tuner.viewer.layers if is_annotation(layer)]
        return [(f"{layer.name} ({self._mode_of(layer)})", layer) for layer in layers]

    def reset_choices(self, event=None) -> None:
        """List the annotation layers; layers new to the list start selected."""
        chosen = list(self.annotation.value)
        super().reset_choices(event)
        available = [layer for _, layer in self._annotation_choices()]
        new = [layer for layer in available if id(layer) not in self._listed]
        self._listed = {id(layer) for layer in available}
        self.annotation.value = [ly for ly in available if ly in chosen or ly in new]
        if self.live.running:
            self.live.annotations_edited()  # learn (and watch) the layers as now chosen

    def _mode_of(self, layer) -> str:
        return layer.metadata.get("mode") or self.mode.value

    def _stack_of(self, layer, image, data) -> str:
        """Return "3d" for 3D objects: as segmented (the layer says), else the 3D checkbox.

        Only a 2D model learns side views; a 3D model learns the volume as it is.
        """
        model = self._tuner.versions.active
        if model is None or model.model_config.spatial_dims != 2:
            return "planes"
        if "stack" in layer.metadata:
            return layer.metadata["stack"]
        return "3d" if self._tuner.segments_in_3d(image, data) else "planes"

    def annotated_images(self) -> list[AnnotatedImage]:
        """Return the selected layers with their images (snapshots: painting may go on)."""
        viewer, current = self._tuner.viewer, self._tuner.image_layer
        out = []
        for layer in self.annotation.value:
            name = layer.metadata.get("image")
            image = viewer.layers[name] if name in viewer.layers else current
            if image is None:
                continue
            data, axes = layer_array(image)
            prediction = layer.metadata.get("prediction")
            stack = self._stack_of(layer, image, data)
            annotation = np.array(layer.data, copy=True)
            out.append(
                AnnotatedImage(
                    data,
                    annotation,
                    mode=self._mode_of(layer),
                    prediction=None if prediction is None else np.asarray(prediction),
                    axes=axes,
                    scale=1.0
                    if stack == "3d"
                    else layer.metadata.get("scale")
                    or annotation_scale(
                        self._tuner.diameter_for(image), self._tuner.versions.active
                    ),
                    stack=stack,
                    anisotropy=(anisotropy_of(image) or 1.0) if stack == "3d" else 1.0,
                    reviewed=reviewed_region(
                        layer.metadata.get("reviewed"), annotation, prediction
                    ),
                    name=image.name,
                )
            )
        return out

    def run(self):
        """Start fine-tuning in a worker; return the worker (None if the input is not ready)."""
        start = self._tuner.versions.active
        if self.worker is not None or self.live.running:
            show_error(
                "Fine-tuning is already running."
                if self.worker is not None
                else "Learning as you correct is on: turn it off to fine-tune in one go."
            )
            return None
        annotated = self.annotated_images()
        if not annotated:
            show_error(
                "Nothing to learn from: correct a prediction or scribble on an image "
                "(Annotate), and keep its layer selected under 'learn from'."
            )
            return None
        config = TrainingConfig(
            max_seconds=float(self.seconds.value),
            device=self._tuner.device,
        )
        self._stop.clear()
        worker = create_worker(
            self._tuner.warm_up.after(iter_fine_tune),
            annotated,
            start,
            config,
            stop=self._stop,
            preview_every=PREVIEW_SECONDS if self.preview.value else None,
            _start_thread=False,
            _ignore_errors=True,
        )
        report_errors_plainly(worker)
        worker.yielded.connect(self._on_progress)
        worker.returned.connect(self._on_result)
        worker.finished.connect(self._done)
        self.plot.reset()
        self.status.value, self.scores.value = "preparing...", ""
        self._offered = None
        self.keep_button.visible = False
        self.worker = worker
        self.run_button.enabled, self.stop_button.enabled = False, True
        worker.start()
        return worker

    def stop(self) -> None:
        """Ask the run to stop at the next step, keeping the best model so far."""
        self._stop.set()
        self.status.value = "stopping..."

    def abort(self) -> None:
        """Abandon the run without keeping anything (e.g. when the viewer closes)."""
        self.live.abort()
        if self.worker is not None:
            self.worker.quit()

    def _on_progress(self, record: TrainingProgress) -> None:
        if record.kind == "step":
            self.plot.add_step(record.step, record.loss)
            self.status.value = (
                f"step {record.step} · {record.steps_per_second:.1f} steps/s · "
                f"~{record.eta:.0f} s left"
            )
        elif record.kind == "validation":
            # The final record's counts (the model kept) come with the result.
            self.plot.add_validation(record.step, _curve_score(record.scores))
            counts = record.corrections
            if counts is not None:
                prefix = "before: " if record.step == 0 else "now: "
                self.scores.value = prefix + counts.describe()
        elif (
            record.kind == "preview"
            and self._preview_worker is None
            and not self._tuner.segmenting
        ):
            self._preview_worker = self._tuner.segment(record.snapshot, field_of_view=True)
            if self._preview_worker is not None:
                self._preview_worker.finished.connect(self._preview_done)

    def keep_anyway(self) -> None:
        """Add the model the last run offered (see its message) as a new version."""
        offered, self._offered = self._offered, None
        self.keep_button.visible = False
        if offered is None:
            return
        self._tuner.versions.add(offered)
        self._tuner.on_model_changed()
        self.status.value = "kept anyway as a new version (the verdict was: nothing learned)"
        self._tuner.segment_soon()

    def _preview_done(self) -> None:
        self._preview_worker = None

    def _on_result(self, result: FineTuneResult) -> None:
        after = result.corrections_after
        self.scores.value = after.describe() if after is not None else ""
        show_info(result.message[:1].upper() + result.message[1:])
        if not result.learned:
            self.status.value = "no new version: " + result.message
            self._offered = result.candidate
            self.keep_button.visible = result.candidate is not None
            return
        self._result = result
        self._tuner.versions.add(result.checkpoint)
        self._tuner.on_model_changed()

    def _done(self) -> None:
        finished, self._result = self._result, None
        self.worker = None
        self.run_button.enabled, self.stop_button.enabled = True, False
        if finished is None:
            if not self.status.value.startswith("no new version"):
                self.status.value = "no new version"
            return
        self.status.value = finished.message
        # Show the new result, not the painting over it.
        for layer in self.annotation.value:
            layer.visible = False

        # Re-segment with the new active model once any preview has finished,
        # in a later turn of the event loop: hiding the annotations redraws the
        # canvas, and starting a run is GUI work too; in one turn they froze a
        # busy viewer 120-140 ms.
        def segment_again() -> None:
            self._tuner.segment_soon()

        if self._preview_worker is not None:
            self._preview_worker.finished.connect(segment_again)
        else:
            segment_again()


def _curve_score(scores: dict[str, float]) -> float:
    """Return what the curve shows: the annotation score, else held-out AP@0.5."""
    score = scores["annotation_score"]
    return score if np.isfinite(score) else scores["ap50"]
