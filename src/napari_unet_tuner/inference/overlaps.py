"""Pixel counts of instance labellings: object sizes, and overlaps and IoU between two."""

from __future__ import annotations

import numpy as np


def matched_ious(truth: np.ndarray, prediction: np.ndarray, known: np.ndarray | None = None):
    """IoU of every overlapping (true, predicted) object pair.

    Parameters
    ----------
    truth, prediction : numpy.ndarray
        Instance labels (0 is background).
    known : numpy.ndarray of bool, optional
        Only these pixels count (e.g. the annotated ones of sparse scribbles);
        predicted objects outside them are not counted.

    Returns
    -------
    ious : numpy.ndarray
        ``(n_true, n_pred)`` IoU matrix.
    """
    return iou_table(truth, prediction, known)[0]


def iou_table(truth: np.ndarray, prediction: np.ndarray, known: np.ndarray | None = None):
    """Return `matched_ious` and the ids of its rows and columns (true, predicted)."""
    if known is not None:
        truth = np.where(known, truth, 0)
        prediction = np.where(known, prediction, 0)
    overlap, t_ids, p_ids = overlap_table(np.ravel(truth), np.ravel(prediction))
    t_size = overlap.sum(1, keepdims=True)
    p_size = overlap.sum(0, keepdims=True)
    t_keep, p_keep = t_ids != 0, p_ids != 0
    inter = overlap[np.ix_(t_keep, p_keep)]
    union = t_size[t_keep] + p_size[:, p_keep] - inter
    return np.where(union > 0, inter / np.maximum(union, 1), 0.0), t_ids[t_keep], p_ids[p_keep]


# Largest (true ids x predicted ids) table counted directly; larger ids are
# renumbered first (sorting, about 10x slower on a validation crop).
_DIRECT_TABLE_SIZE = 1 << 24
# Pixels counted at a time.
_SLAB = 1 << 22
# Pixels whose sizes are counted at a time (`object_sizes`): their int64 copy
# is 2 MB, not a large stack's 500 MB.
_SIZE_SLAB = 1 << 18


def object_sizes(labels: np.ndarray) -> np.ndarray:
    """Pixels (voxels) of every label ``0..labels.max()``, counted a slab at a time.

    `np.bincount` of a whole huge image would first copy it to int64, twice
    the size of the labels themselves; a slab of planes (rows) at a time is
    copied instead, views included.
    """
    n = int(labels.max(initial=0)) + 1
    sizes = np.zeros(n, np.int64)
    rows = max(1, _SIZE_SLAB // max(1, int(np.prod(labels.shape[1:]))))
    for start in range(0, labels.shape[0], rows):
        sizes += np.bincount(labels[start : start + rows].ravel(), minlength=n)
    return sizes


def overlap_table(truth: np.ndarray, prediction: np.ndarray):
    """Return pixel counts of every (true id, predicted id) pair, and the ids present.

    Row and column 0 are background. ``truth`` and ``prediction`` are flat
    integer label arrays of one size.
    """
    if truth.size == 0:
        return np.zeros((1, 1), np.int64), np.zeros(1, int), np.zeros(1, int)
    t_max, p_max = int(truth.max()), int(prediction.max())
    if truth.min() < 0 or prediction.min() < 0 or (t_max + 1) * (p_max + 1) > _DIRECT_TABLE_SIZE:
        t_ids, truth = np.unique(truth, return_inverse=True)
        p_ids, prediction = np.unique(prediction, return_inverse=True)
        t_max, p_max = len(t_ids) - 1, len(p_ids) - 1
    else:
        t_ids, p_ids = np.arange(t_max + 1), np.arange(p_max + 1)
    size = (t_max + 1) * (p_max + 1)
    table = np.zeros(size, np.int64)
    # A slab at a time: the int64 pair codes of a whole 60 x 1024 x 1024 stack
    # would take 0.5 GB, and their arithmetic as much again.
    slab = max(_SLAB, size)  # a slab's count costs a table's worth at least
    for start in range(0, truth.size, slab):
        pairs = truth[start : start + slab].astype(np.int64) * (p_max + 1)
        pairs += prediction[start : start + slab]
        table += np.bincount(pairs, minlength=size)
    table = table.reshape(t_max + 1, p_max + 1)
    rows = table.any(axis=1)
    cols = table.any(axis=0)
    rows[0] = cols[0] = True  # background stays first, present or not
    return table[np.ix_(rows, cols)], t_ids[rows], p_ids[cols]


def pair_ious(labels: np.ndarray, other: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """IoU of every overlapping pair of objects, ``(ids, other_ids, ious)``, one entry a pair.

    Only pairs that overlap are counted, a slab at a time: `overlap_table`'s
    dense table for the 13,500 objects of an 8192 x 8192 image against as
    many would be 1.5 GB, and its IoU arithmetic several times that.
    """
    flat, flat_other = np.ravel(labels), np.ravel(other)
    n, n_other = int(flat.max(initial=0)) + 1, int(flat_other.max(initial=0)) + 1
    sizes, other_sizes = np.zeros(n, np.int64), np.zeros(n_other, np.int64)
    codes, counts = [np.zeros(0, np.int64)], [np.zeros(0, np.int64)]
    for start in range(0, flat.size, _SLAB):
        part, part_other = flat[start : start + _SLAB], flat_other[start : start + _SLAB]
        sizes += np.bincount(part, minlength=n)
        other_sizes += np.bincount(part_other, minlength=n_other)
        both = (part > 0) & (part_other > 0)
        pair_codes = part[both].astype(np.int64) * n_other + part_other[both]
        unique, count = np.unique(pair_codes, return_counts=True)
        codes.append(unique)
        counts.append(count)
    unique, inverse = np.unique(np.concatenate(codes), return_inverse=True)
    overlap = np.bincount(inverse, np.concatenate(counts), minlength=len(unique))
    ids, other_ids = unique // n_other, unique % n_other
    return ids, other_ids, overlap / (sizes[ids] + other_sizes[other_ids] - overlap)


def best_ious(labels: np.ndarray, other: np.ndarray) -> np.ndarray:
    """Best IoU of each object of ``labels`` with any object of ``other``, indexed by label id.

    Returns
    -------
    numpy.ndarray
        float64 of length ``labels.max() + 1``; 0 for ids with no overlap
        (and for the background, 0).
    """
    best = np.zeros(int(np.max(labels, initial=0)) + 1)
    ids, _, ious = pair_ious(labels, other)
    np.maximum.at(best, ids, ious)
    return best
