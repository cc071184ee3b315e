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
with one exception: seeds split by ``InstanceConfig.split_solidity`` or
``core_share`` (3D objects) are split by each chunk on its own (for
``core_share``, against the chunk's own median seed). A seed that reaches
into a neighbouring chunk's overlap is seen cut there, so the parts one
chunk splits it into are joined again when the chunks are stitched (such
objects, a chunk's width in nuclei apart, stay whole).
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
)
from napari_unet_tuner.errors import InputError
from napari_unet_tuner.inference.chunk_objects import table_paths, write_tables
from napari_unet_tuner.inference.chunk_tasks import (
    RunSpec,
    changed_input,
    neighbours,
    predict_view_band,
    relabel_chunk,
    segment_chunk,
    shared_region,
    stitch,
)
from napari_unet_tuner.inference.chunked_output import (
    ATTRS_KEY,
    prepare_output,
)
from napari_unet_tuner.inference.chunked_plan import ChunkedPlan, plan_chunked_run
from napari_unet_tuner.inference.dask_run import dask_client, run_tasks
from napari_unet_tuner.inference.device import cpu_threads
from napari_unet_tuner.inference.image import ImageReader
from napari_unet_tuner.labels_files import open_labels_zarr
from napari_unet_tuner.model.checkpoint import Checkpoint
from napari_unet_tuner.outputs import OutputLock, check_outputs

log = logging.getLogger(__name__)


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
    tables : tuple of Path
        The object table and possible misses written beside the output
        (`table_paths`; `InferenceConfig.object_table`), or empty.
    size_note : str
        Empty, or why the labels may differ from a segmentation in memory:
        the image's objects are far from the model's size, which in memory
        would be resized and here is not
        (`napari_unet_tuner.inference.chunked_plan.unresized_size_note`).
    """

    path: Path
    axes: str
    shape: tuple[int, ...]
    objects: int
    chunks: int
    resumed: int
    seconds: float
    size_note: str = ""
    tables: tuple[Path, ...] = ()


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
    plan = plan_chunked_run(
        image,
        output,
        checkpoint,
        axes=axes,
        inference=inference,
        instances=instances,
        normalization=normalization,
        chunked=chunked,
        ome=ome,
        scale=scale,
    )
    chunked = chunked or ChunkedConfig()
    source_path = getattr(image, "path", None)
    tables = table_paths(plan.path) if plan.spec.inference.object_table else ()
    if source_path is not None:
        check_outputs([plan.path, *tables], [source_path])
    taken = [p for p in tables if p.exists()]
    if taken and not overwrite and not plan.path.exists():
        raise FileExistsError(
            f"{taken[0]} exists; choose another output or allow "
            "overwriting (--overwrite, overwrite=True)"
        )
    # One writer at a time: a second run on the same output would mix its
    # provisional labels into the first one's result.
    with OutputLock(plan.path):
        work_dir = prepare_output(plan.path, plan.fingerprint(), plan.create_output, overwrite)
        segmented = {int(p.stem) for p in (work_dir / "segmented").glob("*.npz")}
        relabelled = {int(p.name) for p in (work_dir / "relabelled").glob("[0-9]*")}
        _check_resumable(plan, work_dir, segmented)
        if segmented:
            log.info(
                "%s: resuming, %d of %d chunks already segmented",
                plan.path,
                len(segmented),
                len(plan.chunks),
            )
        local_threads = chunked.threads_per_worker if chunked.workers else (os.cpu_count() or 1)
        # On the threaded scheduler the chunks share this process's torch thread
        # pool: one torch thread per chunk, restored for the caller afterwards.
        threads = plan.spec.threads
        with dask_client(chunked) as client, cpu_threads(threads if client is None else None):
            workers = local_threads if client is None else max(1, len(client.nthreads()))
            if plan.views is not None:
                yield from _predict_views(plan.spec, plan.reader, client, workers, t0)
            yield from _segment_stage(plan, client, workers, segmented, t0)
            yield ChunkProgress("stitch", 0, 1, time.perf_counter() - t0)
            luts = stitch(
                work_dir, plan.chunks, plan.spec.instances.min_size, plan.views is not None
            )
            yield ChunkProgress("stitch", 1, 1, time.perf_counter() - t0)
            yield from _relabel_stage(plan, client, workers, luts, relabelled, t0)
        return _finish(plan, work_dir, luts, len(segmented), t0)


def _check_resumable(plan: ChunkedPlan, work_dir: Path, segmented: set[int]) -> None:
    """Refuse to resume onto an input changed since the finished parts were done."""
    finished_bands = plan.views.done(work_dir) if plan.views is not None else set()
    bands = plan.views.bands(plan.reader) if plan.views is not None else []
    changed = changed_input(
        plan.spec,
        [c for c in plan.chunks if c.index in segmented],
        [b for b in bands if b.index in finished_bands],
    )
    if changed is not None:
        raise InputError(
            f"{plan.path} is an interrupted run of an input that has changed since ({changed} "
            "differs); run again with --overwrite (overwrite=True) to start over"
        )


def _segment_stage(
    plan: ChunkedPlan, client: Any, workers: int, segmented: set[int], t0: float
) -> Generator[ChunkProgress, None, None]:
    """Stage 1: every chunk not segmented yet, yielding progress per chunk."""
    by_position = {(c.batch_index, c.grid): c for c in plan.chunks}
    jobs = [
        (
            chunk,
            [
                (offset, shared_region(chunk.grown, other.grown))
                for offset, other in neighbours(chunk, by_position)
            ],
        )
        for chunk in plan.chunks
        if chunk.index not in segmented
    ]
    done, total = len(segmented), len(plan.chunks)
    yield ChunkProgress("segment", done, total, time.perf_counter() - t0)
    for chunk in run_tasks(client, segment_chunk, plan.spec, jobs, workers):
        done += 1
        region = plan.reader.label_region(chunk.batch_index, chunk.core)
        yield ChunkProgress("segment", done, total, time.perf_counter() - t0, region)


def _relabel_stage(
    plan: ChunkedPlan,
    client: Any,
    workers: int,
    luts: list,
    relabelled: set[int],
    t0: float,
) -> Generator[ChunkProgress, None, None]:
    """Stage 3: provisional ids to final ones in every chunk not relabelled yet."""
    jobs = [(c, luts[c.index]) for c in plan.chunks if c.index not in relabelled]
    done, total = len(plan.chunks) - len(jobs), len(plan.chunks)
    for chunk in run_tasks(client, relabel_chunk, plan.spec, jobs, workers):
        done += 1
        region = plan.reader.label_region(chunk.batch_index, chunk.core)
        yield ChunkProgress("relabel", done, total, time.perf_counter() - t0, region)


def _finish(
    plan: ChunkedPlan, work_dir: Path, luts: list, resumed: int, t0: float
) -> ChunkedResult:
    """Mark the output complete, remove the work folder, and say what was made."""
    objects = int(max((int(lut.max(initial=0)) for lut in luts), default=0))
    tables = ()
    if plan.spec.inference.object_table:
        tables = write_tables(work_dir, plan.chunks, luts, plan.reader, plan.path)
    labels = open_labels_zarr(plan.path, mode="r+")
    ckpt = plan.spec.checkpoint
    labels.attrs[ATTRS_KEY] = {
        "complete": True,
        "objects": objects,
        "checkpoint": {"name": ckpt.card.name, "sha256": ckpt.sha256},
        "instances": plan.spec.instances.to_dict(),
    }
    shutil.rmtree(work_dir)
    return ChunkedResult(
        path=plan.path,
        axes=plan.label_axes,
        shape=plan.label_shape,
        objects=objects,
        chunks=len(plan.chunks),
        resumed=resumed,
        seconds=time.perf_counter() - t0,
        size_note=plan.size_note,
        tables=tables,
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
