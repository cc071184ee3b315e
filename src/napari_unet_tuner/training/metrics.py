"""Segmentation scores: average precision of instances and Dice/IoU of foreground."""

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
    pairs = truth.astype(np.int64) * (p_max + 1) + prediction
    table = np.bincount(pairs, minlength=(t_max + 1) * (p_max + 1)).reshape(t_max + 1, p_max + 1)
    rows = table.any(axis=1)
    cols = table.any(axis=0)
    rows[0] = cols[0] = True  # background stays first, present or not
    return table[np.ix_(rows, cols)], t_ids[rows], p_ids[cols]


def match_counts(
    truth: np.ndarray,
    prediction: np.ndarray,
    threshold: float = 0.5,
    known: np.ndarray | None = None,
) -> tuple[int, int, int]:
    """Return ``(tp, fp, fn)``: objects matched at IoU >= ``threshold``, and not.

    Pairs are matched greedily, best first, each object at most once; above
    0.5 a pair can only match one way anyway, so greedy matching is optimal
    there. Counts from several images or regions add up to a pooled score.
    """
    if threshold < 0.5:
        raise ValueError("threshold must be >= 0.5 for unique matching")
    ious = matched_ious(truth, prediction, known)
    n_true, n_pred = ious.shape
    rows, cols = np.nonzero(ious >= threshold)
    order = np.argsort(-ious[rows, cols], kind="stable")
    used_true, used_pred = set(), set()
    for r, c in zip(rows[order], cols[order], strict=True):
        if r not in used_true and c not in used_pred:
            used_true.add(r)
            used_pred.add(c)
    tp = len(used_true)
    return tp, n_pred - tp, n_true - tp


def pooled_precision(tp: int, fp: int, fn: int) -> float:
    """Average precision TP / (TP + FP + FN) of pooled counts; 1 when there is nothing."""
    total = tp + fp + fn
    return tp / total if total else 1.0


def average_precision(
    truth: np.ndarray,
    prediction: np.ndarray,
    threshold: float = 0.5,
    known: np.ndarray | None = None,
) -> float:
    """Average precision TP / (TP + FP + FN) at an IoU threshold.

    The definition of the cell-segmentation literature (StarDist, Cellpose),
    with objects matched by `match_counts`. Two empty images score 1.
    """
    return pooled_precision(*match_counts(truth, prediction, threshold, known))


def dice_iou(
    truth: np.ndarray, prediction: np.ndarray, known: np.ndarray | None = None
) -> tuple[float, float]:
    """Dice and IoU of the foreground (label > 0), on ``known`` pixels only."""
    t, p = truth > 0, prediction > 0
    if known is not None:
        t, p = t & known, p & known
    inter = np.count_nonzero(t & p)
    total = np.count_nonzero(t) + np.count_nonzero(p)
    if total == 0:
        return 1.0, 1.0
    return 2 * inter / total, inter / (total - inter)
