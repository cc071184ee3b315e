"""Training samples from annotated images, and augmented patches drawn from them."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from typing import Any, Literal

import numpy as np
from scipy import ndimage
from skimage.transform import resize

from napari_unet_tuner.config import NormalizationConfig, TrainingConfig
from napari_unet_tuner.errors import InputError
from napari_unet_tuner.inference.image import ImageReader, infer_axes
from napari_unet_tuner.training.corrections import CorrectionMap, find_corrections
from napari_unet_tuner.training.targets import (
    IGNORE,
    AnnotationMode,
    ScribbleObjects,
    annotation_to_instances,
    annotation_to_targets,
    check_annotation,
    classes_to_distance,
)

# Share of training patches centred on a corrected pixel, when there are any:
# a few corrections among a whole image of unchanged objects are seen every
# other step instead of once in fifty.
CORRECTION_PATCH_SHARE = 0.5
# Corrected regions (connected changed pixels) of at least this many pixels are
# drawn equally often, whatever their size: a small nucleus the user painted
# counts as much as a large merged pair. Smaller specks (a stray brush pixel)
# are drawn in proportion to their size.
_WHOLE_REGION_PIXELS = 64


@dataclass(frozen=True)
class AnnotatedImage:
    """An image with what the user painted on it, to fine-tune on.

    Parameters
    ----------
    image : array-like
        The image (numpy, dask, zarr), axes as for segmentation.
    labels : numpy.ndarray
        Integer labels of the image's shape without channels. Never modified.
    mode : {"corrections", "scribbles"} or None
        How to read ``labels``; ``None``: `TrainingConfig.mode`.
    prediction : numpy.ndarray, optional
        Corrections only: the predicted labels the user edited into
        ``labels``. Where they differ is where the model was wrong, and
        fine-tuning stresses it. Without it, the starting model's
        prediction is computed again.
    axes : str, optional
        Axes of ``image`` (e.g. ``"ZYX"``); inferred when omitted.
    scale : float or "auto"
        Resize factor of the image's planes for the model, as segmentation
        used it (`SegmentationResult.scale`): the model learns the objects
        at the size it sees them. ``"auto"``: the starting model's
        automatic object size (`napari_unet_tuner.inference.object_size`),
        what segmenting the image with it uses.
    """

    image: Any
    labels: Any
    mode: AnnotationMode | None = None
    prediction: Any = None
    axes: str | None = None
    scale: float | Literal["auto"] = "auto"


def as_annotated_images(
    pairs: Sequence[AnnotatedImage | tuple[Any, Any]],
    mode: AnnotationMode,
    axes: Sequence[str | None] | None = None,
) -> list[AnnotatedImage]:
    """Normalize (image, labels) tuples and `AnnotatedImage` to the latter, modes filled in."""
    axes = list(axes) if axes is not None else [None] * len(pairs)
    out = []
    for pair, ax in zip(pairs, axes, strict=True):
        item = pair if isinstance(pair, AnnotatedImage) else AnnotatedImage(*pair)
        out.append(replace(item, mode=item.mode or mode, axes=item.axes or ax))
    return out


@dataclass
class Sample:
    """One plane (2D model) or volume (3D model) with its targets.

    Attributes
    ----------
    image : numpy.ndarray
        Normalized ``(C, *spatial)`` float32.
    targets : numpy.ndarray
        Classes for training; `IGNORE` where unknown or held out.
    val_targets : numpy.ndarray
        Classes of the held-out region only (`IGNORE` elsewhere).
    instances : numpy.ndarray
        Object instances of the annotation, for instance scores.
    source : int
        Index of the annotated image the sample comes from (its planes and
        time points share one held-out split).
    corrections : CorrectionMap or None
        What the user corrected; ``None`` until the starting model's
        prediction is known.
    """

    image: np.ndarray
    targets: np.ndarray
    val_targets: np.ndarray
    instances: np.ndarray
    source: int = 0
    corrections: CorrectionMap | None = field(default=None, repr=False)


@dataclass(frozen=True)
class AnnotationSummary:
    """How much the user annotated (shown in the widget, stored in the card)."""

    objects: int
    object_pixels: int
    annotated_pixels: int
    planes: int

    def to_dict(self) -> dict[str, int]:
        """Return the counts as a dict."""
        return dict(vars(self))


def build_samples(
    annotated: Sequence[AnnotatedImage],
    spatial_dims: int,
    in_channels: int,
    normalization: NormalizationConfig,
    scribble_objects: ScribbleObjects = "whole",
) -> tuple[list[Sample], AnnotationSummary]:
    """Check every annotated image, then normalize images and make targets.

    Every check runs before any plane is prepared, so bad input fails fast
    with a message that says what to fix. Annotations are never modified.
    Scribbles, and corrections given with their prediction, get their
    `CorrectionMap` here.

    Raises
    ------
    InputError
        If an image or annotation cannot be used.
    """
    if not annotated:
        raise InputError("no (image, annotation) pairs given")
    readers = []
    for i, item in enumerate(annotated):
        shape = tuple(int(s) for s in item.image.shape)
        reader = ImageReader(
            item.image,
            item.axes or infer_axes(shape, spatial_dims, in_channels),
            spatial_dims,
            in_channels,
            normalization,
        )
        label_shape = tuple(reader.shape[a] for a in reader.label_axes)
        labels = np.asarray(item.labels)
        prediction = None if item.prediction is None else np.asarray(item.prediction)
        try:
            check_annotation(labels, label_shape, item.mode)
            if prediction is not None and prediction.shape != labels.shape:
                raise InputError(
                    f"the prediction has shape {prediction.shape} but the annotation "
                    f"{labels.shape}; give the labels the annotation was edited from"
                )
        except InputError as exc:
            where = f"pair {i + 1}: " if len(annotated) > 1 else ""
            raise InputError(f"{where}{exc}") from None
        scale = 1.0 if item.scale == "auto" else float(item.scale)
        if not 0.1 <= scale <= 10:
            raise InputError(f"pair {i + 1}: scale must be in [0.1, 10], got {scale}")
        readers.append((reader, labels, prediction, item.mode, scale))
    samples = []
    objects = object_pixels = annotated_pixels = 0
    for source, (reader, labels, prediction, mode, scale) in enumerate(readers):
        full = tuple(slice(0, s) for s in reader.spatial_shape)
        resized = tuple(max(1, round(n * scale)) for n in reader.spatial_shape)
        for batch_index in reader.batch_indices():
            index = reader.label_index(batch_index)
            plane_labels = _resized(_to_spatial_order(labels[index], reader), resized)
            targets = annotation_to_targets(plane_labels, mode, scribble_objects=scribble_objects)
            if not (targets != IGNORE).any():
                continue
            instances = annotation_to_instances(plane_labels, mode)
            objects += len(np.unique(instances)) - 1
            object_pixels += int(np.count_nonzero(instances))
            annotated_pixels += int(np.count_nonzero(targets != IGNORE))
            corrections = None
            if mode == "scribbles":
                corrections = find_corrections(plane_labels, mode)
            elif prediction is not None:
                plane_prediction = _resized(_to_spatial_order(prediction[index], reader), resized)
                corrections = find_corrections(plane_labels, mode, plane_prediction)
            samples.append(
                Sample(
                    image=_resized(reader.read(batch_index, full), resized),
                    targets=targets,
                    val_targets=np.full_like(targets, IGNORE),
                    instances=instances,
                    source=source,
                    corrections=corrections,
                )
            )
    summary = AnnotationSummary(objects, object_pixels, annotated_pixels, len(samples))
    return samples, summary


def _resized(plane: np.ndarray, spatial_shape: tuple[int, ...]) -> np.ndarray:
    """Resize a plane to ``spatial_shape``: images (float, C first) linearly, labels nearest.

    The same resizing as segmentation's (`napari_unet_tuner.inference.pipeline.Rescaled`).
    """
    if plane.shape[-len(spatial_shape) :] == spatial_shape:
        return plane
    if np.issubdtype(plane.dtype, np.floating):
        shrink = spatial_shape[0] < plane.shape[1]
        return resize(
            plane, (plane.shape[0], *spatial_shape), order=1, anti_aliasing=shrink
        ).astype(np.float32)
    return resize(plane, spatial_shape, order=0, anti_aliasing=False, preserve_range=True).astype(
        plane.dtype
    )


def _to_spatial_order(plane: np.ndarray, reader: ImageReader) -> np.ndarray:
    order = [a for a in reader.label_axes if a in reader.spatial_axes]
    return plane.transpose([order.index(a) for a in reader.spatial_axes])


class PatchSampler:
    """Draws augmented training patches centred on annotated pixels.

    `CORRECTION_PATCH_SHARE` of the patches are centred on a corrected
    pixel (`CorrectionMap.emphasis`) when a sample has any, each corrected
    region (connected changed pixels) drawn equally often; of the rest,
    half are centred on an object pixel and half on any annotated pixel, so
    a few objects among much background still get seen. Each target patch
    is ``(K, *patch)``: the classes, their `classes_to_distance` with
    ``with_distance`` (computed on whole samples, so that objects cut by a
    patch's edge keep their true centres), and last the emphasis (1 on
    corrected pixels, 0 elsewhere, `IGNORE` in padding).
    """

    def __init__(
        self,
        samples: list[Sample],
        patch_shape: tuple[int, ...],
        augment: TrainingConfig | None,
        rng: np.random.Generator,
        with_distance: bool = False,
    ) -> None:
        self.samples = [s for s in samples if (s.targets != IGNORE).any()]
        if not self.samples:
            raise InputError("nothing is left to train on after holding out validation regions")
        self.patch_shape = patch_shape
        self.augment = augment
        self.rng = rng
        self._targets = []
        # One entry per corrected region of every sample: (sample index, pixels).
        self._regions: list[tuple[int, np.ndarray]] = []
        for s in self.samples:
            emphasis = np.zeros(s.targets.shape, bool)
            if s.corrections is not None:
                emphasis = s.corrections.emphasis & (s.targets != IGNORE)
            channels = [s.targets]
            if with_distance:
                channels.append(classes_to_distance(s.targets))
            channels.append(emphasis.astype(np.uint8))
            self._targets.append(np.stack(channels))
            self._regions += [(len(self._targets) - 1, pixels) for pixels in _regions(emphasis)]
        self._known = [np.flatnonzero(s.targets != IGNORE) for s in self.samples]
        self._objects = [
            np.flatnonzero((s.targets != IGNORE) & (s.targets > 0)) for s in self.samples
        ]
        weights = np.array([len(k) for k in self._known], float)
        self._sample_p = weights / weights.sum()
        region_weights = np.array(
            [min(len(pixels), _WHOLE_REGION_PIXELS) for _, pixels in self._regions], float
        )
        self._corrected_p = region_weights / region_weights.sum() if self._regions else None

    def batch(self, size: int) -> tuple[np.ndarray, np.ndarray]:
        """Return ``(images (N, C, *patch), targets (N, K, *patch))`` (see the class)."""
        images, targets = zip(*(self._patch() for _ in range(size)), strict=True)
        return np.stack(images), np.stack(targets)

    def _patch(self) -> tuple[np.ndarray, np.ndarray]:
        rng = self.rng
        if self._corrected_p is not None and rng.random() < CORRECTION_PATCH_SHARE:
            i, pool = self._regions[rng.choice(len(self._regions), p=self._corrected_p)]
        else:
            i = rng.choice(len(self.samples), p=self._sample_p)
            objects = self._objects[i]
            pool = objects if len(objects) and rng.random() < 0.5 else self._known[i]
        sample = self.samples[i]
        center = np.unravel_index(pool[rng.integers(len(pool))], sample.targets.shape)
        image, target = _crop(sample.image, self._targets[i], center, self.patch_shape, rng)
        if self.augment is not None:
            image, target = _augment(image, target, rng, self.augment)
        return np.ascontiguousarray(image), np.ascontiguousarray(target)


def _regions(mask: np.ndarray) -> list[np.ndarray]:
    """Return the flat indices of each connected region of ``mask``."""
    regions, _ = ndimage.label(mask)
    pixels = ndimage.value_indices(regions, ignore_value=0)
    return [np.ravel_multi_index(where, mask.shape) for where in pixels.values()]


def _crop(image, targets, center, patch_shape, rng):
    """Crop ``(C, *spatial)`` arrays around ``center`` (jittered).

    Images are padded by reflection, targets by IGNORE.
    """
    spatial = targets.shape[1:]
    lo = []
    for c, p, s in zip(center, patch_shape, spatial, strict=True):
        start = int(c) - p // 2 + int(rng.integers(-(p // 4), p // 4 + 1))
        lo.append(min(max(start, min(0, s - p)), max(s - p, 0)))
    src = (
        slice(None),
        *(
            slice(max(a, 0), min(a + p, s))
            for a, p, s in zip(lo, patch_shape, spatial, strict=True)
        ),
    )
    pad = [
        (max(-a, 0), max(a + p - s, 0)) for a, p, s in zip(lo, patch_shape, spatial, strict=True)
    ]
    img = image[src]
    tgt = targets[src]
    if any(any(p) for p in pad):
        mode = (
            "reflect"
            if all(b < n and a < n for (b, a), n in zip(pad, tgt.shape[1:], strict=True))
            else "edge"
        )
        img = np.pad(img, [(0, 0), *pad], mode=mode)
        tgt = np.pad(tgt, [(0, 0), *pad], constant_values=IGNORE)
    return img, tgt


def _augment(image, target, rng, config: TrainingConfig):
    """Flips, 90-degree rotations (in YX), gamma, blur, intensity scale/shift and noise.

    ``image`` and ``target`` are ``(C, *spatial)``.
    """
    dims = target.ndim - 1
    for axis in range(dims):
        if rng.random() < 0.5:
            image, target = np.flip(image, axis + 1), np.flip(target, axis + 1)
    if target.shape[-1] == target.shape[-2]:
        k = int(rng.integers(4))
        image, target = np.rot90(image, k, axes=(-2, -1)), np.rot90(target, k, axes=(-2, -1))
    image = image.astype(np.float32)
    # Draw only what is switched on, so the defaults keep their random stream.
    low, high = config.gamma_range
    gamma = rng.uniform(low, high) if low != high else low
    if gamma != 1.0:
        # Sign-preserving, because normalized images dip slightly below 0.
        image = np.sign(image) * np.abs(image) ** gamma
    blur = rng.uniform(0, config.blur_max) if config.blur_max > 0 else 0.0
    if blur > 0.3:
        image = ndimage.gaussian_filter(image, (0, *(blur,) * dims))
    image = image * rng.uniform(*config.intensity_range) + rng.uniform(-0.1, 0.1)
    sigma = rng.uniform(0, config.noise_max)
    if sigma > 0:
        image = image + rng.normal(0, sigma, image.shape).astype(np.float32)
    return image.astype(np.float32), target
