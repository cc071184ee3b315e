"""How many of the corrected, deleted and unchanged objects a prediction gets right.

The words are the glossary of `napari_unet_tuner.training.corrections`.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy import ndimage

from napari_unet_tuner.training.corrections import MATCH_IOU, CorrectionMap, object_ids
from napari_unet_tuner.training.metrics import iou_table, overlap_table


@dataclass(frozen=True)
class CorrectionCounts:
    """How many corrected, deleted and unchanged objects a prediction gets right.

    The words are the module's glossary.

    Attributes
    ----------
    corrected, corrected_right : int
        Corrected objects, and those a predicted object matches (IoU >= 0.5).
    deleted, deleted_gone : int
        Deleted objects, and those now mostly background.
    unchanged, unchanged_right : int
        Objects left as predicted (those scored, when sampled), and those
        still matched.
    false : int
        New false objects: predicted objects that match no annotated object
        (nor lie on a deleted one).
    scribbles : bool
        Counts of scribbles: painted objects and background strokes.
    unchanged_total : int
        Unchanged objects in the whole annotation, when ``unchanged`` is a
        sample of them (0 when every one is scored).
    """

    corrected: int = 0
    corrected_right: int = 0
    deleted: int = 0
    deleted_gone: int = 0
    unchanged: int = 0
    unchanged_right: int = 0
    false: int = 0
    scribbles: bool = False
    unchanged_total: int = 0

    def __add__(self, other: CorrectionCounts) -> CorrectionCounts:
        return CorrectionCounts(
            self.corrected + other.corrected,
            self.corrected_right + other.corrected_right,
            self.deleted + other.deleted,
            self.deleted_gone + other.deleted_gone,
            self.unchanged + other.unchanged,
            self.unchanged_right + other.unchanged_right,
            self.false + other.false,
            self.scribbles or other.scribbles,
            self.unchanged_total + other.unchanged_total,
        )

    @property
    def to_fix(self) -> int:
        """Corrected plus deleted objects: what the parent got wrong."""
        return self.corrected + self.deleted

    @property
    def fixed(self) -> int:
        """Corrected objects now right plus deleted objects now gone."""
        return self.corrected_right + self.deleted_gone

    @property
    def unchanged_lost(self) -> int:
        """Unchanged objects no longer matched."""
        return self.unchanged - self.unchanged_right

    @property
    def scored(self) -> int:
        """Objects counted."""
        return self.to_fix + self.unchanged

    def score(
        self,
        corrected_weight: float = 1.0,
        deleted_weight: float = 1.0,
        unchanged_weight: float = 1.0,
    ) -> float:
        """Return the annotation score: share of the objects right, TP / (TP + FP + FN).

        Every object the user reviewed counts the same, corrections and
        unchanged alike, and every new false object counts against: deleting
        nine false objects does not pay for losing twenty real ones or adding
        twenty new ones. The weights stand for objects left out of a sampled
        count (`napari_unet_tuner.training.validation`; false objects are
        found around the unchanged ones). NaN when nothing is counted.
        """
        total = (
            self.corrected * corrected_weight
            + self.deleted * deleted_weight
            + (self.unchanged + self.false) * unchanged_weight
        )
        if not total:
            return float("nan")
        right = (
            self.corrected_right * corrected_weight
            + self.deleted_gone * deleted_weight
            + self.unchanged_right * unchanged_weight
        )
        return right / total

    def parts(self) -> list[tuple[str, int, int]]:
        """``(name, right, of)`` for each kind counted, in the glossary's words."""
        if self.scribbles:
            names = ("painted objects right", "background strokes clear", "")
        else:
            names = ("corrected objects right", "deleted objects gone", "unchanged objects right")
        values = (
            (self.corrected_right, self.corrected),
            (self.deleted_gone, self.deleted),
            (self.unchanged_right, self.unchanged),
        )
        return [(name, n, d) for name, (n, d) in zip(names, values, strict=True) if d]

    @property
    def sample_note(self) -> str:
        """`` (a sample of N)`` when the unchanged objects counted are a sample, else ``""``."""
        sampled = self.unchanged and self.unchanged_total > self.unchanged
        return f" (a sample of {self.unchanged_total})" if sampled else ""

    def describe(self) -> str:
        """Plain words, e.g. ``corrected objects right 9/10 · deleted objects gone 5/5``."""
        parts = [f"{name} {n}/{d}" for name, n, d in self.parts()]
        if parts:
            parts[-1] += self.sample_note
        if self.false:
            parts.append(f"new false objects {self.false}")
        return " · ".join(parts)

    def short(self) -> str:
        """Return the counts for a progress bar, e.g. ``fixed 6/8, unchanged 17/19, false 1``."""
        text = f"fixed {self.fixed}/{self.to_fix}"
        if self.unchanged:
            text += f", unchanged {self.unchanged_right}/{self.unchanged}"
        return text + (f", false {self.false}" if self.false else "")

    def to_dict(self) -> dict[str, int]:
        """Return the counts as a dict (for the model card)."""
        return {k: v for k, v in vars(self).items() if k != "scribbles"}


def count_corrections(
    labels: np.ndarray, corrections: CorrectionMap, region: np.ndarray | None = None
) -> CorrectionCounts:
    """Count the objects of ``corrections`` that ``labels`` (a new prediction) gets right.

    Parameters
    ----------
    labels : numpy.ndarray
        Predicted instance labels of the same shape.
    corrections : CorrectionMap
        The sorted objects (or a crop of them).
    region : numpy.ndarray of bool, optional
        Count only objects that lie in this region (e.g. one validation crop).
    """

    def inside(objects: np.ndarray) -> np.ndarray:
        return objects if region is None else np.where(region, objects, 0)

    corrected, deleted, unchanged = (
        inside(corrections.corrected),
        inside(corrections.deleted),
        inside(corrections.unchanged),
    )
    # One IoU table of every annotated object against the prediction serves the
    # corrected, the unchanged and the false objects alike.
    ious, annotated_ids, predicted_ids = iou_table(
        corrections.annotated, labels, corrections.known
    )
    right = annotated_ids[_best(ious, axis=1) >= MATCH_IOU]
    matched = predicted_ids[_best(ious, axis=0) >= MATCH_IOU]
    corrected_ids, unchanged_ids = object_ids(corrected), object_ids(unchanged)
    return CorrectionCounts(
        corrected=len(corrected_ids),
        corrected_right=int(np.isin(corrected_ids, right).sum()),
        deleted=len(object_ids(deleted)),
        deleted_gone=int(np.count_nonzero(deleted_is_gone(deleted, labels, matched))),
        unchanged=len(unchanged_ids),
        unchanged_right=int(np.isin(unchanged_ids, right).sum()),
        false=_false_objects(labels, corrections, deleted, region, matched),
        scribbles=corrections.scribbles,
    )


def deleted_is_gone(
    deleted: np.ndarray, labels: np.ndarray, matched: np.ndarray | None = None
) -> np.ndarray:
    """For each deleted object (sorted ids), whether ``labels`` no longer predicts it.

    Gone: less than half of it is foreground, and no predicted object lies
    mostly on it (a shrunken remnant is not gone), except the predicted
    objects in ``matched`` (ids matching an annotated object: a real object
    beside or inside a deleted one is never its remnant).
    """
    table, deleted_ids, predicted_ids = overlap_table(np.ravel(deleted), np.ravel(labels))
    covered = table[1:, 1:].sum(axis=1)
    sizes = table[1:].sum(axis=1)
    on_deleted = table[1:, 1:] >= MATCH_IOU * table[:, 1:].sum(axis=0)
    if matched is not None:
        on_deleted &= ~np.isin(predicted_ids[1:], matched)
    return (covered < MATCH_IOU * sizes) & ~on_deleted.any(axis=1)


def _false_objects(
    labels: np.ndarray,
    corrections: CorrectionMap,
    deleted: np.ndarray,
    region: np.ndarray | None,
    matched: np.ndarray,
) -> int:
    """Predicted objects, mostly in ``region`` and on known pixels, not among ``matched``.

    Those mostly on a deleted object are not counted again.
    """
    ids, sizes = np.unique(labels[labels > 0], return_counts=True)
    if not len(ids):
        return 0
    known = corrections.known if region is None else corrections.known & region
    inside = ndimage.sum_labels(known, labels, ids) >= MATCH_IOU * sizes
    on_deleted = ndimage.sum_labels(deleted > 0, labels, ids) >= MATCH_IOU * sizes
    return int(np.count_nonzero(inside & ~on_deleted & ~np.isin(ids, matched)))


def _best(ious: np.ndarray, axis: int) -> np.ndarray:
    """Best IoU of each row (``axis=1``) or column (``axis=0``); 0 where there is no partner."""
    if ious.shape[axis] == 0:
        return np.zeros(ious.shape[1 - axis])
    return ious.max(axis=axis)
