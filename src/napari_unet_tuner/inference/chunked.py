"""Segmentation of images larger than memory, chunk by chunk, on dask.

A run has three stages:

1. **segment** (one dask task per chunk, the expensive part): predict the
   chunk plus a halo of `WATERSHED_HALO` pixels on the *whole image's* tile
   grid (`predict_region`, so overlapping chunks see identical
   probabilities), label the seeds in that grown region and grow them, and
   write the chunk's labels to the output with provisional ids
   (``PROVISIONAL + local id``). The chunk's seed labels in the regions it
   shares with each neighbour, its object count and object sizes go to a
   small file in the run's work folder; that file, renamed into place after
   the labels are written, marks the chunk done.
2. **stitch** (on the caller's machine, seconds): a seed pixel that two
   chunks share carries one local id in each; these pairs are the edges of a
   graph whose connected components are the objects of the whole image
   (exactly the seeds' connected components, since chunks overlap). Sizes
   are summed per object, objects under ``min_size`` dropped, and the rest
   numbered 1..n.
3. **relabel** (one task per chunk): provisional ids become final ones.
   Final ids are below `PROVISIONAL`, so relabelling a chunk twice changes
   nothing: a chunk interrupted mid-way is simply done again.

A 2D model's Z-stacks segmented as 3D objects (``InferenceConfig.stack``)
first go through a **predict** stage: the model runs on the XY, XZ and YZ
planes band by band (`napari_unet_tuner.inference.stack_chunked`), and the
segment stage reads their mean probabilities instead of predicting.

The result equals `probabilities_to_labels` on the whole image with
``block_shape`` set to the chunk shape, up to the numbering of the objects,
with one exception: with ``InstanceConfig.split_solidity``, a seed that
reaches into a neighbouring chunk's overlap is seen cut there, so the parts
one chunk splits it into are joined again when the chunks are stitched
(such objects, a chunk's width in nuclei apart, stay whole).
Interrupted runs resume: finished chunks are skipped, and zarr writes each
chunk file atomically, so no chunk of the result is ever half-written. The
output is marked complete (``attrs["napari_unet_tuner"]["complete"]``) only
at the end, when the work folder is removed.
"""

from __future__ import annotations

import logging
import os
import shutil
import time
from collections.abc import Generator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from napari_unet_tuner.config import (
    ChunkedConfig,
    InferenceConfig,
    InstanceConfig,
    NormalizationConfig,
    resolve_stack,
)
from napari_unet_tuner.errors import InputError
from napari_unet_tuner.inference.chunk_tasks import (
    RunSpec,
    changed_input,
    neighbours,
    plan_chunks,
    predict_view_band,
    relabel_chunk,
    segment_chunk,
    shared_region,
    stitch,
)
from napari_unet_tuner.inference.chunked_output import (
    ATTRS_KEY,
    WORK_DIR,
    fingerprint,
    prepare_output,
)
from napari_unet_tuner.inference.dask_run import dask_client, run_tasks
from napari_unet_tuner.inference.device import cpu_threads, select_device
from napari_unet_tuner.inference.image import ImageReader, infer_axes
from napari_unet_tuner.inference.object_size import choose_object_size
from napari_unet_tuner.inference.pipeline import DEFAULT_TILE_SHAPE, as_checkpoint, make_predictor
from napari_unet_tuner.inference.stack_chunked import StackViews, first_plane
from napari_unet_tuner.inference.tiling import fit_tile_shape
from napari_unet_tuner.io import create_labels_zarr, open_labels_zarr
from napari_unet_tuner.model.checkpoint import Checkpoint
from napari_unet_tuner.outputs import OutputLock, check_output

log = logging.getLogger(__name__)

DEFAULT_CHUNK_SHAPE = {2: (2048, 2048), 3: (64, 512, 512)}


@dataclass(frozen=True)
class ChunkProgress:
    """Progress of a chunked run, yielded after every finished chunk.

    Attributes
    ----------
    stage : {"predict", "segment", "stitch", "relabel"}
        See the module docstring; ``"predict"`` runs first when Z-stacks
        become 3D objects under a 2D model
        (`napari_unet_tuner.inference.stack_chunked`).
    done, total : int
        Chunks (bands of planes, for ``"predict"``) of this stage finished
        (including those a resumed run found done), and in all.
    elapsed : float
        Seconds since the run started.
    region : tuple or None
        Index into the label array of the chunk just written, to refresh a view.
    """

    stage: Literal["predict", "segment", "stitch", "relabel"]
    done: int
    total: int
    elapsed: float
    region: tuple[Any, ...] | None = None

    @property
    def fraction(self) -> float:
        """Share of this stage's chunks done, in [0, 1]."""
        return self.done / max(self.total, 1)


@dataclass(frozen=True)
class ChunkedResult:
    """What a chunked run produced.

    Attributes
    ----------
    path : pathlib.Path
        The ``.zarr`` output; open its labels with `open_labels_zarr`.
    axes : str
        Axes of the labels.
    shape : tuple of int
        Shape of the labels.
    objects : int
        Number of objects; labels are 1..objects over the whole array.
    chunks : int
        Chunks in the run.
    resumed : int
        Chunks an earlier, interrupted run had already segmented.
    seconds : float
        Wall time of this run.
    size_note : str
        Empty, or why the labels may differ from a segmentation in memory:
        the image's objects are far from the model's size, which in memory
        would be resized and here is not (`unresized_size_note`).
    """

    path: Path
    axes: str
    shape: tuple[int, ...]
    objects: int
    chunks: int
    resumed: int
    seconds: float
    size_note: str = ""


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


def iter_segment_to_zarr(
    image: Any,
    output: str | os.PathLike,
    checkpoint: Checkpoint | str | os.PathLike,
    *,
    axes: str | None = None,
    inference: InferenceConfig | None = None,
    instances: InstanceConfig | None = None,
    normalization: NormalizationConfig | None = None,
    chunked: ChunkedConfig | None = None,
    ome: bool | None = None,
    scale: tuple[float, ...] | None = None,
    overwrite: bool = False,
) -> Generator[ChunkProgress, None, ChunkedResult]:
    """Segment an image of any size into a zarr label array, chunk by chunk on dask.

    Yields `ChunkProgress` after every chunk and returns a `ChunkedResult`
    (the generator's ``StopIteration.value``; `segment_to_zarr` unwraps it).
    If ``output`` holds an interrupted run of the same image, model and
    settings, the run resumes: finished chunks are not redone.

    Parameters
    ----------
    image : array-like
        numpy, dask, zarr or a `~napari_unet_tuner.io.FileImage`; never
        loaded whole. On a ``dask.distributed`` cluster it must pickle
        cheaply (a `FileImage` or a zarr array, not a numpy array).
    output : path-like
        The ``.zarr`` folder to write.
    checkpoint : Checkpoint or path-like
        The model.
    axes : str, optional
        Axes of ``image`` (letters from ``TZCYX``); inferred if omitted.
    inference : InferenceConfig, optional
        Tiling and device (each worker picks its own with ``"auto"``).
    instances : InstanceConfig, optional
        Thresholds and minimum size; the checkpoint's card by default.
    normalization : NormalizationConfig, optional
        Overrides the checkpoint's normalization; its statistics are computed
        once for the whole image (per time point) before the chunks run.
    chunked : ChunkedConfig, optional
        Chunk shape and where to run (threads, LocalCluster, or a scheduler).
    ome : bool, optional
        Write an OME-Zarr image instead of a bare zarr array; by default when
        ``image`` is an OME-Zarr `~napari_unet_tuner.io.FileImage`.
    scale : tuple of float, optional
        Pixel size per label axis for the OME-Zarr metadata; by default the
        input's OME-Zarr pixel size without its C axis.
    overwrite : bool
        Replace an existing ``output`` instead of refusing (or resuming).

    Raises
    ------
    FileExistsError
        If ``output`` exists and is not an interrupted run of the same job.
    InputError, CheckpointError
        As `iter_segment`; also `InputError` for ``inference.scale != 1``.
    """
    t0 = time.perf_counter()
    ckpt = as_checkpoint(checkpoint)
    cfg = ckpt.model_config
    axes = axes or getattr(image, "axes", None)
    inference = resolve_stack(
        inference or InferenceConfig(), axes, getattr(image, "anisotropy", None)
    )
    check_chunked_inference(inference)
    chunked = chunked or ChunkedConfig()
    instances = instances or ckpt.card.instance_config
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
        tile_shape = tuple(inference.tile_shape or DEFAULT_TILE_SHAPE[2])
        views = StackViews.plan(reader, cfg, inference, tile_shape)
    else:
        tile_shape = fit_tile_shape(
            reader.spatial_shape,
            inference.tile_shape or DEFAULT_TILE_SHAPE[cfg.spatial_dims],
            cfg.size_multiple,
            inference.overlap,
        )
    chunks = plan_chunks(reader, chunk_shape)
    size_note = (
        "" if planar is not None else unresized_size_note(reader, ckpt, inference, instances)
    )
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
    threads = chunked.threads_per_worker
    spec = RunSpec(
        source=image,
        axes=reader.axes,
        checkpoint=ckpt,
        inference=inference,
        instances=instances,
        normalization=normalization,
        statistics=statistics,
        tile_shape=tile_shape,
        threads=threads,
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

    def create() -> None:
        array = create_labels_zarr(
            path, label_shape, zarr_chunks, label_axes, ome=ome, scale=scale
        )
        array.attrs[ATTRS_KEY] = {"complete": False}

    source_path = getattr(image, "path", None)
    if source_path is not None:
        check_output(path, [source_path])
    # The file itself, however its path was spelled (a relative path resumes too).
    source_name = str(Path(source_path).resolve()) if source_path else type(image).__name__
    # One writer at a time: a second run on the same output would mix its
    # provisional labels into the first one's result.
    with OutputLock(path):
        work_dir = prepare_output(
            path,
            fingerprint(spec, source_name, sampled.sample_digest(), chunk_shape),
            create,
            overwrite,
        )
        segmented = {int(p.stem) for p in (work_dir / "segmented").glob("*.npz")}
        relabelled = {int(p.name) for p in (work_dir / "relabelled").glob("[0-9]*")}
        resumed = len(segmented)
        finished_bands = views.done(work_dir) if views is not None else set()
        changed = changed_input(
            spec,
            [c for c in chunks if c.index in segmented],
            [b for b in views.bands(reader) if b.index in finished_bands] if views else [],
        )
        if changed is not None:
            raise InputError(
                f"{path} is an interrupted run of an input that has changed since ({changed} "
                "differs); run again with --overwrite (overwrite=True) to start over"
            )
        if resumed:
            log.info("%s: resuming, %d of %d chunks already segmented", path, resumed, len(chunks))
        by_position = {(c.batch_index, c.grid): c for c in chunks}
        local_threads = chunked.threads_per_worker if chunked.workers else (os.cpu_count() or 1)
        # On the threaded scheduler the chunks share this process's torch thread
        # pool: one torch thread per chunk, restored for the caller afterwards.
        with dask_client(chunked) as client, cpu_threads(threads if client is None else None):
            workers = local_threads if client is None else max(1, len(client.nthreads()))
            jobs = [
                (
                    chunk,
                    [
                        (offset, shared_region(chunk.grown, other.grown))
                        for offset, other in neighbours(chunk, by_position)
                    ],
                )
                for chunk in chunks
                if chunk.index not in segmented
            ]
            if views is not None:
                yield from _predict_views(spec, reader, client, workers, t0)
            done = resumed
            yield ChunkProgress("segment", done, len(chunks), time.perf_counter() - t0)
            for chunk in run_tasks(client, segment_chunk, spec, jobs, workers):
                done += 1
                region = reader.label_region(chunk.batch_index, chunk.core)
                yield ChunkProgress("segment", done, len(chunks), time.perf_counter() - t0, region)
            yield ChunkProgress("stitch", 0, 1, time.perf_counter() - t0)
            luts = stitch(work_dir, chunks, instances.min_size)
            yield ChunkProgress("stitch", 1, 1, time.perf_counter() - t0)
            jobs = [(c, luts[c.index]) for c in chunks if c.index not in relabelled]
            done = len(chunks) - len(jobs)
            for chunk in run_tasks(client, relabel_chunk, spec, jobs, workers):
                done += 1
                region = reader.label_region(chunk.batch_index, chunk.core)
                yield ChunkProgress("relabel", done, len(chunks), time.perf_counter() - t0, region)
        objects = int(max((int(lut.max(initial=0)) for lut in luts), default=0))
        labels = open_labels_zarr(path, mode="r+")
        labels.attrs[ATTRS_KEY] = {
            "complete": True,
            "objects": objects,
            "checkpoint": {"name": ckpt.card.name, "sha256": ckpt.sha256},
            "instances": instances.to_dict(),
        }
        shutil.rmtree(work_dir)
        return ChunkedResult(
            path=path,
            axes=label_axes,
            shape=label_shape,
            objects=objects,
            chunks=len(chunks),
            resumed=resumed,
            seconds=time.perf_counter() - t0,
            size_note=size_note,
        )


def _predict_views(
    spec: RunSpec, reader: ImageReader, client: Any, workers: int, t0: float
) -> Generator[ChunkProgress, None, None]:
    """Run the views stage: every band not done yet, yielding progress per band."""
    views = spec.views
    views.create(spec.work_dir)
    bands = views.bands(reader)
    finished = views.done(spec.work_dir)
    jobs = [(band, None) for band in bands if band.index not in finished]
    done = len(bands) - len(jobs)
    yield ChunkProgress("predict", done, len(bands), time.perf_counter() - t0)
    for _ in run_tasks(client, predict_view_band, spec, jobs, workers):
        done += 1
        yield ChunkProgress("predict", done, len(bands), time.perf_counter() - t0)


def segment_to_zarr(
    image: Any, output: str | os.PathLike, checkpoint: Any, **kwargs: Any
) -> ChunkedResult:
    """Run `iter_segment_to_zarr` to the end; see there for the parameters.

    Examples
    --------
    >>> from napari_unet_tuner import ChunkedConfig, FileImage, segment_to_zarr
    >>> image = FileImage("slide.zarr")  # doctest: +SKIP
    >>> segment_to_zarr(image, "slide_labels.zarr", "nuclei.safetensors",
    ...                 chunked=ChunkedConfig(workers=4))  # doctest: +SKIP
    """
    from napari_unet_tuner._generators import run_to_completion

    return run_to_completion(iter_segment_to_zarr(image, output, checkpoint, **kwargs))
