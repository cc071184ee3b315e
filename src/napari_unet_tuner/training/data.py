"""Training samples from annotated images: checked, normalized, with their targets."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace
from typing import Any, Literal

import numpy as np
from skimage.transform import resize

from napari_unet_tuner.config import NormalizationConfig, StackMode
from napari_unet_tuner.errors import InputError
from napari_unet_tuner.inference.image import ImageReader, infer_axes, resize_plane
from napari_unet_tuner.training.corrections import CorrectionMap, find_corrections
from napari_unet_tuner.training.targets import (
    IGNORE,
    AnnotationMode,
    ScribbleObjects,
    annotation_to_instances,
    annotation_to_targets,
    check_annotation,
)


@dataclass(frozen=True)
class AnnotatedImage:
    """An image with what the user painted on it, to fine-tune on.

    Parameters
    ----------
    image : array-like
        The image (numpy, dask, zarr), axes as for segmentation.
    labels : numpy.ndarray
        Integer labels of the image's shape without channels. Never modified.
    mode : {"corrections", "scribbles"} or None
        How to read ``labels``; ``None``: `TrainingConfig.mode`.
    prediction : numpy.ndarray, optional
        Corrections only: the predicted labels the user edited into
        ``labels``. Where they differ is where the model was wrong, and
        fine-tuning stresses it. Without it, the starting model's
        prediction is computed again.
    axes : str, optional
        Axes of ``image`` (e.g. ``"ZYX"``); inferred when omitted.
    scale : float or "auto"
        Resize factor of the image's planes for the model, as segmentation
        used it (`SegmentationResult.scale`): the model learns the objects
        at the size it sees them. ``"auto"``: the starting model's
        automatic object size (`napari_unet_tuner.inference.object_size`),
        what segmenting the image with it uses.
    stack : {"planes", "3d"}
        For a Z-stack and a 2D model: ``"3d"`` when ``labels`` are 3D
        objects (one id across planes, as `InferenceConfig.stack` "3d"
        gives): the model also learns from the XZ and YZ planes, the views
        3D segmentation runs it on (`napari_unet_tuner.training.side_views`);
        the scale is then 1. ``"planes"``: the XY planes only.
    anisotropy : float
        Z step over XY pixel size, for ``stack="3d"`` (as
        `InferenceConfig.anisotropy`).
    reviewed : numpy.ndarray of bool, optional
        Corrections only: the pixels the user checked (e.g. the objects
        reviewed one by one and their surroundings), of ``labels``' shape.
        Only there is the annotation truth, background included, and only
        objects mostly inside it are scored; elsewhere the starting
        model's prediction is kept as a weak target
        (`TrainingConfig.unreviewed_weight`) so the model does not drift
        where nobody looked. ``None``: all of it is truth.
    name : str, optional
        What the image is called (a file or layer name): the new model's
        card names the images it was trained on.
    """

    image: Any
    labels: Any
    mode: AnnotationMode | None = None
    prediction: Any = None
    axes: str | None = None
    scale: float | Literal["auto"] = "auto"
    stack: StackMode = "planes"
    anisotropy: float = 1.0
    reviewed: Any = None
    name: str | None = None

    def title(self, index: int) -> str:
        """Return the image's name, or its number and shape when it has none."""
        shape = "x".join(str(int(s)) for s in self.image.shape)
        return self.name or f"image {index + 1} ({shape})"


def as_annotated_images(
    pairs: Sequence[AnnotatedImage | tuple[Any, Any]],
    mode: AnnotationMode,
    axes: Sequence[str | None] | None = None,
) -> list[AnnotatedImage]:
    """Normalize (image, labels) tuples and `AnnotatedImage` to the latter, modes filled in."""
    axes = list(axes) if axes is not None else [None] * len(pairs)
    out = []
    for pair, ax in zip(pairs, axes, strict=True):
        item = pair if isinstance(pair, AnnotatedImage) else AnnotatedImage(*pair)
        out.append(replace(item, mode=item.mode or mode, axes=item.axes or ax))
    return out


@dataclass
class Sample:
    """One plane (2D model) or volume (3D model) with its targets.

    Attributes
    ----------
    image : numpy.ndarray
        Normalized ``(C, *spatial)`` float32.
    targets : numpy.ndarray
        Classes for training; `IGNORE` where unknown or held out.
    val_targets : numpy.ndarray
        Classes of the held-out region only (`IGNORE` elsewhere).
    instances : numpy.ndarray
        Object instances of the annotation, for instance scores.
    source : int
        Index of the annotated image the sample comes from (its planes and
        time points share one held-out split).
    corrections : CorrectionMap or None
        What the user corrected; ``None`` until the starting model's
        prediction is known.
    stack_plane : tuple or None
        For the XY planes of an annotation with ``stack="3d"``: which Z-stack
        of its image (the plane's index on its other batch axes) and which
        plane of it (Z), to assemble its side views from.
    native_shape : tuple of int or None
        The plane's own spatial shape when ``image`` was resized for the
        model (`AnnotatedImage.scale`): a prediction computed again for it
        is made as segmentation makes it, on that grid (`native_labels`).
    """

    image: np.ndarray
    targets: np.ndarray
    val_targets: np.ndarray
    instances: np.ndarray
    source: int = 0
    corrections: CorrectionMap | None = field(default=None, repr=False)
    stack_plane: tuple[tuple[int, ...], int] | None = None
    reviewed: np.ndarray | None = field(default=None, repr=False)
    native_shape: tuple[int, ...] | None = None


def native_labels(
    sample: Sample,
    probabilities: Callable[[np.ndarray], np.ndarray],
    to_labels: Callable[[np.ndarray], np.ndarray],
) -> np.ndarray:
    """Return the model's labels for a sample, made as segmentation makes them.

    A resized sample's probabilities go back to the plane's own grid, become
    labels there, and are resized like its annotation, so that the labels a
    user saw and edited and these are the same where nothing was edited.
    """
    predicted = probabilities(sample.image)
    if sample.native_shape is None:
        return to_labels(predicted)
    native = resize(predicted, (predicted.shape[0], *sample.native_shape), order=1)
    return resize_plane(to_labels(native.astype(np.float32)), sample.image.shape[1:])


@dataclass(frozen=True)
class AnnotationSummary:
    """How much the user annotated (shown in the widget, stored in the card)."""

    objects: int
    object_pixels: int
    annotated_pixels: int
    planes: int

    images: tuple[str, ...] = ()

    def to_dict(self) -> dict[str, int | list[str]]:
        """Return the counts (and the images' names) as a dict."""
        return {**vars(self), "images": list(self.images)}


def build_samples(
    annotated: Sequence[AnnotatedImage],
    spatial_dims: int,
    in_channels: int,
    normalization: NormalizationConfig,
    scribble_objects: ScribbleObjects = "whole",
) -> tuple[list[Sample], AnnotationSummary]:
    """Check every annotated image, then normalize images and make targets.

    Every check runs before any plane is prepared, so bad input fails fast
    with a message that says what to fix. Annotations are never modified.
    Scribbles, and corrections given with their prediction, get their
    `CorrectionMap` here.

    Raises
    ------
    InputError
        If an image or annotation cannot be used.
    """
    if not annotated:
        raise InputError("no (image, annotation) pairs given")
    readers = []
    for i, item in enumerate(annotated):
        shape = tuple(int(s) for s in item.image.shape)
        reader = ImageReader(
            item.image,
            item.axes or infer_axes(shape, spatial_dims, in_channels),
            spatial_dims,
            in_channels,
            normalization,
        )
        label_shape = tuple(reader.shape[a] for a in reader.label_axes)
        labels = np.asarray(item.labels)
        prediction = None if item.prediction is None else np.asarray(item.prediction)
        reviewed = None if item.reviewed is None else np.asarray(item.reviewed, bool)
        try:
            check_annotation(labels, label_shape, item.mode)
            if prediction is not None and prediction.shape != labels.shape:
                raise InputError(
                    f"the prediction has shape {prediction.shape} but the annotation "
                    f"{labels.shape}; give the labels the annotation was edited from"
                )
            _check_reviewed(reviewed, labels, item)
        except InputError as exc:
            where = f"pair {i + 1}: " if len(annotated) > 1 else ""
            raise InputError(f"{where}{exc}") from None
        scale = 1.0 if item.scale == "auto" else float(item.scale)
        if not 0.1 <= scale <= 10:
            raise InputError(f"pair {i + 1}: scale must be in [0.1, 10], got {scale}")
        if item.stack == "3d":
            _check_stack(item, reader, spatial_dims, scale, i)
        readers.append(
            (reader, labels, prediction, reviewed, item.mode, scale, item.stack == "3d")
        )
    samples = []
    objects = object_pixels = annotated_pixels = 0
    for source, (reader, labels, prediction, reviewed, mode, scale, stack) in enumerate(readers):
        full = tuple(slice(0, s) for s in reader.spatial_shape)
        resized = tuple(max(1, round(n * scale)) for n in reader.spatial_shape)
        for batch_index in reader.batch_indices():
            index = reader.label_index(batch_index)
            plane_labels = resize_plane(_to_spatial_order(labels[index], reader), resized)
            plane_reviewed = (
                None
                if reviewed is None
                else resize_plane(_to_spatial_order(reviewed[index], reader), resized)
            )
            # Outside a reviewed mask the targets stay the prediction (the
            # annotation there is as predicted): trained on at
            # `TrainingConfig.unreviewed_weight`, never scored.
            targets = annotation_to_targets(plane_labels, mode, scribble_objects=scribble_objects)
            # A Z-stack keeps its unannotated planes: its side views cross them.
            if not stack and not (targets != IGNORE).any():
                continue
            instances = annotation_to_instances(plane_labels, mode)
            objects += len(np.unique(instances)) - 1
            object_pixels += int(np.count_nonzero(instances))
            annotated_pixels += int(np.count_nonzero(targets != IGNORE))
            corrections = None
            if mode == "scribbles":
                corrections = find_corrections(plane_labels, mode)
            elif prediction is not None:
                plane_prediction = resize_plane(
                    _to_spatial_order(prediction[index], reader), resized
                )
                corrections = find_corrections(
                    plane_labels, mode, plane_prediction, plane_reviewed
                )
            samples.append(
                Sample(
                    image=resize_plane(reader.read(batch_index, full), resized),
                    targets=targets,
                    val_targets=np.full_like(targets, IGNORE),
                    instances=instances,
                    source=source,
                    corrections=corrections,
                    stack_plane=_stack_plane(reader, batch_index) if stack else None,
                    reviewed=plane_reviewed,
                    native_shape=None if resized == reader.spatial_shape else reader.spatial_shape,
                )
            )
    titles = tuple(item.title(i) for i, item in enumerate(annotated))
    summary = AnnotationSummary(objects, object_pixels, annotated_pixels, len(samples), titles)
    return samples, summary


def _check_reviewed(reviewed: np.ndarray | None, labels: np.ndarray, item: AnnotatedImage) -> None:
    """Raise `InputError` unless ``reviewed`` is a usable mask of what the user checked."""
    if reviewed is None:
        return
    if reviewed.shape != labels.shape:
        raise InputError(
            f"the reviewed mask has shape {reviewed.shape} but the annotation "
            f"{labels.shape}; give one value per pixel of the annotation"
        )
    if item.mode == "scribbles":
        raise InputError(
            "a reviewed mask is for corrections; in scribbles, unpainted pixels are "
            "already unknown"
        )
    if item.stack == "3d":
        raise InputError(
            "a reviewed mask cannot be combined with stack='3d' yet: use stack='planes'"
        )
    if not reviewed.any():
        raise InputError(
            "nothing is marked as reviewed: review some objects (or give no reviewed mask "
            "to take the whole annotation as truth)"
        )


def _check_stack(
    item: AnnotatedImage, reader: ImageReader, spatial_dims: int, scale: float, i: int
) -> None:
    """Raise `InputError` unless ``item`` is a Z-stack whose side views a 2D model can learn."""
    if spatial_dims != 2 or "Z" not in reader.batch_axes or reader.shape["Z"] < 2:
        raise InputError(
            f"pair {i + 1}: stack='3d' is for Z-stacks (axes with Z) and 2D models; "
            f"this image has axes {reader.axes}. Use stack='planes'"
        )
    if scale != 1.0:
        raise InputError(
            f"pair {i + 1}: 3D objects are learned at scale 1 (as 3D segmentation runs); "
            f"got scale {scale:g}"
        )
    if not 0.1 <= item.anisotropy <= 20:
        raise InputError(f"pair {i + 1}: anisotropy must be in [0.1, 20], got {item.anisotropy}")


def _stack_plane(reader: ImageReader, batch_index: tuple[int, ...]) -> tuple[tuple[int, ...], int]:
    """(index on the batch axes other than Z, Z) of a plane of a Z-stack."""
    others = tuple(i for a, i in zip(reader.batch_axes, batch_index, strict=True) if a != "Z")
    return others, batch_index[reader.batch_axes.index("Z")]


def _to_spatial_order(plane: np.ndarray, reader: ImageReader) -> np.ndarray:
    order = [a for a in reader.label_axes if a in reader.spatial_axes]
    return plane.transpose([order.index(a) for a in reader.spatial_axes])
