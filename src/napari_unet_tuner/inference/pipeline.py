"""Image in, instance labels out: the headless segmentation entry points."""

from __future__ import annotations

import logging
import math
import os
import time
from collections.abc import Generator
from dataclasses import dataclass, replace
from typing import Any, Literal

import numpy as np
import pandas as pd

from napari_unet_tuner._generators import map_progress, run_to_completion
from napari_unet_tuner.config import (
    InferenceConfig,
    InstanceConfig,
    NormalizationConfig,
    resolve_stack,
)
from napari_unet_tuner.inference.device import cpu_threads, select_device
from napari_unet_tuner.inference.image import ImageReader, Rescaled, infer_axes
from napari_unet_tuner.inference.instances import probabilities_to_labels
from napari_unet_tuner.inference.object_size import SizeEstimate, choose_object_size
from napari_unet_tuner.inference.objects import ObjectCollector, raw_part
from napari_unet_tuner.inference.predictor import build_predictor
from napari_unet_tuner.inference.runtime_probe import RuntimeChoice
from napari_unet_tuner.inference.stack import (
    iter_segment_stack,
    run_instances,
    stack_scale,
    view_diameter,
)
from napari_unet_tuner.inference.tiling import (
    Predictor,
    fit_tile_shape,
    iter_predict_tiled,
    tile_starts,
)
from napari_unet_tuner.inference.z_step import ZStepEstimate, estimate_z_step, first_stack
from napari_unet_tuner.model.checkpoint import Checkpoint
from napari_unet_tuner.model.loading import load_checkpoint

logger = logging.getLogger(__name__)

# 512-pixel tiles overlapping by 128 run as fast here as 256-pixel ones by 32
# (fewer, larger tiles) and stay much closer to a whole-image pass.
DEFAULT_TILE_SHAPE = {2: (512, 512), 3: (32, 128, 128)}


@dataclass(frozen=True)
class SegmentationProgress:
    """Progress of a segmentation run, yielded after every batch of tiles.

    Attributes
    ----------
    stage : {"predict", "instances"}
        Running the model on tiles, or turning a plane's probabilities into labels.
    plane, planes : int
        Index of the current plane (or volume) and how many there are.
    tiles_done, tiles_total : int
        Tiles predicted so far over all planes, and in all.
    elapsed : float
        Seconds since the run started.
    view : {"xy", "xz", "yz"} or None
        For 3D objects in a Z-stack (`InferenceConfig.stack`), the
        orientation whose planes the model is running on.
    """

    stage: Literal["predict", "instances"]
    plane: int
    planes: int
    tiles_done: int
    tiles_total: int
    elapsed: float
    view: str | None = None

    @property
    def fraction(self) -> float:
        """Share of tiles done, in [0, 1]."""
        return self.tiles_done / max(self.tiles_total, 1)


@dataclass(frozen=True)
class SegmentationResult:
    """What a segmentation run produces.

    Attributes
    ----------
    labels : numpy.ndarray
        int32 instance labels with the image's axes minus C (``axes``);
        unique over the whole array, 0 is background.
    axes : str
        Axes of ``labels``.
    probabilities : numpy.ndarray or None
        float16 ``(out_channels, *labels.shape)`` if asked for.
    scale : float
        Resize factor the model ran at (`InferenceConfig.scale`, or the one
        the object size set).
    object_size : SizeEstimate or None
        The object size used to choose ``scale`` (estimated with
        ``diameter="auto"``, or as given); ``None`` when none was.
    objects : pandas.DataFrame or None
        One row per label: ``label``, ``area``, ``centroid-<axis>`` (axes of
        ``labels``), ``intensity_mean`` (``intensity_mean-<c>`` per channel),
        the signals the confidence is made of, ``confidence`` (0-1, higher
        = more likely right) and ``review_rank`` (1 = look at it first);
        see `napari_unet_tuner.inference.objects`. ``None`` when
        `InferenceConfig.object_table` is off.
    possible_misses : pandas.DataFrame or None
        Unlabelled places where the model saw foreground: ``area``,
        ``centroid-<axis>``, ``confidence`` (that it is an object) and
        ``review_rank`` (1 = most likely a missed object).
    anisotropy : float or None
        For 3D objects in a Z-stack, the Z step over the pixel size the run
        used (given, from the file, measured, or 1); ``None`` otherwise.
    z_step : ZStepEstimate or None
        When the Z step was measured on the stack's objects (neither given
        nor in the file): what was found, or why it could not be told.
    runtime : RuntimeChoice or None
        What ran the model (`InferenceConfig.runtime`), and why; ``None``
        for a caller's own predictor.
    """

    labels: np.ndarray
    axes: str
    probabilities: np.ndarray | None = None
    scale: float = 1.0
    object_size: SizeEstimate | None = None
    objects: pd.DataFrame | None = None
    possible_misses: pd.DataFrame | None = None
    anisotropy: float | None = None
    z_step: ZStepEstimate | None = None
    runtime: RuntimeChoice | None = None


def resolve_run(
    image: Any,
    checkpoint: Checkpoint | str | os.PathLike,
    axes: str | None,
    inference: InferenceConfig | None,
) -> tuple[Checkpoint, str | None, InferenceConfig]:
    """Return the model, the known axes and the settings a run of ``image`` uses.

    Axes the caller gave or the file's metadata holds (never guessed ones)
    decide whether a stack's objects are 3D by default (`resolve_stack`).
    """
    axes = axes or getattr(image, "axes", None)
    inference = resolve_stack(
        inference or InferenceConfig(), axes, getattr(image, "anisotropy", None)
    )
    return as_checkpoint(checkpoint), axes, inference


def as_checkpoint(checkpoint: Checkpoint | str | os.PathLike) -> Checkpoint:
    """Return ``checkpoint`` itself, or the checkpoint loaded from that path."""
    if isinstance(checkpoint, Checkpoint):
        return checkpoint
    return load_checkpoint(checkpoint)


def iter_segment(
    image: Any,
    checkpoint: Checkpoint | str | os.PathLike,
    *,
    axes: str | None = None,
    inference: InferenceConfig | None = None,
    instances: InstanceConfig | None = None,
    normalization: NormalizationConfig | None = None,
    return_probabilities: bool = False,
    predictor: Predictor | None = None,
) -> Generator[SegmentationProgress, None, SegmentationResult]:
    """Segment an image, yielding `SegmentationProgress` after every batch of tiles.

    The generator's return value (``StopIteration.value``) is the
    `SegmentationResult`; `segment` unwraps it. Closing the generator (or a
    napari worker's ``quit()``) cancels the run before the next batch.

    Parameters
    ----------
    image : array-like
        numpy, dask, zarr or memory-mapped array; never loaded whole.
    checkpoint : Checkpoint or path-like
        The model to run, with its normalization and instance defaults.
    axes : str, optional
        Axes of ``image`` (letters from ``TZCYX``); inferred by the rule in
        `napari_unet_tuner.inference.image` if omitted.
    inference : InferenceConfig, optional
        Tiling, device and threads.
    instances : InstanceConfig, optional
        Thresholds and minimum size; the checkpoint's card by default (for
        3D objects in a Z-stack, with seeds at 0.5 at least and seeds of
        touching nuclei split: `napari_unet_tuner.inference.stack.run_instances`).
    normalization : NormalizationConfig, optional
        Overrides the checkpoint's normalization.
    return_probabilities : bool
        Also return the blended probabilities (float16).
    predictor : Predictor, optional
        Run this instead of the checkpoint's model (e.g. a model being trained).

    Raises
    ------
    InputError
        If the image's axes, channels or values cannot be segmented.
    CheckpointError
        If the checkpoint cannot be loaded.
    """
    ckpt, axes, inference = resolve_run(image, checkpoint, axes, inference)
    cfg = ckpt.model_config
    normalization = normalization or ckpt.card.normalization_config
    shape = tuple(int(s) for s in image.shape)
    reader = ImageReader(
        image,
        axes or infer_axes(shape, cfg.spatial_dims, cfg.in_channels),
        cfg.spatial_dims,
        cfg.in_channels,
        normalization,
    )
    in_3d = inference.stack == "3d" and cfg.spatial_dims == 2 and "Z" in reader.batch_axes
    instances = run_instances(instances, ckpt.card.instance_config, in_3d)
    device = select_device(inference.device)
    runtime = None
    if predictor is None:
        with cpu_threads(inference.num_threads):
            predictor, runtime = build_predictor(
                ckpt.build_model(device),
                device,
                inference.precision,
                inference.runtime,
                tile_shape=inference.tile_shape or DEFAULT_TILE_SHAPE[cfg.spatial_dims],
                batch_size=inference.batch_size,
                run_pixels=math.prod(shape) * (3 if in_3d else 1) / max(cfg.in_channels, 1),
                num_threads=inference.num_threads,
            )
        logger.info("%s", runtime.describe())
    with cpu_threads(inference.num_threads):
        size = choose_object_size(reader, predictor, ckpt, inference, instances)
    scale = inference.scale if size is None else size.scale
    scaled = Rescaled(reader, scale)
    collector = (
        ObjectCollector(cfg.output_kind, instances, reader.label_axes)
        if inference.object_table
        else None
    )
    tile_shape = fit_tile_shape(
        scaled.spatial_shape,
        inference.tile_shape or DEFAULT_TILE_SHAPE[cfg.spatial_dims],
        cfg.size_multiple,
        inference.overlap,
    )

    if in_3d:
        t0 = time.perf_counter()
        z_step = None
        scale = stack_scale(size, ckpt.card.object_diameter, scale)
        if inference.anisotropy is None:
            with cpu_threads(inference.num_threads):
                z_step = estimate_z_step(
                    reader, first_stack(reader), predictor, cfg, instances, scale
                )
            inference = replace(inference, anisotropy=z_step.anisotropy or 1.0)

        def progress(stage, volume, volumes, done, total, view=None) -> SegmentationProgress:
            return SegmentationProgress(
                stage, volume, volumes, done, total, time.perf_counter() - t0, view
            )

        with cpu_threads(inference.num_threads):
            stack_labels, stack_probabilities = yield from iter_segment_stack(
                reader,
                predictor,
                cfg,
                inference,
                instances,
                tuple(inference.tile_shape or DEFAULT_TILE_SHAPE[2]),
                return_probabilities,
                progress,
                collector,
                image,
                scale,
                view_diameter(size, ckpt.card.object_diameter, scale),
            )
        result = _result(reader, stack_labels, stack_probabilities, scale, size, collector)
        return replace(result, anisotropy=inference.anisotropy, z_step=z_step, runtime=runtime)
    label_shape = tuple(reader.shape[a] for a in reader.label_axes)
    labels = np.zeros(label_shape, np.int32)
    probabilities = (
        np.zeros((cfg.out_channels, *label_shape), np.float16) if return_probabilities else None
    )
    planes = math.prod(reader.batch_shape)
    tiles_per_plane = math.prod(
        len(tile_starts(s, t, int(round(t * inference.overlap))))
        for s, t in zip(scaled.spatial_shape, tile_shape, strict=True)
    )
    total = planes * tiles_per_plane
    t0 = time.perf_counter()
    next_label = 0
    with cpu_threads(inference.num_threads):
        for plane, batch_index in enumerate(reader.batch_indices()):
            where = reader.label_index(batch_index)
            tiles = iter_predict_tiled(
                scaled.plane_reader(batch_index),
                scaled.spatial_shape,
                predictor,
                cfg.out_channels,
                tile_shape,
                inference.overlap,
                inference.batch_size,
            )
            prob = yield from map_progress(
                tiles,
                lambda step, plane=plane: SegmentationProgress(
                    "predict",
                    plane,
                    planes,
                    plane * tiles_per_plane + step.done,
                    total,
                    time.perf_counter() - t0,
                ),
            )
            yield SegmentationProgress(
                "instances",
                plane,
                planes,
                (plane + 1) * tiles_per_plane,
                total,
                time.perf_counter() - t0,
            )
            prob = scaled.restore(prob)
            # Written straight into the output where it is contiguous (a plane of
            # a stack usually is): no second label array on huge images.
            target = reader.to_label_order(labels[where], inverse=True)
            in_place = target.flags.c_contiguous
            plane_labels = probabilities_to_labels(
                prob, cfg.output_kind, instances, out=target if in_place else None
            )
            count = int(plane_labels.max(initial=0))
            # Offsetting keeps labels unique over a time series or a stack of planes.
            if next_label:
                np.add(plane_labels, next_label, out=plane_labels, where=plane_labels > 0)
            next_label += count
            if collector is not None:
                position = dict(zip(reader.batch_axes, batch_index, strict=True))
                raw = raw_part(image, reader.axes, position, reader.spatial_axes)
                collector.add(plane_labels, prob, reader.spatial_axes, position, raw)
            if not in_place:
                labels[where] = reader.to_label_order(plane_labels)
            if probabilities is not None:
                probabilities[(slice(None), *where)] = reader.to_label_order(prob, channels=True)
            del prob, plane_labels
    return replace(_result(reader, labels, probabilities, scale, size, collector), runtime=runtime)


def _result(reader, labels, probabilities, scale, size, collector) -> SegmentationResult:
    """Return the `SegmentationResult`, with the object table when ``collector`` gathered one."""
    if collector is None:
        return SegmentationResult(labels, reader.label_axes, probabilities, scale, size)
    return SegmentationResult(
        labels,
        reader.label_axes,
        probabilities,
        scale,
        size,
        collector.objects(),
        collector.possible_misses(),
    )


def segment(
    image: Any, checkpoint: Checkpoint | str | os.PathLike, **kwargs: Any
) -> SegmentationResult:
    """Segment an image and return its labels; see `iter_segment` for the parameters.

    Examples
    --------
    >>> from napari_unet_tuner import segment
    >>> result = segment(image, "nuclei.safetensors")  # doctest: +SKIP
    >>> result.labels.max()  # number of nuclei  # doctest: +SKIP
    """
    return run_to_completion(iter_segment(image, checkpoint, **kwargs))
