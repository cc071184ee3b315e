"""Junk beside dim nuclei: the hardest correction of a nuclei model, built from real images.

On real images the most common error of a nuclei model is debris or faint
cytoplasm taken for nuclei, next to real nuclei nearly as dim. `add_junk`
makes that case from a real image and its labels:

- a share of the real nuclei is dimmed (their signal above the background
  scaled down, edges kept soft), so the dim nuclei overlap the junk in
  brightness;
- textured, irregular blobs (speckled like granular cytoplasm or debris,
  soft-edged, 1-2x a nucleus across) are added on the background, as bright
  as the dim nuclei on average.

The labels are unchanged: junk is background, dim nuclei are nuclei.
`delete_junk` is the simulated user who deletes the junk the model took for
nuclei, a whole junk blob at a time (all the pieces the model cut it into).
"""

from __future__ import annotations

import numpy as np
from scipy import ndimage
from skimage.measure import regionprops


def add_junk(
    image: np.ndarray,
    labels: np.ndarray,
    seed: int,
    junk_per_nucleus: float = 0.4,
    dim_share: float = 0.3,
    dim_level: float = 0.35,
) -> tuple[np.ndarray, np.ndarray]:
    """Return ``image`` (float32) with dimmed nuclei and textured junk added, and the junk.

    Parameters
    ----------
    image, labels : numpy.ndarray
        A 2D fluorescence image and its instance labels.
    seed : int
        Which nuclei are dimmed, and where the junk lies and how it looks.
    junk_per_nucleus : float
        Junk objects added per labelled nucleus.
    dim_share : float
        Share of the nuclei dimmed.
    dim_level : float
        Signal above background of a dimmed nucleus and of the junk, as a
        share of the median nucleus's.

    Returns
    -------
    image : numpy.ndarray
        The image with junk.
    junk : numpy.ndarray
        Labels of the junk blobs (1, 2, ...), 0 elsewhere.
    """
    rng = np.random.default_rng(seed)
    out = image.astype(np.float32)
    nuclei = labels > 0
    near_nuclei = ndimage.binary_dilation(nuclei, iterations=4)
    background = float(np.median(out[~near_nuclei]))
    props = regionprops(labels, out)
    excess = np.median([p.intensity_mean for p in props]) - background
    diameter = float(np.median([p.equivalent_diameter_area for p in props]))
    target = dim_level * excess

    dimmed = rng.choice(len(props), round(dim_share * len(props)), replace=False)
    weight = np.zeros(out.shape, np.float32)
    factors = np.ones(len(props) + 1, np.float32)
    for i in dimmed:
        p = props[i]
        factors[i + 1] = min(1.0, target / max(p.intensity_mean - background, 1e-6))
        weight[labels == p.label] = 1.0 - factors[i + 1]
    # Soft edges: a dimmed nucleus fades into its rim as a real dim one does.
    weight = ndimage.gaussian_filter(weight, 1.0)
    out = background + (out - background) * (1.0 - weight)

    free = ~ndimage.binary_dilation(nuclei, iterations=int(diameter // 3))
    taken = np.zeros(out.shape, bool)
    added = np.zeros(out.shape, np.float32)
    junk = np.zeros(out.shape, np.int32)
    wanted = max(1, round(junk_per_nucleus * len(props)))
    for _ in range(wanted * 20):
        if not wanted:
            break
        size = diameter * rng.uniform(1.0, 2.0)
        radius = int(np.ceil(size / 2)) + 4
        centre = rng.integers(radius, np.array(out.shape) - radius)
        box = tuple(slice(c - radius, c + radius) for c in centre)
        if not free[centre[0], centre[1]] or taken[box].any():
            continue
        blob = _blob(2 * radius, size, rng) & free[box]
        if blob.sum() < 0.3 * np.pi * (size / 2) ** 2:
            continue
        texture = ndimage.gaussian_filter(rng.standard_normal(blob.shape), rng.uniform(1.0, 2.0))
        texture = np.clip(1.0 + 1.0 * texture / texture.std(), 0.0, None)
        spot = ndimage.gaussian_filter(blob.astype(np.float32), 1.5) * texture
        added[box] += target * spot / max(spot[blob].mean(), 1e-6)
        taken[box] |= ndimage.binary_dilation(blob, iterations=3)
        junk[box][blob] = junk.max() + 1
        wanted -= 1
    return out + added, junk


def delete_junk(
    prediction: np.ndarray, junk: np.ndarray, blobs: int
) -> tuple[np.ndarray, list[int], list[int]]:
    """Erase the predicted objects on the ``blobs`` largest junk blobs the model took for nuclei.

    Returns the annotation (a copy of ``prediction``), the junk blobs
    deleted and the predicted ids erased (every piece mostly on one of them).
    """
    ids = np.unique(prediction[prediction > 0])
    sizes = ndimage.sum_labels(np.ones(prediction.shape), prediction, ids)
    on_junk = ndimage.sum_labels(junk > 0, prediction, ids) >= 0.5 * sizes
    blob_of = ndimage.maximum(junk, prediction, ids).astype(int)
    found = [b for b in np.unique(blob_of[on_junk]) if b]
    areas = {b: int(np.count_nonzero(junk == b)) for b in found}
    chosen = sorted(found, key=lambda b: -areas[b])[:blobs]
    erased = [int(i) for i, on, b in zip(ids, on_junk, blob_of, strict=True) if on and b in chosen]
    annotation = prediction.astype(np.int32, copy=True)
    annotation[np.isin(prediction, erased)] = 0
    return annotation, [int(b) for b in chosen], erased


def _blob(width: int, size: float, rng: np.random.Generator) -> np.ndarray:
    """An irregular, lumpy region about ``size`` across in a ``width``-square box."""
    yy, xx = np.mgrid[:width, :width] - (width - 1) / 2
    stretch = rng.uniform(1.0, 1.8)
    angle = rng.uniform(0, np.pi)
    u = (yy * np.cos(angle) + xx * np.sin(angle)) / stretch
    v = -yy * np.sin(angle) + xx * np.cos(angle)
    radial = np.hypot(u, v) / (size / 2)
    lumps = ndimage.gaussian_filter(rng.standard_normal((width, width)), size / 6)
    lumps /= lumps.std() + 1e-9
    region = radial + 0.35 * lumps < 1.0
    labelled, n = ndimage.label(region)
    if n > 1:
        sizes = ndimage.sum_labels(region, labelled, range(1, n + 1))
        region = labelled == 1 + int(np.argmax(sizes))
    return region
