"""Fine-tune panel: train on the painted layer in a worker, with a live curve and preview."""

from __future__ import annotations

import threading
from typing import TYPE_CHECKING

import numpy as np
from magicgui.widgets import (
    CheckBox,
    ComboBox,
    Container,
    Label,
    PushButton,
    SpinBox,
    create_widget,
)
from napari.qt.threading import create_worker
from napari.utils.notifications import show_error, show_info

from napari_unet_tuner._widgets.loss_plot import LossPlot
from napari_unet_tuner._widgets.segment_panel import layer_array
from napari_unet_tuner.config import TrainingConfig
from napari_unet_tuner.training.trainer import FineTuneResult, TrainingProgress, iter_fine_tune

if TYPE_CHECKING:
    from napari_unet_tuner._widgets.tuner import UNetTunerWidget

PREVIEW_SECONDS = 5.0


def _warm_up_imports() -> None:
    """Run, off the GUI thread, the lazy imports that the first run would pay for.

    The first ``torch.optim.Adam`` of a process imports torch._dynamo and sympy
    (1.7 s here), and napari's first Labels layer imports pandas; done when the
    user presses a button, they froze the viewer for 280 ms and 500 ms
    (benchmarks/bench_responsiveness.py). Done while the user is still looking
    at the widget, nobody waits for them.
    """
    import pandas  # noqa: F401
    import torch

    torch.optim.Adam([torch.nn.Parameter(torch.zeros(1))])


class TrainPanel(Container):
    """Fine-tune the active model on an annotation layer of the chosen image."""

    def __init__(self, tuner: UNetTunerWidget) -> None:
        super().__init__()
        self._tuner = tuner
        self.worker = None
        self._stop = threading.Event()
        self._preview_worker = None
        self._result: FineTuneResult | None = None
        self.annotation = create_widget(
            annotation="napari.layers.Labels",
            label="annotation",
            options={"tooltip": "The layer you painted (corrections or scribbles)."},
        )
        self.mode = ComboBox(
            label="mode",
            choices=["corrections", "scribbles"],
            tooltip="corrections: 0 = background, each label an object, everything reviewed.\n"
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
            text="Fine-tune", tooltip="Train the active model on the annotation."
        )
        self.stop_button = PushButton(
            text="Stop", enabled=False, tooltip="Stop now and keep the best model so far."
        )
        self.run_button.changed.connect(self.run)
        self.stop_button.changed.connect(self.stop)
        self.plot = LossPlot()
        self.status = Label(value="", tooltip="Time per step and time left.")
        self.scores = Label(
            value="", tooltip="Validation on held-out annotation, before and after."
        )
        buttons = Container(
            widgets=[self.run_button, self.stop_button], layout="horizontal", labels=False
        )
        self.extend([self.annotation, self.mode, self.seconds, self.preview, buttons])
        self.native.layout().addWidget(self.plot)
        self.extend([self.status, self.scores])
        # A daemon thread rather than a napari worker: it reports nothing, and a
        # worker still running when the viewer closes dies on deleted Qt signals.
        threading.Thread(target=_warm_up_imports, name="unet-tuner warm-up", daemon=True).start()

    def run(self):
        """Start fine-tuning in a worker; return the worker (None if the input is not ready)."""
        image, annotation = self._tuner.image_layer, self.annotation.value
        start = self._tuner.versions.active
        if image is None or annotation is None:
            show_error("Choose an image (segment panel) and an annotation layer to learn from.")
            return None
        if self.worker is not None:
            show_error("Fine-tuning is already running.")
            return None
        data, axes = layer_array(image)
        # A copy: the user may go on painting while the model trains on this state.
        labels = np.array(annotation.data, copy=True)
        config = TrainingConfig(
            mode=self.mode.value,
            max_seconds=float(self.seconds.value),
            device=self._tuner.model_panel.device.value,
        )
        self._stop.clear()
        worker = create_worker(
            iter_fine_tune,
            [(data, labels)],
            start,
            config,
            axes=[axes],
            stop=self._stop,
            preview_every=PREVIEW_SECONDS if self.preview.value else None,
            _start_thread=False,
        )
        worker.yielded.connect(self._on_progress)
        worker.returned.connect(self._on_result)
        # Errors reach napari's notifications through the worker itself.
        worker.finished.connect(self._done)
        self.plot.reset()
        self.status.value, self.scores.value = "preparing...", ""
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
        if self.worker is not None:
            self.worker.quit()

    def _on_progress(self, record: TrainingProgress) -> None:
        if record.kind == "step":
            self.plot.add_step(record.step, record.loss)
            self.status.value = (
                f"step {record.step}: {record.seconds_per_step:.2f} s/step, "
                f"~{record.eta:.0f} s left"
            )
        elif record.kind == "validation":
            self.plot.add_validation(record.step, record.scores["ap50"])
            if record.step == 0:
                self.scores.value = f"before: val AP50 {record.scores['ap50']:.2f}"
        elif (
            record.kind == "preview"
            and self._preview_worker is None
            and self._tuner.segment_panel.worker is None
        ):
            self._preview_worker = self._tuner.segment_panel.run(
                record.snapshot, field_of_view=True
            )
            if self._preview_worker is not None:
                self._preview_worker.finished.connect(self._preview_done)

    def _preview_done(self) -> None:
        self._preview_worker = None

    def _on_result(self, result: FineTuneResult) -> None:
        before, after = result.scores_before["ap50"], result.scores_after["ap50"]
        where = "held-out" if result.held_out else "training (too little to hold out)"
        self.scores.value = f"val AP50 ({where}): {before:.2f} → {after:.2f}"
        self._result = result
        self._tuner.versions.add(result.checkpoint)
        self._tuner.on_model_changed()
        show_info(f"Fine-tuning done ({result.stop_reason}): AP50 {before:.2f} -> {after:.2f}")

    def _done(self) -> None:
        finished, self._result = self._result, None
        self.worker = None
        self.run_button.enabled, self.stop_button.enabled = True, False
        if finished is None:
            self.status.value = "no new model"
            return
        self.status.value = f"done ({finished.stop_reason})"
        # Re-segment with the new active model once any preview has finished.
        if self._preview_worker is not None:
            self._preview_worker.finished.connect(lambda: self._tuner.segment_panel.run())
        else:
            self._tuner.segment_panel.run()
