"""Segment panel: run the active model on an image layer in a worker thread."""

from __future__ import annotations

import weakref
from collections.abc import Callable, Generator
from dataclasses import replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
from magicgui.widgets import (
    CheckBox,
    Container,
    FileEdit,
    FloatSpinBox,
    Label,
    PushButton,
    create_widget,
)
from napari.qt.threading import create_worker
from napari.utils.notifications import show_error, show_info

from napari_unet_tuner._widgets.delayed_progress import DelayedProgress
from napari_unet_tuner._widgets.layers import (
    anisotropy_of,
    judged_area,
    layer_array,
    looks_like_z_stack,
    previous_segmentation,
    show_segmentation,
    visible_region,
)
from napari_unet_tuner._widgets.worker_errors import report_errors_plainly
from napari_unet_tuner._widgets.zarr_output import check_zarr_path, start_zarr_run
from napari_unet_tuner.config import InferenceConfig
from napari_unet_tuner.errors import InputError
from napari_unet_tuner.inference.changes import changed_objects
from napari_unet_tuner.inference.chunked_plan import check_chunked_inference
from napari_unet_tuner.inference.object_size import painted_diameter
from napari_unet_tuner.inference.pipeline import SegmentationResult, iter_segment
from napari_unet_tuner.training.targets import annotation_to_instances

if TYPE_CHECKING:
    import napari

    from napari_unet_tuner._widgets.tuner import UNetTunerWidget
    from napari_unet_tuner.model.checkpoint import Checkpoint


def compared(segment: Callable, previous: Any, judged: Any, found: dict) -> Callable:
    """Wrap an `iter_segment`: afterwards, put its changes against ``previous`` in ``found``.

    Objects mostly in ``judged`` (what the user already reviewed or corrected
    on the image) are not changes to review again.
    """

    def run(*args: Any, **kwargs: Any) -> Generator:
        result = yield from segment(*args, **kwargs)
        if previous is not None and previous.shape == result.labels.shape:
            area = judged if judged is not None and judged.shape == previous.shape else None
            found["changes"] = changed_objects(previous, result.labels, area)
        return result

    return run


class SegmentPanel(Container):
    """Pick an image layer and segment it (or only what is in view)."""

    def __init__(self, tuner: UNetTunerWidget) -> None:
        super().__init__()
        self._tuner = tuner
        self.worker = None
        self.image = create_widget(
            annotation="napari.layers.Image",
            label="image",
            options={"tooltip": "The image to segment."},
        )
        self.field_of_view = CheckBox(
            text="only the field of view",
            tooltip="Segment the visible part of the current plane: fast feedback on big images.",
        )
        self.diameter = FloatSpinBox(
            value=0.0,
            min=0.0,
            max=1000.0,
            step=1.0,
            label="object size",
            tooltip=(
                "Typical object (nucleus) diameter in pixels. auto: measured on each image; "
                "images of objects much larger or smaller than the model's are resized for "
                "it (the labels always match the image)."
            ),
        )
        self.diameter.native.setSpecialValueText("auto")
        self.diameter.native.setSuffix(" px")
        self.measure_button = PushButton(
            text="from labels",
            tooltip="Set the object size to the median diameter of the objects in the "
            "selected Labels layer: nuclei you painted or corrected.",
        )
        self.measure_button.changed.connect(self.measure_painted)
        size_row = Container(
            widgets=[self.diameter, self.measure_button],
            layout="horizontal",
            labels=False,
            label="object size",
        )
        size_row.margins = (0, 0, 0, 0)
        self.size_note = Label(value="", tooltip="The object size this image was run at.")
        # Measured object sizes per image: the loop re-segments without measuring again.
        self._measured: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()
        self.objects_3d = CheckBox(
            text="3D objects in a Z-stack",
            tooltip=(
                "A 2D model on a Z-stack: run it on the XY, XZ and YZ planes and grow 3D "
                "objects, so that a nucleus across planes is one label. The Z step comes from "
                "the layer's scale, or is measured on the nuclei. Off: each plane on its own "
                "(time series, or slices far apart)."
            ),
        )
        self.probabilities = CheckBox(
            text="add probability map", tooltip="Also show the model's class probabilities."
        )
        self.to_zarr = CheckBox(
            text="write labels to a zarr folder",
            tooltip=(
                "For images larger than memory: segment chunk by chunk and write the labels "
                "to disk, shown as they are written. Choosing the folder of an interrupted "
                "run resumes it."
            ),
        )
        self.zarr_path = FileEdit(mode="w", filter="*.zarr", label="zarr folder", visible=False)
        self.to_zarr.changed.connect(lambda on: setattr(self.zarr_path, "visible", on))
        # A Z-stack, as its reader labelled it, gets 3D objects by default: the
        # image chosen now too (a stack opened before the plugin was not ticked).
        self.image.changed.connect(
            lambda layer: setattr(self.objects_3d, "value", looks_like_z_stack(layer))
        )
        self.objects_3d.value = looks_like_z_stack(self.image.value)
        self.run_button = PushButton(text="Segment", tooltip="Run the active model on the image.")
        self.cancel_button = PushButton(
            text="Cancel", enabled=False, tooltip="Stop after the current tile."
        )
        self.run_button.changed.connect(self.run)
        self.cancel_button.changed.connect(self.cancel)
        buttons = Container(
            widgets=[self.run_button, self.cancel_button], layout="horizontal", labels=False
        )
        self.extend(
            [
                self.image,
                self.field_of_view,
                size_row,
                self.size_note,
                self.objects_3d,
                self.probabilities,
                self.to_zarr,
                self.zarr_path,
                buttons,
            ]
        )

    def run(self, checkpoint: Checkpoint | None = None, field_of_view: bool | None = None):
        """Start segmenting in a worker; return the worker (None if nothing to do).

        ``field_of_view`` given (the fine-tuning's live preview) overrides the
        checkbox, and the run shows no progress bar or RGB notice.
        """
        layer = self.image.value
        checkpoint = checkpoint or self._tuner.versions.active
        if layer is None:
            show_error("No image layer: open an image first (File > Open, or File > Open Sample).")
            return None
        if checkpoint is None:
            show_error("No model loaded: open a checkpoint in the model panel.")
            return None
        if self.worker is not None:
            show_error("A segmentation is already running; cancel it first.")
            return None
        fov = self.field_of_view.value if field_of_view is None else field_of_view
        data, axes = layer_array(layer)
        if layer.rgb and checkpoint.model_config.in_channels == 1 and field_of_view is None:
            show_info(
                f"{layer.name} is RGB and the model reads one channel: it segments the mean "
                "of red, green and blue. Split the channels (right-click the layer) to "
                "segment one of them."
            )
        # 3D objects in the field of view: its XY region through every plane (not
        # for the fine-tuning's live preview, which must stay a plane's work).
        stack = self.segments_in_3d(layer, data) and (not fov or field_of_view is None)
        region = visible_region(self._tuner.viewer, layer, whole_z=stack) if fov else None
        source = data[region] if region is not None else data
        if region is not None:
            axes = "ZYX" if stack else "YXC" if layer.rgb else "YX"
        inference = InferenceConfig(
            device=self._tuner.device,
            diameter=self.diameter_for(layer),
            stack="3d" if stack else "planes",
            anisotropy=anisotropy_of(layer) if stack else 1.0,
        )
        if self.to_zarr.value and region is None:
            if self.diameter.value == 0:
                # Chunks run at scale 1: a size measured on this image does not apply.
                inference = replace(inference, diameter="auto")
            # Review works on labels in memory: a zarr run skips the table and its cost.
            inference = replace(inference, object_table=False)
            try:
                check_chunked_inference(inference)
            except InputError as exc:
                show_error(str(exc))
                return None
            output = Path(self.zarr_path.value)
            problem = check_zarr_path(output)
            if problem:
                show_error(problem)
                return None
            worker = start_zarr_run(
                self._tuner.viewer,
                layer,
                data,
                axes,
                checkpoint,
                output,
                inference,
                self._tuner.warm_up,
            )
            return self._start(worker, None)  # the run shows its own progress bar
        # What this run changes against the last one is found in the worker too
        # (a second on a large image): the review shows it first.
        previous = previous_segmentation(self._tuner.viewer, layer) if region is None else None
        judged = None if previous is None else judged_area(self._tuner.viewer, layer.name)
        found: dict = {}
        worker = create_worker(
            compared(self._tuner.warm_up.after(iter_segment), previous, judged, found),
            source,
            checkpoint,
            axes=axes,
            inference=inference,
            return_probabilities=self.probabilities.value and region is None,
            _start_thread=False,
            _ignore_errors=True,
        )
        report_errors_plainly(worker)
        bar = None
        if field_of_view is None:
            # Not for the fine-tuning's live previews: training shows its own.
            bar = DelayedProgress(f"Segmenting {layer.name}", self.native)

            def on_yielded(p) -> None:
                if p.view is not None:  # 3D objects: which orientation's planes
                    bar.set_description(f"Segmenting {layer.name}: {p.view.upper()} planes")
                bar.update_to(p.tiles_done, p.tiles_total)

            worker.yielded.connect(on_yielded)
        worker.returned.connect(
            lambda result: show_segmentation(
                self._tuner.viewer, layer, result, region, inference.stack, found.get("changes")
            )
        )
        worker.returned.connect(lambda result: self._note_size(layer, result, region is None))
        if field_of_view is None:  # not a fine-tuning preview
            worker.returned.connect(lambda _: self._tuner.on_segmented())
        return self._start(worker, bar)

    def segments_in_3d(self, layer: napari.layers.Image, data) -> bool:
        """Whether ``layer`` (full data ``data``) is segmented, so learned, as 3D objects."""
        return self.objects_3d.value and not layer.rgb and data.ndim >= 3

    def diameter_for(self, layer: napari.layers.Image) -> float | str:
        """Return the object size to run ``layer`` at: as typed, measured before, or auto."""
        if self.diameter.value > 0:
            return float(self.diameter.value)
        return self._measured.get(layer, "auto")

    def measure_painted(self) -> float | None:
        """Set the object size from the selected Labels layer's objects; return it."""
        from napari.layers import Labels

        layer = self._tuner.viewer.layers.selection.active
        if not isinstance(layer, Labels):
            show_error("Select a Labels layer with nuclei painted or corrected on it first.")
            return None
        mode = layer.metadata.get("mode") or "corrections"
        diameter = painted_diameter(annotation_to_instances(np.asarray(layer.data), mode))
        if diameter is None:
            show_error(f"{layer.name} has no objects to measure: paint a few nuclei first.")
            return None
        self.diameter.value = round(diameter)
        self.size_note.value = f"objects ~{diameter:.0f} px, measured on {layer.name}"
        return diameter

    def _note_size(
        self, layer: napari.layers.Image, result: SegmentationResult, whole: bool
    ) -> None:
        size = result.object_size
        z_step = result.z_step
        if result.runtime is not None:
            # Which runtime ran (auto: measured on this machine), for the curious.
            self.size_note.tooltip = (
                f"The object size this image was run at; the {result.runtime.describe()}."
            )
        # A Z step measured on the nuclei (not given, not in the layer's scale);
        # "~" as for the size: measured. Short, to fit a 1280-pixel screen.
        z_note = (
            []
            if z_step is None
            else [f"Z step ~{z_step.anisotropy:.1f}x"]
            if z_step.anisotropy
            else ["Z step unknown: 1x"]
        )
        if size is None or size.diameter is None:
            # Too few objects, or pieces of objects far larger than the model's.
            unmeasured = [] if size is None else ["size not measured: set it if objects look cut"]
            self.size_note.value = " · ".join(unmeasured + z_note)
            return
        if self.diameter.value == 0 and size.objects and whole:
            # Measured on the whole image (not a field of view): kept for the loop.
            self._measured[layer] = size.diameter
        # Short: the note must fit the panel's width on a 1280 x 720 screen.
        how = "run as is" if result.scale == 1.0 else f"resized x{result.scale:.2f}"
        self.size_note.value = " · ".join([f"objects ~{size.diameter:.0f} px: {how}", *z_note])

    def _start(self, worker, bar):
        worker.aborted.connect(lambda: show_info("Segmentation cancelled."))
        worker.finished.connect(lambda: self._done(bar))
        self.worker = worker
        self.run_button.enabled, self.cancel_button.enabled = False, True
        worker.start()
        return worker

    def cancel(self) -> None:
        """Stop the running segmentation at the next tile."""
        if self.worker is not None:
            self.worker.quit()

    def _done(self, bar) -> None:
        if bar is not None:
            bar.close()
        self.worker = None
        self.run_button.enabled, self.cancel_button.enabled = True, False
