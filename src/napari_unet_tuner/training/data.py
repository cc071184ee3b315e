"""Training samples from (image, annotation) pairs: split, patch sampling, augmentation."""

from __future__ import annotations

import itertools
import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
from scipy import ndimage

from napari_unet_tuner.config import NormalizationConfig, TrainingConfig
from napari_unet_tuner.errors import InputError
from napari_unet_tuner.inference.image import ImageReader, infer_axes
from napari_unet_tuner.training.targets import (
    IGNORE,
    AnnotationMode,
    ScribbleObjects,
    annotation_to_instances,
    annotation_to_targets,
    check_annotation,
    classes_to_distance,
)

_SPLIT_BLOCKS_PER_AXIS = 4


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
    known : numpy.ndarray of bool
        Pixels whose truth is known (annotated, or reviewed corrections).
    """

    image: np.ndarray
    targets: np.ndarray
    val_targets: np.ndarray
    instances: np.ndarray
    known: np.ndarray


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
    pairs: Sequence[tuple[Any, np.ndarray]],
    mode: AnnotationMode,
    spatial_dims: int,
    in_channels: int,
    normalization: NormalizationConfig,
    axes: Sequence[str | None] | None = None,
    scribble_objects: ScribbleObjects = "whole",
) -> tuple[list[Sample], AnnotationSummary]:
    """Check every pair, then normalize images and make targets.

    Every check runs before any plane is prepared, so bad input fails fast
    with a message that says what to fix. Annotations are never modified.

    Raises
    ------
    InputError
        If an image or annotation cannot be used.
    """
    if not pairs:
        raise InputError("no (image, annotation) pairs given")
    axes = list(axes) if axes is not None else [None] * len(pairs)
    readers = []
    for i, ((image, annotation), ax) in enumerate(zip(pairs, axes, strict=True)):
        shape = tuple(int(s) for s in image.shape)
        reader = ImageReader(
            image,
            ax or infer_axes(shape, spatial_dims, in_channels),
            spatial_dims,
            in_channels,
            normalization,
        )
        label_shape = tuple(reader.shape[a] for a in reader.label_axes)
        annotation = np.asarray(annotation)
        try:
            check_annotation(annotation, label_shape, mode)
        except InputError as exc:
            raise InputError(f"pair {i + 1}: {exc}" if len(pairs) > 1 else str(exc)) from None
        readers.append((reader, annotation))
    samples = []
    objects = object_pixels = annotated = 0
    for reader, annotation in readers:
        full = tuple(slice(0, s) for s in reader.spatial_shape)
        for batch_index in reader.batch_indices():
            plane_labels = annotation[reader.label_index(batch_index)]
            plane_labels = _to_spatial_order(plane_labels, reader)
            targets = annotation_to_targets(plane_labels, mode, scribble_objects=scribble_objects)
            if not (targets != IGNORE).any():
                continue
            instances = annotation_to_instances(plane_labels, mode)
            objects += len(np.unique(instances)) - 1
            object_pixels += int(np.count_nonzero(instances))
            annotated += int(np.count_nonzero(targets != IGNORE))
            samples.append(
                Sample(
                    image=reader.read(batch_index, full),
                    targets=targets,
                    val_targets=np.full_like(targets, IGNORE),
                    instances=instances,
                    known=targets != IGNORE,
                )
            )
    return samples, AnnotationSummary(objects, object_pixels, annotated, len(samples))


def _to_spatial_order(plane: np.ndarray, reader: ImageReader) -> np.ndarray:
    order = [a for a in reader.label_axes if a in reader.spatial_axes]
    return plane.transpose([order.index(a) for a in reader.spatial_axes])


def split_validation(samples: list[Sample], fraction: float, rng: np.random.Generator) -> bool:
    """Hold out image regions holding about ``fraction`` of the annotated objects.

    Each sample is cut into a grid of blocks; random blocks go to validation
    until they hold ``fraction`` of the object pixels. Held-out pixels are
    removed from the training targets. Returns False (and holds nothing out)
    when there is too little annotation to spare any: validation then runs
    on the training annotation.
    """
    blocks = []
    for index, sample in enumerate(samples):
        grid = [
            range(0, s, max(1, math.ceil(s / _SPLIT_BLOCKS_PER_AXIS)))
            for s in sample.targets.shape
        ]
        steps = [max(1, math.ceil(s / _SPLIT_BLOCKS_PER_AXIS)) for s in sample.targets.shape]
        for corner in itertools.product(*grid):
            region = tuple(slice(c, c + st) for c, st in zip(corner, steps, strict=True))
            count = int(np.count_nonzero(sample.instances[region]))
            if count:
                blocks.append((index, region, count))
    total = sum(b[2] for b in blocks)
    n_objects = sum(len(np.unique(s.instances)) - 1 for s in samples)
    if fraction <= 0 or n_objects < 4 or len(blocks) < 2:
        for sample in samples:
            sample.val_targets = sample.targets.copy()
        return False
    held = 0
    for i in rng.permutation(len(blocks)):
        if held >= fraction * total:
            break
        index, region, count = blocks[i]
        if held + count > 0.5 * total:
            continue
        sample = samples[index]
        sample.val_targets[region] = sample.targets[region]
        sample.targets[region] = IGNORE
        held += count
    if held == 0:
        for sample in samples:
            sample.val_targets = sample.targets.copy()
        return False
    return True


class PatchSampler:
    """Draws augmented training patches centred on annotated pixels.

    Half of the patches are centred on an object pixel, the rest on any
    annotated pixel, so a few objects among much background still get seen.
    With ``with_distance`` each target patch is ``(2, *patch)``: the classes
    and their `classes_to_distance` (computed on whole samples, so that
    objects cut by a patch's edge keep their true centres).
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
        self._targets = [
            np.stack([s.targets, classes_to_distance(s.targets)])
            if with_distance
            else s.targets[None]
            for s in self.samples
        ]
        self._known = [np.flatnonzero(s.targets != IGNORE) for s in self.samples]
        self._objects = [
            np.flatnonzero((s.targets != IGNORE) & (s.targets > 0)) for s in self.samples
        ]
        weights = np.array([len(k) for k in self._known], float)
        self._sample_p = weights / weights.sum()

    def batch(self, size: int) -> tuple[np.ndarray, np.ndarray]:
        """Return ``(images (N, C, *patch), targets (N, *patch) or (N, 2, *patch))``."""
        images, targets = zip(*(self._patch() for _ in range(size)), strict=True)
        targets = np.stack(targets)
        return np.stack(images), targets[:, 0] if targets.shape[1] == 1 else targets

    def _patch(self) -> tuple[np.ndarray, np.ndarray]:
        rng = self.rng
        i = rng.choice(len(self.samples), p=self._sample_p)
        sample = self.samples[i]
        pool = self._objects[i] if len(self._objects[i]) and rng.random() < 0.5 else self._known[i]
        center = np.unravel_index(pool[rng.integers(len(pool))], sample.targets.shape)
        image, target = _crop(sample.image, self._targets[i], center, self.patch_shape, rng)
        if self.augment is not None:
            image, target = _augment(image, target, rng, self.augment)
        return np.ascontiguousarray(image), np.ascontiguousarray(target)


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
