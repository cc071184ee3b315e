"""Synthetic Z-stacks of touching nuclei with exact labels (issue 37's benchmark data).

Nuclei are ellipsoids (each semi-axis 0.85-1.15 times the radius, as tall
as wide on average) packed until they touch, in a volume with square
voxels; each voxel belongs to the nucleus it lies deepest in, so touching
nuclei share a face and never overlap. The volume is blurred by a PSF
twice as long in Z as in XY, sampled every ``z_step`` planes, lit
unevenly (each nucleus 0.6-1.4x, and a smooth gradient across the field)
and given shot and read noise. Labels are sampled on the same planes.
"""

from __future__ import annotations

import numpy as np
from scipy import ndimage


def touching_nuclei(
    diameter: float, z_step: int, seed: int = 0, side: int | None = None
) -> tuple[np.ndarray, np.ndarray]:
    """Return ``(image uint16, labels int32)`` of shape ``(Z, Y, X)``.

    Parameters
    ----------
    diameter : float
        Mean nucleus diameter, in XY pixels.
    z_step : int
        Planes lie this many pixel sizes apart.
    seed : int
        Random layout, brightness and noise.
    side : int, optional
        XY size (default: about 7 diameters, at least 128).
    """
    rng = np.random.default_rng(seed)
    radius = diameter / 2
    side = side or max(128, int(7 * diameter))
    depth = int(3 * diameter) // z_step * z_step + z_step
    shape = (depth, side, side)
    centers, axes = _pack(shape, radius, rng)
    depth_map = np.full(shape, np.inf, np.float32)
    labels = np.zeros(shape, np.int32)
    for i, (center, semi) in enumerate(zip(centers, axes, strict=True), start=1):
        lo = [max(0, int(c - s) - 1) for c, s in zip(center, semi, strict=True)]
        hi = [min(n, int(c + s) + 2) for c, s, n in zip(center, semi, shape, strict=True)]
        grid = np.ogrid[tuple(slice(a, b) for a, b in zip(lo, hi, strict=True))]
        r = sum(((g - c) / s) ** 2 for g, c, s in zip(grid, center, semi, strict=True))
        box = tuple(slice(a, b) for a, b in zip(lo, hi, strict=True))
        inside = (r < 1) & (r < depth_map[box])
        depth_map[box][inside] = r[inside]
        labels[box][inside] = i
    brightness = np.concatenate([[0.0], rng.uniform(0.6, 1.4, len(centers))])
    signal = brightness[labels].astype(np.float32)
    signal = ndimage.gaussian_filter(signal, sigma=(2.0, 1.0, 1.0))
    yy, xx = np.mgrid[:side, :side] / side
    signal *= (0.7 + 0.6 * (0.5 * yy + 0.5 * xx))[None]
    signal = signal[::z_step]
    photons = rng.poisson(signal * 400 + 20).astype(np.float32)
    image = photons + rng.normal(0, 8, photons.shape)
    return np.clip(image, 0, 65535).astype(np.uint16), _renumber(labels[::z_step])


def middle_planes(
    image: np.ndarray, labels: np.ndarray, planes: int
) -> tuple[np.ndarray, np.ndarray]:
    """The middle ``planes`` planes of a stack and its labels (renumbered)."""
    start = max(0, (image.shape[0] - planes) // 2)
    return image[start : start + planes], _renumber(labels[start : start + planes])


def _pack(shape, radius, rng, tries: int = 4000):
    """Random centres about one diameter apart (touching), and each nucleus's semi-axes."""
    centers, axes = [], []
    spacing = 1.9 * radius
    for _ in range(tries):
        center = np.array([rng.uniform(0, n) for n in shape])
        if centers and np.min(np.linalg.norm(np.array(centers) - center, axis=1)) < spacing:
            continue
        centers.append(center)
        axes.append(radius * rng.uniform(0.85, 1.15, 3))
    return centers, axes


def _renumber(labels: np.ndarray) -> np.ndarray:
    """Labels numbered 1..n over the objects left after sampling."""
    ids = np.unique(labels)
    lookup = np.zeros(int(ids.max()) + 1, np.int32)
    lookup[ids[ids > 0]] = np.arange(1, int((ids > 0).sum()) + 1, dtype=np.int32)
    return lookup[labels]
