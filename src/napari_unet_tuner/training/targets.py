"""User annotations to training targets.

Two kinds of annotation, both integer label images of the image's shape
(without channels):

``corrections``
    Instance labels edited from a prediction: 0 is background, every other
    value one object. Inside the reviewed region (the whole image unless a
    ``reviewed`` mask is given) it is the truth, background included.

``scribbles``
    Sparse painting. **0 = not annotated** (ignored by the loss),
    **1 = background**, **2, 3, ... = objects** (one value per object).
    Objects are either painted whole (``scribble_objects="whole"``, the
    default: an object's rim is its boundary, which is what keeps touching
    objects apart) or marked by strokes inside them (``"strokes"``: a
    stroke's rim is not a boundary, so rim pixels that touch unannotated
    pixels are ignored; rims against background strokes or another object
    still become boundary).

Targets are per-pixel classes for a 3-class model (`BACKGROUND`, `INTERIOR`,
`BOUNDARY`, made by `labels_to_classes`, the inverse of segmentation's
`probabilities_to_labels`) with `IGNORE` where nothing is known; models
with a distance output also learn `classes_to_distance` of those classes.
"""

from __future__ import annotations

from typing import Literal

import numpy as np
from scipy import ndimage
from skimage.segmentation import relabel_sequential

from napari_unet_tuner.errors import InputError
from napari_unet_tuner.inference.instances import BACKGROUND, BOUNDARY, INTERIOR, labels_to_classes

AnnotationMode = Literal["corrections", "scribbles"]
ScribbleObjects = Literal["whole", "strokes"]
IGNORE = 255
# Distance targets are stored as uint8 fractions of this, so that they crop,
# flip and pad (with IGNORE) exactly like the class targets.
DISTANCE_SCALE = 254
SCRIBBLE_UNLABELED = 0
SCRIBBLE_BACKGROUND = 1
MIN_ANNOTATED_PIXELS = 16

__all__ = [
    "BACKGROUND",
    "BOUNDARY",
    "IGNORE",
    "INTERIOR",
    "SCRIBBLE_BACKGROUND",
    "SCRIBBLE_UNLABELED",
    "annotation_counts",
    "annotation_to_targets",
    "annotation_to_instances",
    "check_annotation",
    "classes_to_distance",
]


def check_annotation(
    annotation: np.ndarray, label_shape: tuple[int, ...], mode: AnnotationMode
) -> None:
    """Raise an `InputError` saying what to fix if an annotation cannot train a model.

    Parameters
    ----------
    annotation : numpy.ndarray
        The labels the user painted.
    label_shape : tuple of int
        Shape the annotation must have: the image's, without channels.
    mode : {"corrections", "scribbles"}
        How to read the values (see the module docstring).
    """
    if mode not in ("corrections", "scribbles"):
        raise InputError(f"mode must be 'corrections' or 'scribbles', got {mode!r}")
    if np.dtype(annotation.dtype).kind not in "uib":
        raise InputError(
            f"the annotation has dtype {annotation.dtype}; it must be integer labels "
            "(use a napari Labels layer, or convert with .astype(int) if the values are whole)"
        )
    if tuple(annotation.shape) != tuple(label_shape):
        raise InputError(
            f"the annotation has shape {tuple(annotation.shape)} but the image (without "
            f"channels) has shape {tuple(label_shape)}; annotate a layer of the image's size"
        )
    if annotation.size and annotation.min() < 0:
        raise InputError("the annotation has negative labels; use 0 and positive values only")
    if mode == "scribbles":
        known = int(np.count_nonzero(annotation))
        objects = int(np.count_nonzero(annotation >= 2))
        background = known - objects
        if known == 0:
            raise InputError(
                "the annotation is empty: paint background with label 1 "
                "and objects with labels 2, 3, ..."
            )
        if background == 0:
            raise InputError(
                "the scribbles mark no background: paint some background with label 1"
            )
        if objects == 0:
            raise InputError("the scribbles mark no object: paint objects with labels 2, 3, ...")
    else:
        known = annotation.size
        objects = int(np.count_nonzero(annotation))
        if objects == 0:
            raise InputError(
                "the corrections hold no object (all 0); paint objects, or use scribbles mode "
                "if 0 means 'not annotated'"
            )
        if objects == annotation.size:
            raise InputError("the corrections hold no background (no pixel is 0)")
    if known < MIN_ANNOTATED_PIXELS or objects < 4:
        raise InputError(
            f"too little is annotated ({known} pixels, {objects} on objects): paint at least one "
            "whole object and a background stroke"
        )


def annotation_to_instances(annotation: np.ndarray, mode: AnnotationMode) -> np.ndarray:
    """Object instance labels of an annotation (0 for background and unannotated), int32.

    Label values beyond int32 (ids from other tools: 2**32 + 1, or uint32
    ids from 2**31 up) are renumbered, one id per value, instead of wrapping
    around onto other objects or below zero.
    """
    objects = np.where(annotation >= 2, annotation, 0) if mode == "scribbles" else annotation
    if annotation.size and int(annotation.max()) > np.iinfo(np.int32).max:
        return relabel_sequential(np.asarray(objects))[0].astype(np.int32)
    if mode == "scribbles":
        return np.where(annotation >= 2, annotation - 1, 0).astype(np.int32)
    return annotation.astype(np.int32, copy=False)


def annotation_counts(annotation: np.ndarray, mode: AnnotationMode) -> tuple[int, int]:
    """Return (objects, pixels) annotated: for corrections every pixel counts as reviewed."""
    annotation = np.asarray(annotation)
    instances = annotation_to_instances(annotation, mode)
    objects = len(np.unique(instances[instances > 0]))
    pixels = int(np.count_nonzero(annotation)) if mode == "scribbles" else annotation.size
    return objects, pixels


def annotation_to_targets(
    annotation: np.ndarray,
    mode: AnnotationMode,
    reviewed: np.ndarray | None = None,
    scribble_objects: ScribbleObjects = "whole",
) -> np.ndarray:
    """Per-pixel target classes (uint8) with `IGNORE` where nothing is known.

    The annotation is never modified.

    Parameters
    ----------
    annotation : numpy.ndarray
        Integer labels (see the module docstring for the two modes).
    mode : {"corrections", "scribbles"}
        How to read them.
    reviewed : numpy.ndarray of bool, optional
        For corrections: the region the user checked; elsewhere is ignored.
    scribble_objects : {"whole", "strokes"}
        For scribbles: whether objects were painted whole or by strokes inside.
    """
    annotation = np.asarray(annotation)
    instances = annotation_to_instances(annotation, mode)
    classes = labels_to_classes(instances)
    if mode == "corrections":
        if reviewed is not None:
            classes[~np.asarray(reviewed, bool)] = IGNORE
        return classes
    unlabeled = annotation == SCRIBBLE_UNLABELED
    if scribble_objects == "strokes":
        near_unlabeled = ndimage.binary_dilation(unlabeled, np.ones((3,) * annotation.ndim, bool))
        classes[(classes == BOUNDARY) & near_unlabeled] = IGNORE
    classes[unlabeled] = IGNORE
    return classes


def classes_to_distance(classes: np.ndarray) -> np.ndarray:
    """Distance to the object's edge, as a fraction of the object's largest (uint8).

    Every interior region (a connected region of `INTERIOR` pixels: one per
    object, since boundaries keep touching objects apart) gets its
    Euclidean distance to the nearest non-interior pixel divided by the
    region's largest, times `DISTANCE_SCALE`: the centre is
    `DISTANCE_SCALE`, boundary and background 0. Regions that touch an
    `IGNORE` pixel are `IGNORE` (their true extent is unknown), as are
    `IGNORE` pixels.
    """
    classes = np.asarray(classes)
    interior = classes == INTERIOR
    regions, count = ndimage.label(interior)
    distance = ndimage.distance_transform_edt(interior)
    largest = np.zeros(count + 1)
    largest[1:] = ndimage.maximum(distance, regions, np.arange(1, count + 1))
    fraction = distance / np.maximum(largest[regions], 1.0)
    out = np.rint(fraction * DISTANCE_SCALE).astype(np.uint8)
    unknown = classes == IGNORE
    cut = np.unique(regions[ndimage.binary_dilation(unknown) & interior])
    out[np.isin(regions, cut[cut > 0]) | unknown] = IGNORE
    return out
