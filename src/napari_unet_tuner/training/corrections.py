"""What the user corrected, and whether a model now reproduces it.

A correction annotation starts as a model's prediction: the user erases
wrong objects, paints missed ones, splits merged ones. The difference
between that prediction and the annotation is where the model was wrong,
and what fine-tuning must learn.

Glossary (the same words in the API, the command line and the widget):

``corrected`` objects
    Annotated objects that no predicted object matched closely
    (IoU < `UNCHANGED_IOU`): added, redrawn, shrunk, split or merged by the
    user. In scribbles every painted object is one (every stroke counts).
    A model gets one *right* when one of its objects matches it (IoU >= 0.5).
``deleted`` objects
    Predicted objects the user removed: most of their pixels are background
    in the annotation, and no annotated object was drawn out of them (a
    blob redrawn as the nucleus inside it is a corrected object, not a
    deleted one). In scribbles: each connected background stroke, which
    must stay free of objects. *Gone* when a model no longer predicts it.
``unchanged`` objects
    Annotated objects left as they were predicted: what must not be
    forgotten. *Right* while a model still matches them, else *lost*.
new ``false`` objects
    Predicted objects on known pixels that match no annotated object (and
    do not lie on a deleted one): objects on background, or extra pieces
    of split ones.
the corrections
    Corrected plus deleted objects; *fixed* counts those right or gone.
the annotation score
    Share of all these objects right, as average precision counts them
    (`CorrectionCounts.score`): what decides whether a run learned, so a
    run that deletes junk by losing real nuclei has not.

`napari_unet_tuner.training.counting` says how many of each a new
prediction gets right.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np
from scipy import ndimage

from napari_unet_tuner.errors import InputError
from napari_unet_tuner.inference.instances import labels_to_classes
from napari_unet_tuner.training.metrics import matched_ious, overlap_table
from napari_unet_tuner.training.targets import (
    SCRIBBLE_BACKGROUND,
    AnnotationMode,
    annotation_to_instances,
)

if TYPE_CHECKING:
    from napari_unet_tuner.training.data import Sample

# An annotated object this close to a predicted one was left as predicted
# (a stray brush pixel on its rim does not make it a correction).
UNCHANGED_IOU = 0.9
# An object is reproduced when a predicted object matches it at this IoU, the
# threshold of AP@0.5; a deleted object is gone when less than this share of
# its pixels is predicted as foreground.
MATCH_IOU = 0.5
# Pixels around a corrected object that weigh more too: its new rim.
_EMPHASIS_MARGIN = 2


@dataclass
class CorrectionMap:
    """The objects of one plane (or volume) sorted by what the user did to them.

    Attributes
    ----------
    corrected, deleted, unchanged : numpy.ndarray
        int32 labels of each kind of object (0 elsewhere); see the module
        docstring.
    emphasis : numpy.ndarray of bool
        Pixels where the annotation differs from the prediction, plus the
        corrected and deleted objects with their rims: weighed more in the
        loss and sampled more often. Empty for scribbles and for annotations
        without a prediction.
    known : numpy.ndarray of bool
        Pixels whose truth is known: where objects are scored.
    annotated : numpy.ndarray
        All annotated objects (also those not scored): a predicted object
        that matches none of them is a false object.
    scribbles : bool
        Made from scribbles (painted objects and background strokes).
    """

    corrected: np.ndarray
    deleted: np.ndarray
    unchanged: np.ndarray
    emphasis: np.ndarray
    known: np.ndarray
    annotated: np.ndarray
    scribbles: bool = False

    def crop(self, box: tuple[slice, ...]) -> CorrectionMap:
        """Return the same map cut to ``box``."""
        return CorrectionMap(
            self.corrected[box],
            self.deleted[box],
            self.unchanged[box],
            self.emphasis[box],
            self.known[box],
            self.annotated[box],
            self.scribbles,
        )

    @property
    def fix_mask(self) -> np.ndarray:
        """Pixels of corrected and deleted objects and of every other change."""
        return (self.corrected > 0) | (self.deleted > 0) | self.emphasis


def find_corrections(
    annotation: np.ndarray,
    mode: AnnotationMode,
    prediction: np.ndarray | None = None,
    reviewed: np.ndarray | None = None,
) -> CorrectionMap:
    """Sort an annotation's objects by comparing it with the prediction it started from.

    Parameters
    ----------
    annotation : numpy.ndarray
        One plane (or volume) of labels, as painted.
    mode : {"corrections", "scribbles"}
        How to read them (`napari_unet_tuner.training.targets`).
    prediction : numpy.ndarray, optional
        Corrections only: the predicted labels the annotation was edited
        from. Without it every object counts as unchanged (nothing is known
        to be a correction).
    reviewed : numpy.ndarray of bool, optional
        Corrections only: the pixels the user checked. Only objects mostly
        inside them are corrected, deleted or unchanged; the rest of the
        image is unknown (neither right nor wrong).
    """
    annotation = np.asarray(annotation)
    instances = annotation_to_instances(annotation, mode)
    empty = np.zeros_like(instances)
    if mode == "scribbles":
        strokes, _ = ndimage.label(annotation == SCRIBBLE_BACKGROUND)
        nothing = np.zeros(instances.shape, bool)
        return CorrectionMap(
            instances.copy(),
            strokes.astype(np.int32),
            empty,
            nothing,
            annotation != 0,
            instances,
            scribbles=True,
        )
    known = np.ones(instances.shape, bool) if reviewed is None else np.asarray(reviewed, bool)
    if prediction is None:
        unchanged = _mostly_inside(instances, known)
        return CorrectionMap(
            empty, empty.copy(), unchanged, np.zeros(known.shape, bool), known, instances
        )
    prediction = np.asarray(prediction).astype(np.int32, copy=False)
    if prediction.shape != instances.shape:
        raise ValueError(
            f"the prediction has shape {prediction.shape}, the annotation {instances.shape}"
        )
    ious = matched_ious(instances, prediction)
    annotated_ids = np.unique(instances[instances > 0])
    best = ious.max(axis=1) if ious.shape[1] else np.zeros(len(annotated_ids))
    changed_ids = annotated_ids[best < UNCHANGED_IOU]
    corrected = np.where(np.isin(instances, changed_ids), instances, 0)
    unchanged = np.where(corrected > 0, 0, instances)
    deleted = _deleted_objects(instances, prediction)
    changes = labels_to_classes(instances) != labels_to_classes(prediction)
    if reviewed is not None:
        corrected, unchanged, deleted = (
            _mostly_inside(objects, known) for objects in (corrected, unchanged, deleted)
        )
        changes &= known
    grown = ndimage.binary_dilation((corrected > 0) | (deleted > 0), iterations=_EMPHASIS_MARGIN)
    return CorrectionMap(corrected, deleted, unchanged, changes | grown, known, instances)


def _mostly_inside(objects: np.ndarray, region: np.ndarray) -> np.ndarray:
    """``objects`` with at least half of their pixels in ``region`` (others set to 0)."""
    ids = object_ids(objects)
    if not len(ids) or region.all():
        return objects.copy()
    inside = ndimage.sum_labels(region, objects, ids) >= MATCH_IOU * ndimage.sum_labels(
        np.ones(objects.shape, bool), objects, ids
    )
    return np.where(np.isin(objects, ids[inside]), objects, 0)


def _deleted_objects(instances: np.ndarray, prediction: np.ndarray) -> np.ndarray:
    """Return the predicted objects the user deleted, as labels.

    Mostly background in the annotation, and the source of no annotated
    object: a predicted object holding at least half of an annotated one
    was redrawn (shrunk, split off its junk), not deleted.
    """
    table, predicted_ids, annotated_ids = overlap_table(np.ravel(prediction), np.ravel(instances))
    if not len(predicted_ids) or predicted_ids[-1] == 0:
        return np.zeros_like(prediction)
    sizes = table[1:].sum(axis=1)
    on_background = table[1:, 0]
    annotated_sizes = table[:, 1:].sum(axis=0)
    source = (table[1:, 1:] >= MATCH_IOU * annotated_sizes).any(axis=1)
    removed = predicted_ids[1:][(on_background > MATCH_IOU * sizes) & ~source]
    return np.where(np.isin(prediction, removed), prediction, 0)


def object_ids(objects: np.ndarray) -> np.ndarray:
    """Return the sorted ids of the objects in a label image (0 excluded)."""
    return np.unique(objects[objects > 0])


def complete_corrections(
    samples: Sequence[Sample], predict_labels: Callable[[Sample], np.ndarray] | None
) -> None:
    """Give every sample its `CorrectionMap`, predicting where no prediction was given.

    Corrections given without the prediction they were edited from are
    compared with ``predict_labels(sample)``, the starting model's own
    labels made as segmentation makes them; without a starting model
    (``None``) every object counts as unchanged.

    Raises
    ------
    InputError
        If correction annotations are the prediction (nothing to learn): no
        pixel differs from a given prediction, or, where it was computed
        again, no object is corrected or deleted (a pixel at an edge may
        differ by the arithmetic of another device or precision).
    """
    given = [s for s in samples if s.corrections is not None]
    recomputed = [s for s in samples if s.corrections is None]
    for sample in recomputed:
        prediction = None if predict_labels is None else predict_labels(sample)
        sample.corrections = find_corrections(
            sample.instances, "corrections", prediction, sample.reviewed
        )
    if predict_labels is None:
        return
    if not any(s.corrections.fix_mask.any() for s in given) and not any(
        s.corrections.corrected.any() or s.corrections.deleted.any() for s in recomputed
    ):
        raise InputError(
            "the annotation is the same as the model's prediction, so there is nothing to "
            "learn: erase wrong objects, paint missed ones or split merged ones, then fine-tune"
        )
