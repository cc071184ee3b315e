"""Automatic object size: how large an image's objects are, and the scale that suits the model.

A model segments objects of about the size it was trained on. Far larger
objects it cuts into pieces of about its own size; far smaller ones it
misses or merges. The estimate runs the model on a central crop of the
image at a pyramid of scales, a factor 2 apart, and measures the median
diameter of the objects found at each, in the image's pixels. Real objects
measure the same at two neighbouring scales; pieces cut by the model
change size with the scale (they stay about the model's size in its
view), and so do clumps. The estimate is the diameter at the first pair
of neighbouring scales that agree (`PAIRS`, cheapest first). Images whose
objects are `SMALLEST` to `LARGEST` times the model's size
(`ModelCard.object_diameter`) run as they are; others are resized towards
it (`scale_for`).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Literal

import numpy as np
from skimage.segmentation import clear_border
from skimage.transform import resize

from napari_unet_tuner.errors import InputError
from napari_unet_tuner.inference.instances import probabilities_to_labels
from napari_unet_tuner.inference.tiling import Predictor, fit_tile_shape, predict_tiled

if TYPE_CHECKING:
    from napari_unet_tuner.config import InferenceConfig, InstanceConfig
    from napari_unet_tuner.inference.image import ImageReader
    from napari_unet_tuner.model.checkpoint import Checkpoint

# Objects from SMALLEST to LARGEST times the model's object diameter run as
# they are: about as good as at that diameter, and resizing costs time (4x the
# pixels at scale 2) and sometimes quality. The bundled default (trained at
# 12-52 px, object diameter 25) runs 12.5-40 px objects as they are; 47-px
# nuclei lost 0.25 AP@0.5 unresized (bench_quality magnification).
SMALLEST, LARGEST = 0.5, 1.6
# Smaller objects are enlarged to this share of the model's diameter (18 px for
# the default): enlarged to 25 px, 6-px nuclei scored 0.69 against 0.82, and
# at twice the cost. Larger objects are shrunk to the model's diameter.
ENLARGED = 0.7
# Neighbouring scales the estimate compares, cheapest first (objects of the
# model's size, larger ones, smaller ones, tiny ones, huge ones); the first
# pair that agrees gives the size. A pass at scale s reads a crop of
# CROP_SIDE / s. The last pair measures objects 4-8x the model's size (CHO
# nuclei zoomed 3x, 195 px across: AP@0.5 0.002 without it, 0.826 with it).
PAIRS = ((1.0, 0.5), (0.5, 0.25), (2.0, 1.0), (4.0, 2.0), (0.25, 0.125))
# Side, in the model's pixels, of the crop every estimate pass reads: each
# pass costs at most a 512 x 512 prediction, whatever the image's size.
CROP_SIDE = 512
# Fewer objects than this found at a scale say nothing about their size.
MIN_OBJECTS = 5
# Two neighbouring scales agree when their diameters differ by less than this
# factor (pieces and clumps differ by about 2, the pyramid's step).
AGREEMENT = 1.3
# Scale factors the pipeline accepts (`InferenceConfig.scale`).
SCALE_LIMITS = (0.1, 10.0)
# XY planes of a Z-stack the size is measured on (the brightest at their
# centre, of `_STACK_SAMPLES` evenly spaced ones).
STACK_PLANES = 3
_STACK_SAMPLES = 16
# Tiles of the estimate's predictions (a crop is at most 512 x 512: one tile).
_TILE_SHAPE = (CROP_SIDE, CROP_SIDE)


@dataclass(frozen=True)
class SizeEstimate:
    """The objects' size in one image, and the scale the model should run it at.

    Attributes
    ----------
    diameter : float or None
        Median object diameter, in the image's pixels (``None``: too few
        objects found at any scale to tell).
    objects : int
        Objects the estimate was measured on.
    scale : float
        Resize factor for the model (`scale_for`; 1.0 when the size is unknown).
    """

    diameter: float | None
    objects: int
    scale: float


def median_diameter(labels: np.ndarray, min_size: int = 1) -> tuple[float | None, int]:
    """Median equivalent diameter of the objects not cut by the border, and their count.

    ``None`` when fewer than `MIN_OBJECTS` objects of at least ``min_size``
    pixels are whole.
    """
    areas = _areas(clear_border(np.asarray(labels)))
    areas = areas[areas >= max(min_size, 1)]
    if len(areas) < MIN_OBJECTS:
        return None, len(areas)
    return _median_diameter(areas), len(areas)


def painted_diameter(labels: np.ndarray) -> float | None:
    """Median diameter of painted objects, plane by plane (leading axes are planes).

    Objects cut by the border count only when fewer than `MIN_OBJECTS` are
    whole: a user may paint only a few. ``None`` when nothing is painted.
    """
    labels = np.asarray(labels)
    planes = [plane for plane in labels.reshape(-1, *labels.shape[-2:]) if plane.any()]
    whole = np.concatenate([_areas(clear_border(plane)) for plane in planes] or [[]])
    every = np.concatenate([_areas(plane) for plane in planes] or [[]])
    chosen = whole if len(whole) >= MIN_OBJECTS else every
    return _median_diameter(chosen) if len(chosen) else None


def _areas(labels: np.ndarray) -> np.ndarray:
    """Pixel counts of the objects present in ``labels``."""
    counts = np.bincount(labels.ravel())[1:]
    return counts[counts > 0]


def _median_diameter(areas: np.ndarray) -> float:
    """Median equivalent diameter (of a disc of the same area) of objects of ``areas``."""
    return float(np.median(2.0 * np.sqrt(np.asarray(areas, np.float64) / np.pi)))


def scale_for(diameter: float | None, model_diameter: float, largest: float = LARGEST) -> float:
    """Resize factor for objects of ``diameter`` pixels and a model of ``model_diameter``.

    1.0 from `SMALLEST` to ``largest`` (`LARGEST`) times the model's diameter
    (or when the diameter is unknown); smaller objects are brought to
    `ENLARGED` times it, larger ones to it. Clipped to `SCALE_LIMITS`.
    """
    if diameter is None or diameter <= 0:
        return 1.0
    ratio = diameter / model_diameter
    if SMALLEST <= ratio <= largest:
        return 1.0
    target = ENLARGED * model_diameter if ratio < SMALLEST else model_diameter
    return float(np.clip(target / diameter, *SCALE_LIMITS))


def annotation_scale(
    diameter: float | Literal["auto"] | None, checkpoint: Checkpoint | None
) -> float | Literal["auto"]:
    """Return the `AnnotatedImage.scale` for an object ``diameter``, as segmentation resizes.

    ``"auto"`` stays automatic (the trainer measures); no diameter, or a
    model without an object size, means no resizing.
    """
    if diameter == "auto":
        return "auto"
    if diameter is None or checkpoint is None or checkpoint.card.object_diameter is None:
        return 1.0
    return scale_for(float(diameter), checkpoint.card.object_diameter)


def estimate_object_size(
    plane: np.ndarray,
    predict_labels: Callable[[np.ndarray], np.ndarray],
    model_diameter: float,
    min_size: int = 1,
) -> SizeEstimate:
    """Estimate the object size of a normalized ``(C, Y, X)`` plane.

    Parameters
    ----------
    plane : numpy.ndarray
        One normalized plane, channels first.
    predict_labels : callable
        Normalized ``(C, Y, X)`` image -> instance labels of its shape, with
        the model and its instance settings.
    model_diameter : float
        The model's object diameter (`ModelCard.object_diameter`).
    min_size : int
        Objects smaller than this (in the model's pixels) are not measured.
    """
    spatial = plane.shape[1:]
    measured: dict[float, tuple[float, int] | None] = {}

    def measure(scale: float) -> tuple[float, int] | None:
        """(diameter in image pixels, objects) seen at ``scale``, or None."""
        if scale not in measured:
            piece = plane[(slice(None), *centre_crop(spatial, int(CROP_SIDE / scale)))]
            shape = tuple(max(1, round(n * scale)) for n in piece.shape[1:])
            measured[scale] = None
            if min(shape) >= 32:  # a smaller view cannot hold whole objects
                if scale != 1.0:
                    piece = resize(
                        piece, (piece.shape[0], *shape), order=1, anti_aliasing=scale < 1
                    ).astype(np.float32)
                seen, count = median_diameter(predict_labels(piece), min_size)
                if seen is not None:
                    measured[scale] = (seen / scale, count)
        return measured[scale]

    for pair in PAIRS:
        first, second = measure(pair[0]), measure(pair[1])
        if first is None or second is None:
            continue
        if abs(math.log(first[0] / second[0])) < math.log(AGREEMENT):
            diameter = math.sqrt(first[0] * second[0])
            count = min(first[1], second[1])
            return SizeEstimate(diameter, count, scale_for(diameter, model_diameter))
    return SizeEstimate(None, 0, 1.0)


def choose_object_size(
    reader: ImageReader,
    predictor: Predictor,
    checkpoint: Checkpoint,
    inference: InferenceConfig,
    instances: InstanceConfig,
) -> SizeEstimate | None:
    """Return the object size that sets the scale of a run (``None``: run at ``inference.scale``).

    A given diameter is taken as it is; ``"auto"`` estimates it on a central
    crop of the middle plane (`estimate_object_size`), for 2D models at
    scale 1 whose card gives their object size; for 3D objects in a
    Z-stack, on the `STACK_PLANES` planes fullest of nuclei, keeping the
    largest size found.
    """
    model_diameter = checkpoint.card.object_diameter
    config = checkpoint.model_config
    if inference.diameter is None or inference.scale != 1.0 or config.spatial_dims != 2:
        return None
    if model_diameter is None:
        if inference.diameter == "auto":
            return None
        raise InputError(
            f"{checkpoint.card.name!r} does not say what object size it was trained at, so "
            "a diameter cannot set its scale; use auto or set the scale instead "
            "(InferenceConfig.scale, --scale)"
        )
    if inference.diameter != "auto":
        diameter = float(inference.diameter)
        return SizeEstimate(diameter, 0, scale_for(diameter, model_diameter))
    indices = list(reader.batch_indices())
    if inference.stack == "3d" and "Z" in reader.batch_axes:
        # One XY plane may cut between a stack's nuclei or through their
        # caps (a synthetic stack of 8-px nuclei measured 4 px on its middle
        # plane): measure the planes fullest of nuclei, and keep the largest
        # size, as a plane through their middles shows it.
        planes = _fullest_planes(reader, indices)
    else:
        planes = [indices[len(indices) // 2]]
    # The largest crop the estimate reads (its smallest scale), around the centre.
    side = int(CROP_SIDE / min(min(pair) for pair in PAIRS))

    def predict_labels(image: np.ndarray) -> np.ndarray:
        shape = image.shape[1:]
        tiles = fit_tile_shape(shape, _TILE_SHAPE, config.size_multiple)
        probabilities = predict_tiled(
            lambda spatial: image[(slice(None), *spatial)],
            shape,
            predictor,
            config.out_channels,
            tiles,
        )
        return probabilities_to_labels(probabilities, config.output_kind, instances)

    estimates = [
        estimate_object_size(
            reader.read(index, centre_crop(reader.spatial_shape, side)),
            predict_labels,
            model_diameter,
            instances.min_size,
        )
        for index in planes
    ]
    found = [e for e in estimates if e.diameter is not None]
    return max(found, key=lambda e: e.diameter) if found else estimates[0]


def _fullest_planes(reader: ImageReader, indices: list[tuple[int, ...]]) -> list:
    """Return the `STACK_PLANES` planes of the first Z-stack brightest at their centre.

    Normalization is per time point, so the planes' normalized means compare.
    """
    z_axis = reader.batch_axes.index("Z")
    stack = [i for i in indices if all(v == 0 for a, v in enumerate(i) if a != z_axis)]
    step = max(1, len(stack) // _STACK_SAMPLES)
    sampled = stack[::step]
    centre = centre_crop(reader.spatial_shape, CROP_SIDE)
    brightness = [float(reader.read(index, centre).mean()) for index in sampled]
    order = np.argsort(brightness)[::-1][:STACK_PLANES]
    return [sampled[i] for i in sorted(order)]


def centre_crop(shape: tuple[int, ...], side: int) -> tuple[slice, ...]:
    """Slices of the central ``side``-wide square of ``shape`` (all of an axis shorter)."""
    return tuple(
        slice(max((n - side) // 2, 0), max((n - side) // 2, 0) + min(side, n)) for n in shape
    )
