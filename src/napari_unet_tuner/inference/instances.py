"""Model outputs to instance labels, and instance labels to training targets.

The two directions live together so that they stay each other's inverse:
`labels_to_classes` makes the background / interior / boundary targets that
a 3-class model learns, and `probabilities_to_labels` turns such a model's
probabilities back into instances.
"""

from __future__ import annotations

import itertools
from collections.abc import Iterator

import numpy as np
from scipy import ndimage
from scipy.spatial import ConvexHull, QhullError
from skimage.morphology import convex_hull_image, h_maxima
from skimage.segmentation import find_boundaries, watershed

from napari_unet_tuner.config import InstanceConfig, OutputKind
from napari_unet_tuner.inference.overlaps import object_sizes
from napari_unet_tuner.inference.seed_levels import split_seeds_at_levels

BACKGROUND, INTERIOR, BOUNDARY = 0, 1, 2
# Channel of a ``boundary3_distance`` model's distance to the object's edge.
DISTANCE = 3

# Seeds grow only across the thin boundary band, so a watershed block needs
# little context beyond its own pixels to match the whole-image result.
WATERSHED_HALO = 16
# Blocks the watershed grows seeds in: its working memory is one block. A
# 3D block as large as 2D's per axis would hold a whole stack (60 x 1024 x
# 1024 took 1.7 GB beyond its probabilities). 64 x 512 x 512 (the chunked
# path's default 3D chunk) peaked at 2071 MB on that stack in all, labelling
# in 16.9 s; 64 x 256 x 256 at 1792 MB, in 11.8 s (same AMD EPYC, one run
# each). Seeds grow across the boundary band only, within `WATERSHED_HALO`:
# 64 x 64 x 64 blocks gave the very labels of 64 x 512 x 512 ones (cells3d and
# synthetic 15-40-px stacks, no voxel apart), so the chunked path still agrees.
_BLOCK_SHAPE = {2: (1024, 1024), 3: (64, 256, 256)}

# Splitting a concave seed: its distance-to-edge map is smoothed (pixels) so
# that ragged outlines make no peaks, scaled to 1 at the seed's centre, and
# cut between peaks that stand this far (a fraction of the seed's own
# half-width, so the rule is the same for small and large nuclei) above the
# neck that joins them.
_SPLIT_SMOOTHING = 1.0
_SPLIT_PEAK_HEIGHT = 0.1


def labels_to_classes(labels: np.ndarray) -> np.ndarray:
    """Return per-pixel classes (0 background, 1 interior, 2 boundary) of instance labels.

    A boundary is every object pixel that touches another label or the
    background (``find_boundaries(mode="inner")``), so touching objects are
    separated by boundary pixels on both sides of their contact.
    """
    labels = np.asarray(labels)
    classes = (labels > 0).astype(np.uint8)
    classes[find_boundaries(labels, mode="inner") & (labels > 0)] = BOUNDARY
    return classes


def _blocks(shape: tuple[int, ...], block: tuple[int, ...]) -> Iterator[tuple[slice, ...]]:
    """Non-overlapping blocks covering ``shape``."""
    starts = [range(0, s, b) for s, b in zip(shape, block, strict=True)]
    for corner in itertools.product(*starts):
        yield tuple(slice(c, min(c + b, s)) for c, b, s in zip(corner, block, shape, strict=True))


def grow_region(region: tuple[slice, ...], shape: tuple[int, ...], halo: int) -> tuple[slice, ...]:
    """``region`` widened by ``halo`` on every side, clipped to ``shape``."""
    return tuple(
        slice(max(0, r.start - halo), min(s, r.stop + halo))
        for r, s in zip(region, shape, strict=True)
    )


def seed_markers(
    probabilities: np.ndarray, output_kind: OutputKind, config: InstanceConfig
) -> np.ndarray:
    """Label (int32) the connected regions of pixels that start an object.

    ``boundary3``: interior probability above ``seed_threshold``;
    ``boundary3_distance``: distance to the edge above ``seed_threshold``
    on foreground pixels; ``foreground``: foreground probability above
    ``threshold``. A ``boundary3`` seed with no foreground pixel
    (background probability below ``1 - threshold``) is dropped, so that
    raising ``threshold`` removes objects the model is unsure of; its other
    pixels stay part of it (requiring every seed pixel to pass cuts dim
    nuclei into pieces: DSB2018 AP@0.5 0.81 -> 0.43). With ``core_share``,
    ``boundary3`` seeds of touching objects are split at higher levels of
    the interior probability (`split_seeds_at_levels`).
    """
    if output_kind == "foreground":
        mask = probabilities[0] > config.threshold
    elif output_kind == "boundary3_distance":
        mask = (probabilities[DISTANCE] > config.seed_threshold) & (
            probabilities[BACKGROUND] < 1.0 - config.threshold
        )
    else:
        mask = probabilities[INTERIOR] > config.seed_threshold
    markers, count = ndimage.label(mask, output=np.int32)
    if output_kind == "boundary3" and count:
        # Seeds with at least one foreground pixel, counted in one pass
        # (`ndimage.minimum` per seed sorts every seed pixel: 1.9 s of a
        # 16-megapixel image's 3 s outside the model).
        foreground = mask & (probabilities[BACKGROUND] < 1.0 - config.threshold)
        sure = np.bincount(markers[foreground], minlength=count + 1)[1:] > 0
        if not sure.all():
            # One lookup drops the unsure seeds and renumbers the rest in order.
            lookup = np.zeros(count + 1, np.int32)
            lookup[1:][sure] = np.arange(1, int(sure.sum()) + 1, dtype=np.int32)
            markers = lookup[markers]
    if config.split_solidity > 0:
        split_concave_seeds(markers, config.split_solidity)
    if config.core_share and output_kind == "boundary3":
        split_seeds_at_levels(markers, probabilities[INTERIOR], config.core_share, config.min_size)
    return markers


def split_concave_seeds(markers: np.ndarray, max_solidity: float) -> np.ndarray:
    """Cut seeds less convex than ``max_solidity`` at their narrowings, in place.

    Each such seed's distance-to-edge map (smoothed, divided by its maximum)
    is searched for peaks (`skimage.morphology.h_maxima`); a seed with two or
    more is divided among them by a watershed on that map, so the cut runs
    along the waist between two merged nuclei. New parts get labels after
    the largest existing one.

    Parameters
    ----------
    markers : numpy.ndarray
        int32 labels of the seeds (0 is background), 2D or 3D.
    max_solidity : float
        Seeds whose solidity (area over the area of their convex hull,
        `skimage.morphology.convex_hull_image`) is below this are examined.

    Returns
    -------
    numpy.ndarray
        ``markers``, modified.
    """
    next_label = int(markers.max(initial=0)) + 1
    for label, box in enumerate(ndimage.find_objects(markers), start=1):
        if box is None:
            continue
        own = markers[box] == label
        area = int(own.sum())
        # Most seeds are plainly convex: a bound on the hull's area that costs
        # one pass over the seed's pixels spares them the exact hull.
        if area < 2 or area >= max_solidity * _hull_area_bound(own):
            continue
        if area >= max_solidity * _hull_size(own):
            continue
        inside = np.pad(own, 1)
        distance = ndimage.distance_transform_edt(inside)
        distance = ndimage.gaussian_filter(distance, _SPLIT_SMOOTHING) * inside
        distance /= max(float(distance.max()), 1e-6)
        peaks, count = ndimage.label(h_maxima(distance, _SPLIT_PEAK_HEIGHT) & inside)
        if count < 2:
            continue
        parts = watershed(-distance, peaks, mask=inside)[(slice(1, -1),) * own.ndim]
        markers[box][own] = np.where(parts > 1, parts + next_label - 2, label)[own]
        next_label += count - 1
    return markers


def _hull_size(mask: np.ndarray) -> float:
    """Return the pixels (voxels) of a mask's convex hull, as `convex_hull_image` counts them.

    In 3D, from the hull of the surface voxels' centres: its volume plus half
    its surface area matches the rasterized hull within 2 % (balls,
    ellipsoids and merged pairs of 4-16 voxels' radius) at a tenth of the
    time, which was a quarter of a 3D stack's run (cells3d).
    """
    coords = np.argwhere(mask)
    extent = np.ptp(coords, axis=0)
    if extent.min() == 0:
        # One plane (or row) thick: qhull cannot span a solid on it, and prints
        # its error to the terminal. A 3D one's hull is its plane's 2D hull; a
        # line of pixels is its own.
        if mask.ndim == 3:
            return _hull_size(mask.any(axis=int(np.argmin(extent))))
        return float(len(coords))
    if mask.ndim == 3:
        surface = np.argwhere(mask & ~ndimage.binary_erosion(mask)).astype(np.float64)
        try:
            hull = ConvexHull(surface, qhull_options="QJ Pp")
        except QhullError:  # otherwise degenerate: a flat object is its own hull
            return float(len(coords))
        return float(hull.volume + 0.5 * hull.area)
    return float(convex_hull_image(mask).sum())


def _hull_area_bound(mask: np.ndarray) -> float:
    """Return an upper bound on the convex hull area of a 2D mask (its box's size in 3D).

    The hull lies within the octagon cut from the bounding box by the
    extreme diagonals ``y + x`` and ``y - x`` of the pixels' squares; for a
    disc that octagon is 5 % larger than the disc, for a waisted pair of
    nuclei much larger than the pair.
    """
    if mask.ndim != 2:
        return float(mask.size)
    height, width = mask.shape
    ys, xs = np.nonzero(mask)
    sums, diffs = ys + xs, ys - xs
    # Legs of the four corner triangles the diagonals cut off (pixel squares span +1).
    legs = np.array(
        [
            sums.min(),
            height + width - (sums.max() + 2),
            diffs.min() - 1 + width,
            height - (diffs.max() + 1),
        ]
    ).clip(0)
    if legs.max() > min(height, width):
        # Corner cuts could overlap (a thin diagonal seed): the box is a safe bound.
        return float(mask.size)
    return float(mask.size - (legs.astype(np.float64) ** 2).sum() / 2)


def grow_markers(
    probabilities: np.ndarray,
    markers: np.ndarray,
    output_kind: OutputKind,
    config: InstanceConfig,
) -> np.ndarray:
    """Grow seed markers into whole objects over one region (int32 labels).

    ``boundary3``: a watershed on the inverted interior probability, over
    the pixels whose background probability is below ``1 - threshold``
    (``boundary3_distance``: on the inverted distance to the edge, whose
    valleys lie where touching objects meet). Only the seeds' rims take
    part: seed interiors are final already, and leaving them out keeps the
    watershed's priority queue to a fraction of the pixels.
    ``foreground``: the markers are the objects.
    """
    if output_kind == "foreground":
        return markers.copy()
    core = ndimage.binary_erosion(markers > 0, border_value=0)
    foreground = (probabilities[BACKGROUND] < 1.0 - config.threshold) & ~core
    relief = DISTANCE if output_kind == "boundary3_distance" else INTERIOR
    elevation = -probabilities[relief].astype(np.float32)
    result = watershed(elevation, np.where(core, 0, markers), mask=foreground)
    result[core] = markers[core]
    return result.astype(np.int32, copy=False)


def probabilities_to_labels(
    probabilities: np.ndarray,
    output_kind: OutputKind = "boundary3",
    config: InstanceConfig | None = None,
    out: np.ndarray | None = None,
    block_shape: tuple[int, ...] | None = None,
    markers: np.ndarray | None = None,
) -> np.ndarray:
    """Turn model probabilities into instance labels (int32, 0 is background).

    Parameters
    ----------
    probabilities : numpy.ndarray
        ``(C, *spatial)``: for ``"boundary3"`` the softmax over background,
        interior and boundary (``"boundary3_distance"``: then the distance
        to the edge); for ``"foreground"`` one foreground probability.
    output_kind : {"boundary3", "boundary3_distance", "foreground"}
        How to read the channels (`ModelConfig.output_kind`).
    config : InstanceConfig, optional
        Thresholds and minimum size.
    out : numpy.ndarray, optional
        int32 array of shape ``spatial`` to write the labels into (saves a
        copy of the output on huge images).
    block_shape : tuple of int, optional
        Blocks the watershed runs in (default 1024 x 1024 in 2D, 64 x 256 x
        256 in 3D). Chunked runs
        (`napari_unet_tuner.inference.chunked`) use their chunk shape, and
        give the same labels as this function with that ``block_shape``.
    markers : numpy.ndarray, optional
        int32 seeds to grow instead of `seed_markers`' (3D objects linked
        plane by plane: `napari_unet_tuner.inference.plane_links`).

    Returns
    -------
    numpy.ndarray
        Labels of shape ``spatial``, numbered 1..n without gaps.

    Notes
    -----
    Seeds (`seed_markers`) are labelled over the whole image, then grown
    (`grow_markers`) block by block with a halo of `WATERSHED_HALO` pixels,
    writing into the label array, so the watershed's working memory is one
    block. Touching objects keep the boundary class between them, so their
    seeds stay apart. ``foreground`` models give connected components of the
    thresholded probability (touching objects are not split).
    """
    config = config or InstanceConfig()
    spatial = probabilities.shape[1:]
    labels = np.empty(spatial, np.int32) if out is None else out
    if markers is None:
        markers = seed_markers(probabilities, output_kind, config)
    if output_kind == "foreground":
        labels[...] = markers
    else:
        for block in _blocks(spatial, block_shape or _block_shape(len(spatial))):
            grown = grow_region(block, spatial, WATERSHED_HALO)
            inner = tuple(
                slice(b.start - g.start, b.stop - g.start)
                for b, g in zip(block, grown, strict=True)
            )
            result = grow_markers(
                probabilities[(slice(None), *grown)], markers[grown], output_kind, config
            )
            labels[block] = result[inner]
    del markers
    return remove_small_objects(labels, config.min_size)


def _block_shape(ndim: int) -> tuple[int, ...]:
    """Return the default block of an ``ndim``-dimensional image (`_BLOCK_SHAPE`)."""
    return _BLOCK_SHAPE.get(ndim, (1024,) * ndim)


def remove_small_objects(
    labels: np.ndarray, min_size: float, sizes: np.ndarray | None = None
) -> np.ndarray:
    """Drop objects smaller than ``min_size`` and renumber 1..n, in place, block by block.

    ``sizes``: the labels' `object_sizes`, when already counted.
    """
    sizes = object_sizes(labels) if sizes is None else sizes
    keep = sizes >= max(min_size, 1)
    keep[0] = False
    lut = np.zeros(len(sizes), labels.dtype)
    lut[keep] = np.arange(1, int(keep.sum()) + 1, dtype=labels.dtype)
    for block in _blocks(labels.shape, _block_shape(labels.ndim)):
        labels[block] = lut[labels[block]]
    return labels
