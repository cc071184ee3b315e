"""Planning a chunked run: what it reads, how it is cut, and what it writes.

`plan_chunked_run` settles everything before a chunk runs (the model and
settings, the reader, the chunks and their statistics, the views stage of
3D objects from a 2D model, the output's shape and chunking), so that
`napari_unet_tuner.inference.chunked` only runs the stages.
"""

from __future__ import annotations

import logging
import math
import os
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from napari_unet_tuner.config import (
    ChunkedConfig,
    InferenceConfig,
    InstanceConfig,
    NormalizationConfig,
)
from napari_unet_tuner.errors import InputError
from napari_unet_tuner.inference.chunk_tasks import Chunk, RunSpec, plan_chunks
from napari_unet_tuner.inference.chunked_output import ATTRS_KEY, WORK_DIR, fingerprint
from napari_unet_tuner.inference.device import cpu_threads, select_device
from napari_unet_tuner.inference.image import ImageReader, infer_axes
from napari_unet_tuner.inference.object_size import choose_object_size
from napari_unet_tuner.inference.pipeline import DEFAULT_TILE_SHAPE, resolve_run
from napari_unet_tuner.inference.predictor import build_predictor, make_predictor
from napari_unet_tuner.inference.stack import run_instances
from napari_unet_tuner.inference.stack_chunked import StackViews, first_plane
from napari_unet_tuner.inference.tiling import fit_tile_shape
from napari_unet_tuner.inference.z_step import estimate_z_step, first_stack, z_step_note
from napari_unet_tuner.labels_files import create_labels_zarr
from napari_unet_tuner.model.checkpoint import Checkpoint

log = logging.getLogger(__name__)

DEFAULT_CHUNK_SHAPE = {2: (2048, 2048), 3: (64, 512, 512)}


@dataclass(frozen=True)
class ChunkedPlan:
    """Everything a chunked run decided before its first chunk.

    Attributes
    ----------
    path : pathlib.Path
        The zarr output.
    spec : RunSpec
        What every chunk task gets.
    reader : ImageReader
        The image as the chunks read it (``ZYX`` volumes for 3D objects).
    sampled : ImageReader
        The reader whose statistics normalize every chunk (the planes' for
        3D objects from a 2D model); its sample digest names the input.
    chunks : list of Chunk
        Every chunk of every plane or volume.
    views : StackViews or None
        The predict stage of 3D objects from a 2D model.
    label_axes, label_shape, zarr_chunks : str, tuple, tuple
        The labels' axes, shape and zarr chunking.
    ome : bool
        Write an OME-Zarr image.
    scale : tuple of float or None
        Pixel size per label axis, for OME-Zarr.
    chunk_shape : tuple of int
        Spatial chunk shape.
    source_name : str
        The input, as the manifest names it.
    size_note : str
        `unresized_size_note`, or empty.
    """

    path: Path
    spec: RunSpec
    reader: ImageReader
    sampled: ImageReader
    chunks: list[Chunk]
    views: StackViews | None
    label_axes: str
    label_shape: tuple[int, ...]
    zarr_chunks: tuple[int, ...]
    ome: bool
    scale: tuple[float, ...] | None
    chunk_shape: tuple[int, ...]
    source_name: str
    size_note: str

    def fingerprint(self) -> dict[str, Any]:
        """Return what makes an interrupted run the same job (`chunked_output.fingerprint`)."""
        digest = self.sampled.sample_digest()
        return fingerprint(self.spec, self.source_name, digest, self.chunk_shape)

    def create_output(self) -> None:
        """Create the empty labels array, marked incomplete."""
        array = create_labels_zarr(
            self.path,
            self.label_shape,
            self.zarr_chunks,
            self.label_axes,
            ome=self.ome,
            scale=self.scale,
        )
        array.attrs[ATTRS_KEY] = {"complete": False}


def plan_chunked_run(
    image: Any,
    output: str | os.PathLike,
    checkpoint: Checkpoint | str | os.PathLike,
    *,
    axes: str | None,
    inference: InferenceConfig | None,
    instances: InstanceConfig | None,
    normalization: NormalizationConfig | None,
    chunked: ChunkedConfig | None,
    ome: bool | None,
    scale: tuple[float, ...] | None,
) -> ChunkedPlan:
    """Settle a chunked run (see `iter_segment_to_zarr` for the parameters).

    Raises
    ------
    InputError
        If the settings ask for what chunked runs cannot do, or the chunk
        shape does not fit the image.
    """
    ckpt, axes, inference = resolve_run(image, checkpoint, axes, inference)
    cfg = ckpt.model_config
    check_chunked_inference(inference)
    chunked = chunked or ChunkedConfig()
    normalization = normalization or ckpt.card.normalization_config
    shape = tuple(int(s) for s in image.shape)
    axes = axes or infer_axes(shape, cfg.spatial_dims, cfg.in_channels)
    reader = ImageReader(image, axes, cfg.spatial_dims, cfg.in_channels, normalization)
    # A 2D model's Z-stacks as 3D objects: chunks are ZYX volumes whose
    # probabilities the views stage computes first.
    planar = None
    if inference.stack == "3d" and cfg.spatial_dims == 2 and "Z" in reader.batch_axes:
        planar = reader
        reader = ImageReader(image, planar.axes, 3, cfg.in_channels, normalization)
    # As in memory (`iter_segment`).
    instances = run_instances(instances, ckpt.card.instance_config, planar is not None)
    spatial_dims = len(reader.spatial_axes)
    if ome is None:
        ome = bool(getattr(image, "ome", False))
    if scale is None and getattr(image, "scale", None) is not None:
        scale = tuple(s for s, a in zip(image.scale, reader.axes, strict=True) if a != "C")
    chunk_shape = tuple(int(c) for c in (chunked.chunk_shape or DEFAULT_CHUNK_SHAPE[spatial_dims]))
    if len(chunk_shape) != spatial_dims:
        raise InputError(
            f"chunk_shape {chunk_shape} has {len(chunk_shape)} axes; this run works on "
            f"{spatial_dims} spatial axes ({reader.spatial_axes})"
        )
    views = None
    if planar is not None:
        if inference.anisotropy is None:
            inference = replace(
                inference, anisotropy=measured_z_step(planar, ckpt, inference, instances, output)
            )
        tile_shape = tuple(inference.tile_shape or DEFAULT_TILE_SHAPE[2])
        views = StackViews.plan(reader, cfg, inference, tile_shape, ckpt.card.object_diameter)
    else:
        tile_shape = fit_tile_shape(
            reader.spatial_shape,
            inference.tile_shape or DEFAULT_TILE_SHAPE[cfg.spatial_dims],
            cfg.size_multiple,
            inference.overlap,
        )
    chunks = plan_chunks(reader, chunk_shape)
    size_note = ""
    if planar is None:
        size_note = unresized_size_note(reader, ckpt, inference, instances)
    if size_note:
        log.warning("%s: %s", output, size_note)
    # One statistic per time point, for every chunk alike; for 3D objects from
    # a 2D model, the same as its planes get in memory.
    sampled = planar or reader
    firsts = {reader.time_point(c.batch_index): c.batch_index for c in chunks}
    statistics = {
        t: sampled.time_point_statistics(first_plane(b, reader, planar)) for t, b in firsts.items()
    }
    path = Path(output)
    run_pixels = math.prod(image.shape) * (3 if views is not None else 1)
    inference = resolved_runtime(
        ckpt, inference, tile_shape, chunked.threads_per_worker, run_pixels, output
    )
    spec = RunSpec(
        source=image,
        axes=reader.axes,
        checkpoint=ckpt,
        inference=inference,
        instances=instances,
        normalization=normalization,
        statistics=statistics,
        tile_shape=tile_shape,
        threads=chunked.threads_per_worker,
        output=str(path),
        work_dir=str(path / WORK_DIR),
        views=views,
    )
    label_axes = reader.label_axes
    label_shape = tuple(reader.shape[a] for a in label_axes)
    spatial_chunk = dict(zip(reader.spatial_axes, chunk_shape, strict=True))
    zarr_chunks = tuple(
        min(spatial_chunk.get(a, 1), s) for a, s in zip(label_axes, label_shape, strict=True)
    )
    source_path = getattr(image, "path", None)
    # The file itself, however its path was spelled (a relative path resumes too).
    source_name = str(Path(source_path).resolve()) if source_path else type(image).__name__
    return ChunkedPlan(
        path=path,
        spec=spec,
        reader=reader,
        sampled=sampled,
        chunks=chunks,
        views=views,
        label_axes=label_axes,
        label_shape=label_shape,
        zarr_chunks=zarr_chunks,
        ome=ome,
        scale=scale,
        chunk_shape=chunk_shape,
        source_name=source_name,
        size_note=size_note,
    )


def resolved_runtime(
    checkpoint: Checkpoint,
    inference: InferenceConfig,
    tile_shape: tuple[int, ...],
    threads: int,
    run_pixels: float,
    output: str | os.PathLike,
) -> InferenceConfig:
    """``inference`` with the runtime and precision every worker will use, chosen here once.

    `build_predictor` probes (or recalls) the fastest on this machine with
    each worker's threads; the workers then build that one, so concurrent
    chunks never time each other. GPU runs are left as they are.
    """
    device = select_device(inference.device)
    if device.type != "cpu":
        return inference
    with cpu_threads(threads):
        _, choice = build_predictor(
            checkpoint.build_model(device),
            device,
            inference.precision,
            inference.runtime,
            tile_shape=tile_shape,
            batch_size=inference.batch_size,
            run_pixels=run_pixels,
            num_threads=threads,
        )
    log.info("%s: %s", output, choice.describe())
    return replace(inference, runtime=choice.runtime, precision=choice.precision)


def measured_z_step(
    planar: ImageReader,
    checkpoint: Checkpoint,
    inference: InferenceConfig,
    instances: InstanceConfig,
    output: str | os.PathLike,
) -> float:
    """Measure the Z step of a stack whose file does not say it (`estimate_z_step`); log it.

    Returns 1 when it cannot be told. Seconds for any stack: one central column.
    """
    device = select_device(inference.device)
    predictor = make_predictor(checkpoint.build_model(device), device, inference.precision)
    estimate = estimate_z_step(
        planar, first_stack(planar), predictor, checkpoint.model_config, instances
    )
    log.info("%s: %s", output, z_step_note(estimate))
    return estimate.anisotropy or 1.0


def unresized_size_note(
    reader: ImageReader,
    checkpoint: Checkpoint,
    inference: InferenceConfig,
    instances: InstanceConfig,
) -> str:
    """Say so when the automatic object size would resize this image in memory.

    Chunked runs work at scale 1 (resizing chunk by chunk is not built). The
    estimate reads one bounded central crop (`choose_object_size`), seconds
    for any image; an empty string when the size suits the model or is unknown.
    """
    if checkpoint.card.object_diameter is None or inference.diameter != "auto":
        return ""
    device = select_device(inference.device)
    predictor = make_predictor(checkpoint.build_model(device), device, inference.precision)
    size = choose_object_size(reader, predictor, checkpoint, inference, instances)
    if size is None or size.diameter is None or size.scale == 1.0:
        return ""
    return (
        f"objects here measure about {size.diameter:.0f} px across and the model segments "
        f"about {checkpoint.card.object_diameter:.0f} px best: segmented in memory (a .tif "
        f"output) the image would be resized x{size.scale:.2f}, but a zarr output is not "
        "resized (not built for chunked runs), so objects may be cut or merged; resize the "
        "image first, or segment it in memory"
    )


def check_chunked_inference(inference: InferenceConfig) -> None:
    """Raise `InputError` if ``inference`` asks for what chunked runs cannot do.

    Rescaling (a scale or a given object size): the automatic object size
    is not measured, chunks run at scale 1.
    """
    if inference.scale != 1.0 or inference.diameter not in ("auto", None):
        raise InputError(
            "resizing is not available for zarr output yet: set the object size to auto "
            "(InferenceConfig.diameter, --diameter) and the scale to 1 (--scale), segment "
            "in memory, or resize the image first"
        )
