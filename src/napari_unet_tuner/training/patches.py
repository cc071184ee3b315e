"""Augmented training patches drawn from samples, centred on what was annotated."""

from __future__ import annotations

import numpy as np
from scipy import ndimage

from napari_unet_tuner.config import TrainingConfig
from napari_unet_tuner.errors import InputError
from napari_unet_tuner.training.data import Sample
from napari_unet_tuner.training.losses import UNREVIEWED
from napari_unet_tuner.training.targets import IGNORE, classes_to_distance

# Share of training patches centred on a corrected pixel, when there are any:
# a few corrections among a whole image of unchanged objects are seen every
# other step instead of once in fifty.
CORRECTION_PATCH_SHARE = 0.5
# Corrected regions (connected changed pixels) of at least this many pixels are
# drawn equally often, whatever their size: a small nucleus the user painted
# counts as much as a large merged pair. Smaller specks (a stray brush pixel)
# are drawn in proportion to their size.
_WHOLE_REGION_PIXELS = 64


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
    corrected pixels, `UNREVIEWED` outside a reviewed mask, 0 elsewhere,
    `IGNORE` in padding).
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
            weights = emphasis.astype(np.uint8)
            if s.reviewed is not None:
                weights[~s.reviewed & (s.targets != IGNORE)] = UNREVIEWED
            channels.append(weights)
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
