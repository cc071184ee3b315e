"""Layer helpers of the widget: the image data a layer holds, and the labels layer of a result."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import numpy as np
from napari.utils.notifications import show_info

if TYPE_CHECKING:
    import napari
    import pandas as pd

    from napari_unet_tuner.inference.pipeline import SegmentationResult

LAYER_TAG = "napari_unet_tuner"


def labels_name(image: napari.layers.Image) -> str:
    """Name of the Labels layer that holds an image's prediction."""
    return f"{image.name} labels"


def layer_array(layer: napari.layers.Image) -> tuple[Any, str | None]:
    """Return an image layer's full-resolution data (lazy stays lazy) and its axes if known."""
    data = layer.data[0] if layer.multiscale else layer.data
    return data, ("YXC" if layer.rgb and data.ndim == 3 else None)


def anisotropy_of(layer: napari.layers.Image) -> float | None:
    """Z step over pixel size from the layer's scale (the third axis from the end).

    ``None`` when the layer's scale is napari's default of 1 on every axis
    (a file without pixel sizes): a 3D run then measures it on the nuclei.
    """
    scale = np.asarray(layer.scale, float)
    if len(scale) < 3 or scale[-1] <= 0:
        return 1.0
    if np.all(scale[-3:] == 1.0):
        return None
    return float(np.clip(scale[-3] / scale[-1], 0.1, 20.0))


def looks_like_z_stack(layer: napari.layers.Image | None) -> bool:
    """Whether a layer says it is a Z-stack: its third axis from the end named Z, or in microns.

    A Z axis label, or the same length unit as X on that axis (readers of
    microscopy formats set both from the file's metadata). Plain arrays,
    with napari's default labels and pixel units, are not taken for stacks:
    they may be time series.
    """
    if layer is None or layer.rgb or layer.ndim < 3:
        return False
    label = str(layer.axis_labels[-3]).lower()
    if label in ("z", "depth"):
        return True
    if label in ("t", "time"):
        return False
    units = [str(u) for u in getattr(layer, "units", ())]
    return len(units) >= 3 and units[-3] == units[-1] != "pixel"


def visible_region(
    viewer: napari.Viewer, layer: napari.layers.Image, whole_z: bool = False
) -> tuple:
    """Index of the current plane's visible field of view, in the layer's data coordinates.

    With ``whole_z``, the visible XY region through every plane of the
    current Z-stack (the third axis from the end): a sub-volume for 3D objects.
    """
    data, _ = layer_array(layer)
    ndim = data.ndim - (1 if layer.rgb else 0)
    point = np.round(layer.world_to_data(viewer.dims.point)).astype(int)
    corners = np.asarray(layer.corner_pixels)
    offset = viewer.dims.ndim - ndim
    displayed = {d - offset for d in viewer.dims.displayed}
    index: list[Any] = []
    for axis in range(ndim):
        size = data.shape[axis]
        if axis in displayed:
            lo, hi = int(max(corners[0, axis], 0)), int(min(corners[1, axis] + 1, size))
            index.append(slice(lo, max(hi, lo + 1)))
        elif whole_z and axis == ndim - 3:
            index.append(slice(0, size))
        else:
            index.append(int(np.clip(point[axis], 0, size - 1)))
    return tuple(index)


def previous_segmentation(viewer: napari.Viewer, image: napari.layers.Image) -> Any:
    """Return the image's last whole-image labels shown by `show_segmentation`, if any."""
    name = labels_name(image)
    if name not in viewer.layers or not viewer.layers[name].metadata.get(LAYER_TAG):
        return None
    return viewer.layers[name].metadata.get("segmented")


def judged_area(viewer: napari.Viewer, image_name: str) -> np.ndarray | None:
    """Return where the user already judged the image: reviewed or changed in its corrections."""
    area = None
    for layer in viewer.layers:
        meta = layer.metadata
        if meta.get("image") != image_name or meta.get("mode") != "corrections":
            continue
        reviewed = meta.get("reviewed")
        judged = reviewed if reviewed is not None else layer.data != meta["prediction"]
        area = judged.copy() if area is None else area | judged
    return area


def show_segmentation(
    viewer: napari.Viewer,
    image: napari.layers.Image,
    result: SegmentationResult,
    region: tuple | None,
    stack: str = "planes",
    changes: pd.DataFrame | None = None,
) -> None:
    """Show a segmentation as the image's labels layer (made once, then updated in place).

    ``region``: the result covers only that part of the image (a field of
    view). The layer records the scale the prediction was made at, and
    whether its objects are 3D (``stack``, `InferenceConfig.stack`):
    corrections of it are learned that way. ``changes``: what a whole-image
    result changed against the layer's previous one (`previous_segmentation`,
    `napari_unet_tuner.inference.changes.changed_objects`), for the review.
    """
    if image not in viewer.layers:
        # The image was closed while it was segmented: no orphan labels layer.
        show_info(f"{image.name} was closed; its segmentation was discarded.")
        return
    name = labels_name(image)
    existing = viewer.layers[name] if name in viewer.layers else None
    full_shape = layer_array(image)[0].shape[: image.ndim]
    if (
        existing is not None
        and existing.data.shape == full_shape
        and existing.metadata.get(LAYER_TAG)
    ):
        target, created = existing, False
    else:
        if existing is not None:
            name = f"{name} ({LAYER_TAG})"
        # Made with the result itself: one set-up and one upload on the GUI
        # thread, not an empty layer and then its data.
        target = viewer.add_labels(
            result.labels if region is None else np.zeros(full_shape, np.int32),
            name=name,
            scale=image.scale,
            translate=image.translate,
            metadata={LAYER_TAG: True},
        )
        created = True
    if region is None or created:
        target.metadata["scale"] = result.scale
        target.metadata["stack"] = stack
    # The review queue's source: only a whole-image result's table matches its labels.
    target.metadata["objects"] = result.objects if region is None else None
    target.metadata["possible_misses"] = result.possible_misses if region is None else None
    if region is None:
        # What the next segmentation is compared with, and what this one changed
        # against the one before (reviewed first).
        target.metadata["segmented"] = result.labels
        target.metadata["changes"] = changes
        if not created:
            target.data = result.labels
    else:
        segmented = target.metadata.get("segmented")
        if segmented is not None and np.may_share_memory(segmented, target.data):
            # A field of view is written in place: the whole-image result stays as it was.
            target.metadata["segmented"] = segmented.copy()
        labels = result.labels
        offset = int(np.max(target.data)) if np.any(labels) else 0
        target.data[region] = np.where(labels > 0, labels + offset, 0)
        target.refresh()
    if result.probabilities is not None:
        prob_name = f"{image.name} probabilities"
        if prob_name in viewer.layers:
            viewer.layers[prob_name].data = result.probabilities
        else:
            viewer.add_image(
                result.probabilities,
                name=prob_name,
                channel_axis=0,
                visible=False,
                scale=image.scale,
                translate=image.translate,
            )
