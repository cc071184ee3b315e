"""Segment a layer into a zarr folder chunk by chunk, showing the labels as they are written."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

from napari.qt.threading import create_worker
from napari.utils import progress
from napari.utils.notifications import show_info

from napari_unet_tuner._widgets.worker_errors import report_errors_plainly
from napari_unet_tuner.config import InferenceConfig
from napari_unet_tuner.inference.chunked import ChunkedResult, ChunkProgress, iter_segment_to_zarr
from napari_unet_tuner.labels_files import open_labels_zarr

if TYPE_CHECKING:
    import napari

    from napari_unet_tuner._widgets.warm_up import ImportWarmUp
    from napari_unet_tuner.model.checkpoint import Checkpoint

LAYER_TAG = "napari_unet_tuner"
STAGES = {
    "predict": "Predicting the planes of",
    "segment": "Segmenting",
    "stitch": "Joining chunks of",
    "relabel": "Numbering",
}


def check_zarr_path(path: Path) -> str | None:
    """Return what is wrong with a chosen output folder, or None if it can be used."""
    if path.suffix.lower() != ".zarr":
        return f"Choose a folder name ending in .zarr for the labels (got '{path.name}')."
    if not path.parent.exists():
        return f"The folder {path.parent} does not exist."
    return None


def start_zarr_run(
    viewer: napari.Viewer,
    image: napari.layers.Image,
    data: Any,
    axes: str | None,
    checkpoint: Checkpoint,
    output: Path,
    inference: InferenceConfig,
    warm_up: ImportWarmUp,
):
    """Start a chunked run in a worker; the Labels layer appears with the first record.

    The layer's data is the zarr array on disk, re-read as chunks finish, so
    nothing of the size of the image is held in memory. Provisional ids of a
    chunk (before the chunks are joined) show as other colours until the
    final numbering is written.
    """
    worker = create_worker(
        warm_up.after(iter_segment_to_zarr),
        data,
        output,
        checkpoint,
        axes=axes,
        inference=inference,
        _start_thread=False,
        _ignore_errors=True,
    )
    report_errors_plainly(worker)
    bar = progress(total=0, desc=f"Segmenting {image.name} to {output.name}")
    shown: dict[str, Any] = {}

    def on_yielded(record: ChunkProgress) -> None:
        bar.set_description(f"{STAGES[record.stage]} {image.name}")
        bar.total = record.total
        bar.n = record.done
        bar.refresh()
        if image not in viewer.layers:
            return  # closed: the run goes on writing the file, but shows no layer
        if "layer" not in shown:
            shown["layer"] = viewer.add_labels(
                open_labels_zarr(output),
                name=f"{image.name} labels ({output.name})",
                scale=image.scale,
                translate=image.translate,
                # Corrections of 3D objects are learned as 3D objects.
                metadata={LAYER_TAG: True, "path": str(output), "stack": inference.stack},
            )
        elif record.region is not None:
            shown["layer"].refresh()

    def on_returned(result: ChunkedResult) -> None:
        layer = shown.get("layer")
        if layer is not None and layer in viewer.layers:
            # Reopened: the array's metadata changed (complete, object count).
            layer.data = open_labels_zarr(output)
        show_info(f"{result.objects} objects written to {result.path} in {result.seconds:.0f} s.")

    worker.yielded.connect(on_yielded)
    worker.returned.connect(on_returned)
    worker.finished.connect(bar.close)
    return worker
