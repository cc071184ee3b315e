"""Segmentation scores: average precision of instances and Dice/IoU of foreground."""

from __future__ import annotations

import numpy as np

from napari_unet_tuner.inference.overlaps import iou_table, matched_ious, overlap_table

__all__ = ["iou_table", "matched_ious", "overlap_table"]


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
