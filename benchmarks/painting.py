"""Simulated user painting: sparse scribbles from full instance masks.

What a biologist does in napari with a brush: fill about ``n_objects``
objects completely (one label each) and draw a few thick background strokes,
some of them running between objects, leaving everything else unannotated.
"""

from __future__ import annotations

import numpy as np
from scipy import ndimage
from skimage.draw import line
from skimage.segmentation import clear_border

from napari_unet_tuner.training.targets import SCRIBBLE_BACKGROUND

# Share of a predicted object on true background for the simulated user to delete it.
FALSE_BACKGROUND = 0.9


def paint_scribbles(
    masks: list[np.ndarray], n_objects: int = 20, strokes_per_image: int = 4, seed: int = 0
) -> list[np.ndarray]:
    """Return one scribble annotation per mask: 0 unannotated, 1 background, 2.. objects."""
    rng = np.random.default_rng(seed)
    ids = [(i, v) for i, m in enumerate(masks) for v in np.unique(m) if v]
    chosen = [ids[k] for k in rng.permutation(len(ids))[:n_objects]]
    out = [np.zeros(m.shape, np.uint16) for m in masks]
    for value, (i, v) in enumerate(chosen, start=2):
        out[i][masks[i] == v] = value
    for i, mask in enumerate(masks):
        foreground = ndimage.binary_dilation(mask > 0, iterations=2)
        near = ndimage.binary_dilation(mask > 0, iterations=40)
        for k in range(strokes_per_image):
            # Half the strokes near the objects (where mistakes are), half anywhere.
            pool = np.argwhere(near & ~foreground) if k % 2 == 0 else np.argwhere(~foreground)
            a, b = pool[rng.integers(len(pool), size=2)]
            rr, cc = line(*a, *b)
            stroke = np.zeros(mask.shape, bool)
            stroke[rr, cc] = True
            stroke = ndimage.binary_dilation(stroke, iterations=3) & ~foreground
            out[i][stroke & (out[i] == 0)] = SCRIBBLE_BACKGROUND
    return out


def correct_worst(
    prediction: np.ndarray,
    truth: np.ndarray,
    k: int,
    deletions: int | None = None,
    min_area: int = 40,
) -> tuple[np.ndarray, list[int], list[int]]:
    """The simulated user of a prediction: fix the ``k`` worst true objects, delete false ones.

    The ``k`` true objects that no predicted object matches (IoU < 0.5),
    worst first, are corrected: every predicted object overlapping one is
    erased, and every true object those erasures touch is painted whole (so
    a merged pair becomes its two nuclei). Then up to ``deletions`` (default
    ``k``) false objects, the largest first, are erased: objects of at least
    ``min_area`` pixels with no true match, at least `FALSE_BACKGROUND` of
    them on true background, and not cut by the image frame. A person
    deletes an object where there is nothing; an object over a small true
    one is a shape to redraw, and a nucleus cut by the frame is a labelling
    convention (HeLa's computer-made reference leaves out nearly every cut
    nucleus: 3 of the 183 objects of frame 15 touch the frame), not a model
    error. True objects under ``min_area`` pixels (slivers at the image
    border, specks in computer-made labels) are never painted: nobody
    corrects a 3-pixel object. Returns the annotation (a corrected copy of
    ``prediction``), the corrected true ids and the deleted predicted ids.
    """
    from napari_unet_tuner.training.metrics import matched_ious

    deletions = k if deletions is None else deletions
    ious = matched_ious(truth, prediction)
    true_ids = np.unique(truth[truth > 0])
    pred_ids = np.unique(prediction[prediction > 0])
    best = ious.max(axis=1) if ious.shape[1] else np.zeros(len(true_ids))
    areas = ndimage.sum_labels(np.ones(truth.shape), truth, true_ids)
    wrong = [
        int(true_ids[i])
        for i in np.argsort(best, kind="stable")
        if best[i] < 0.5 and areas[i] >= min_area
    ][:k]
    annotation = prediction.astype(np.int32, copy=True)
    corrected: set[int] = set()
    erased = np.zeros(truth.shape, bool)
    for t in wrong:
        row = int(np.searchsorted(true_ids, t))
        for col in np.flatnonzero(ious[row] > 0):
            erased |= prediction == pred_ids[col]
        corrected.add(t)
    # Paint every true object that lost at least a third of itself to the erasing.
    for t in np.unique(truth[erased & (truth > 0)]):
        area = np.count_nonzero(truth == t)
        if area >= min_area and np.count_nonzero(erased & (truth == t)) >= area / 3:
            corrected.add(int(t))
    annotation[erased] = 0
    next_label = int(annotation.max()) + 1
    for t in sorted(corrected):
        annotation[truth == t] = next_label
        next_label += 1
    sizes = ndimage.sum_labels(np.ones(truth.shape), prediction, pred_ids)
    on_background = ndimage.sum_labels(truth == 0, prediction, pred_ids)
    unmatched = ious.max(axis=0) < 0.5 if ious.shape[0] else np.ones(len(pred_ids), bool)
    uncut = set(np.unique(clear_border(prediction)).tolist())
    false = [
        int(pred_ids[j])
        for j in np.argsort(-sizes, kind="stable")
        if unmatched[j]
        and sizes[j] >= min_area
        and on_background[j] >= FALSE_BACKGROUND * sizes[j]
        and int(pred_ids[j]) in uncut
        and not erased[prediction == pred_ids[j]].any()
    ][:deletions]
    annotation[np.isin(prediction, false)] = 0
    return annotation, sorted(corrected), false
