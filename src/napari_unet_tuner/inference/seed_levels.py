"""Seeds of touching 3D objects split at higher levels of the interior probability.

A 2D model sees a Z-stack three ways (`stack_views`), and the averaged
interior probability dips only part way where two nuclei touch: in each view
one nucleus lies in front of the other somewhere. Thresholded at the seed
threshold, the two nuclei share one seed and become one object. Raised step
by step (`SEED_LEVELS`), the threshold parts them into two cores, each with a
good share of a typical seed's volume; a single nucleus, even a textured one,
stays one core, or leaves only crumbs beside its core. Each seed that holds
two or more such cores at some level is replaced by them, and the search
goes on within each core at the next level; the watershed
(`instances.grow_markers`) then grows the cores back into whole objects.

This walks the component tree (max-tree) of the interior probability and
keeps its branches by size, measured against the volume's own seeds so that
the rule holds at every object size.
"""

from __future__ import annotations

import numpy as np
from scipy import ndimage

from napari_unet_tuner.inference.overlaps import object_sizes

# Levels the interior probability is cut at, above the seed threshold.
SEED_LEVELS = (0.6, 0.7, 0.8, 0.9)
# A core counts when it holds this share of the median seed's voxels. On the
# default model's 3D probabilities, the second-largest core of a real nucleus
# (cells3d's whole volume, 25 seeds, levels 0.6-0.95) holds at most 0.05 of the
# median seed; those of two touching synthetic 15-px nuclei (Z step 2) 0.19-1.0.
# 3D AP@0.5 over synthetic touching nuclei of 15 and 25 px, Z steps 1, 2 and 4,
# two seeds (the stacks with side views): 0.10 / 0.20 / 0.30 of the median
# 0.926 / 0.926 / 0.923, against 0.79 unsplit; cells3d 0.818 / 0.857 / 0.857,
# 0.857 unsplit. A fixed size in voxels cannot serve: at 15 voxels cells3d's
# nuclei crumble (0.079), at 100 still 0.129.
CORE_SHARE = 0.2


def split_seeds_at_levels(
    markers: np.ndarray,
    interior: np.ndarray,
    core_share: float = CORE_SHARE,
    min_size: int = 1,
    levels: tuple[float, ...] = SEED_LEVELS,
) -> np.ndarray:
    """Replace, in place, each seed that holds two or more large cores by those cores.

    Parameters
    ----------
    markers : numpy.ndarray
        int32 seeds numbered 1..n (0 is background), as
        `instances.seed_markers` labels them; modified.
    interior : numpy.ndarray
        The interior probability the seeds were thresholded from, same shape.
    core_share : float
        A core (connected region above a level) counts when it holds at
        least this share of the median seed's size,
    min_size : int
        and at least this many voxels (the smallest object kept).
    levels : tuple of float
        Rising levels the probability is cut at.

    Returns
    -------
    numpy.ndarray
        ``markers``, still numbered 1..n: the first core of a split seed keeps
        its label, the others take labels after the largest.

    Notes
    -----
    Seeds large enough to hold two cores are examined one at a time within
    their bounding boxes, so the extra memory is one such seed's box (about
    11 bytes a voxel), not labelled copies of the volume (a 60 x 1024 x 1024
    stack's seeds alone take 250 MB as int32).
    """
    sizes = object_sizes(markers)
    counted = sizes[1:][sizes[1:] > 0]
    if len(counted) == 0:
        return markers
    least = max(core_share * float(np.median(counted)), float(min_size), 1.0)
    examined = sizes >= 2 * least
    examined[0] = False
    if not examined.any():
        return markers
    next_label = len(sizes)
    for label, box in enumerate(ndimage.find_objects(markers), start=1):
        if box is None or not examined[label]:
            continue
        view = markers[box]
        cores = _cores(view == label, interior[box], least, levels)
        count = int(cores.max())
        if count < 2:
            continue
        view[view == label] = 0
        inside = cores > 0
        # The first core keeps the seed's label; the others follow the largest.
        view[inside] = np.where(cores[inside] == 1, label, cores[inside] + (next_label - 2))
        next_label += count - 1
    return markers


def _cores(
    region: np.ndarray, interior: np.ndarray, least: float, levels: tuple[float, ...]
) -> np.ndarray:
    """Label (int32, 1..n) what ``region`` becomes: itself, or its large cores, split further."""
    current = region.astype(np.int32)
    for level in levels:
        parts, count = ndimage.label(region & (interior > level), output=np.int32)
        if count < 2:
            continue
        part_sizes = object_sizes(parts)
        large = np.flatnonzero(part_sizes >= least)
        large = large[large > 0]
        if len(large) < 2:
            continue
        # A core lies within one current seed (or in a crumb left out), so
        # any of its voxels names that seed (`ndimage.maximum` would hold
        # int64 copies of the box).
        inside = parts > 0
        owner_of = np.zeros(count + 1, np.int32)
        owner_of[parts[inside]] = current[inside]
        del inside
        owners = owner_of[large]
        seeds, held = np.unique(owners[owners > 0], return_counts=True)
        parted = seeds[held >= 2]
        if len(parted) == 0:
            continue
        chosen = large[np.isin(owners, parted)]
        # Lookups, not `np.isin` over the box (it sorts int64 copies of it).
        top = int(current.max())
        gone = np.zeros(top + 1, bool)
        gone[parted] = True
        current[gone[current]] = 0
        lookup = np.zeros(count + 1, np.int32)
        lookup[chosen] = np.arange(top + 1, top + 1 + len(chosen), dtype=np.int32)
        new = lookup[parts]
        del parts
        np.copyto(current, new, where=new > 0)
        del new
    present = np.flatnonzero(object_sizes(current))
    renumber = np.zeros(int(present[-1]) + 1, np.int32)
    renumber[present[present > 0]] = np.arange(1, int((present > 0).sum()) + 1, dtype=np.int32)
    return renumber[current]
