"""The Z step of a stack whose file does not say it, from the shape of its objects.

Nuclei are roughly as tall as they are wide. The model segments the XY
planes of a central column of the stack (`CROP_SIDE` of the model's pixels
across, every plane), the planes' probabilities are labelled in 3D, and each
whole object's spread along Z (in planes) is set against its spread in XY
(in pixels): second moments, which the dim caps that the model misses
change little, unlike the count of planes an object spans. The median over
objects is the Z step over the pixel size (`InferenceConfig.anisotropy`).
Too few whole objects, or objects in fewer than `MIN_PLANES` planes, and
the step cannot be told: the estimate says so and the run assumes 1.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
from skimage.measure import regionprops

from napari_unet_tuner.config import InferenceConfig, InstanceConfig, ModelConfig
from napari_unet_tuner.inference.image import ImageReader, resize_plane
from napari_unet_tuner.inference.instances import probabilities_to_labels
from napari_unet_tuner.inference.object_size import centre_crop
from napari_unet_tuner.inference.stack_views import predict_planes

# Side of the central column, in the model's pixels: a few dozen nuclei of
# the model's size in every plane, and a small share of a large stack's time.
CROP_SIDE = 256
# Fewer whole objects than this say nothing about the step.
MIN_OBJECTS = 5
# Objects in fewer planes than this (median) are too flat to measure.
MIN_PLANES = 3
# Accepted range of the estimate (as `InferenceConfig.anisotropy`).
LIMITS = (0.1, 20.0)


@dataclass(frozen=True)
class ZStepEstimate:
    """The Z step measured on a stack's objects.

    Attributes
    ----------
    anisotropy : float or None
        Z step over the XY pixel size; ``None`` when it cannot be told.
    objects : int
        Whole objects it was measured on.
    reason : str
        Why it cannot be told (empty when it could).
    """

    anisotropy: float | None
    objects: int
    reason: str = ""


def measure_z_step(labels: np.ndarray, scale: float = 1.0) -> ZStepEstimate:
    """Estimate the Z step from 3D ``labels`` of planes resized in XY by ``scale``.

    Objects touching the first or last plane or the XY border are left out
    (they are cut). Each object's step is its XY spread (standard deviation
    of its pixels' positions, in the image's own pixels: divided by
    ``scale``) over its Z spread (in planes), as for a sphere; the median
    over objects is returned.
    """
    depth, height, width = labels.shape
    steps, planes = [], []
    for region in regionprops(labels):
        z0, y0, x0, z1, y1, x1 = region.bbox
        if z0 == 0 or y0 == 0 or x0 == 0 or z1 == depth or y1 == height or x1 == width:
            continue
        coords = region.coords.astype(np.float64)
        spread_z = coords[:, 0].std()
        if spread_z <= 0:
            continue
        spread_xy = np.sqrt((coords[:, 1].var() + coords[:, 2].var()) / 2) / scale
        steps.append(spread_xy / spread_z)
        planes.append(z1 - z0)
    if len(steps) < MIN_OBJECTS:
        return ZStepEstimate(
            None, len(steps), f"{len(steps)} whole objects found; {MIN_OBJECTS} are needed"
        )
    if np.median(planes) < MIN_PLANES:
        return ZStepEstimate(
            None,
            len(steps),
            f"objects lie in {np.median(planes):.0f} planes: too few to tell their height",
        )
    # Two decimals: the same stack measures the same (a resumed run compares settings).
    return ZStepEstimate(round(float(np.clip(np.median(steps), *LIMITS)), 2), len(steps))


def z_step_note(estimate: ZStepEstimate) -> str:
    """Say what Z step a run uses when it was measured, and how to set it."""
    if estimate.anisotropy is None:
        return (
            f"the Z step could not be measured ({estimate.reason}); planes taken to be one "
            "pixel apart: give the Z step over the pixel size if they are not "
            "(--anisotropy, InferenceConfig.anisotropy)"
        )
    return (
        f"Z step measured on {estimate.objects} nuclei, taken to be about as tall as wide: "
        f"{estimate.anisotropy:.2f}x the pixel size (--anisotropy, InferenceConfig.anisotropy "
        "to set it)"
    )


def first_stack(reader: ImageReader) -> Callable[[int], tuple[int, ...]]:
    """Return ``z -> batch index`` of plane ``z`` of ``reader``'s first Z-stack (time point 0)."""
    return lambda z: tuple(z if a == "Z" else 0 for a in reader.batch_axes)


def estimate_z_step(
    reader: ImageReader,
    batch_index: Callable[[int], tuple[int, ...]],
    predictor: Callable[[np.ndarray], np.ndarray],
    model_config: ModelConfig,
    instances: InstanceConfig,
    scale: float = 1.0,
) -> ZStepEstimate:
    """Estimate the Z step of one Z-stack of ``reader`` (`measure_z_step`).

    ``batch_index(z)`` is the reader's batch index of plane ``z``; ``scale``
    the factor the planes are resized by for the model (the object size's).
    The model runs on the XY planes of a central column `CROP_SIDE` of its
    pixels across: a few seconds, whatever the stack's size.
    """
    native = reader.spatial_shape
    side = max(1, round(CROP_SIDE / scale))
    crop = centre_crop(native, side)
    shape = tuple(max(1, round((c.stop - c.start) * scale)) for c in crop)
    depth = reader.shape["Z"]
    volume = np.stack(
        [resize_plane(reader.read(batch_index(z), crop), shape) for z in range(depth)], axis=1
    )
    probabilities = np.zeros((model_config.out_channels, *volume.shape[1:]), np.float32)
    # Each plane goes through the model whole (it pads), several at a time.
    planes = predict_planes(
        volume, 1, probabilities, shape, predictor, InferenceConfig(), model_config.out_channels
    )
    for _ in planes:
        pass
    labels = probabilities_to_labels(probabilities, model_config.output_kind, instances)
    return measure_z_step(labels, scale)
