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

import dataclasses
import functools
import io
import itertools
import json
import logging
import math
import os
import shutil
import time
from collections.abc import Callable, Generator, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch

from napari_unet_tuner.config import (
    ChunkedConfig,
    InferenceConfig,
    InstanceConfig,
    NormalizationConfig,
)
from napari_unet_tuner.errors import InputError, UnetTunerError
from napari_unet_tuner.inference.device import cpu_threads, select_device
from napari_unet_tuner.inference.image import ImageReader, infer_axes
from napari_unet_tuner.inference.instances import (
    WATERSHED_HALO,
    grow_markers,
    grow_region,
    seed_markers,
)
from napari_unet_tuner.inference.pipeline import (
    DEFAULT_TILE_SHAPE,
    as_checkpoint,
    make_predictor,
)
from napari_unet_tuner.inference.tiling import fit_tile_shape, predict_region
from napari_unet_tuner.io import (
    create_labels_zarr,
    open_labels_zarr,
    write_bytes_atomic,
    write_json_atomic,
)
from napari_unet_tuner.model.checkpoint import Checkpoint
from napari_unet_tuner.outputs import OutputLock, check_output

log = logging.getLogger(__name__)

DEFAULT_CHUNK_SHAPE = {2: (2048, 2048), 3: (64, 512, 512)}
PROVISIONAL = 1 << 30
"""Labels at or above this are a chunk's provisional ids (``PROVISIONAL + local``)."""
WORK_DIR = ".unet_tuner_run"
ATTRS_KEY = "napari_unet_tuner"


@dataclass(frozen=True)
class ChunkProgress:
    """Progress of a chunked run, yielded after every finished chunk.

    Attributes
    ----------
    stage : {"segment", "stitch", "relabel"}
        See the module docstring.
    done, total : int
        Chunks of this stage finished (including those a resumed run found
        done), and in all.
    elapsed : float
        Seconds since the run started.
    region : tuple or None
        Index into the label array of the chunk just written, to refresh a view.
    """

    stage: Literal["segment", "stitch", "relabel"]
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
    """

    path: Path
    axes: str
    shape: tuple[int, ...]
    objects: int
    chunks: int
    resumed: int
    seconds: float


@dataclass(frozen=True)
class _Chunk:
    index: int
    batch_index: tuple[int, ...]
    grid: tuple[int, ...]
    core: tuple[slice, ...]
    grown: tuple[slice, ...]


@dataclass(frozen=True)
class _RunSpec:
    """Everything a chunk task needs; shipped to the workers once per run."""

    source: Any
    axes: str
    checkpoint: Checkpoint
    inference: InferenceConfig
    instances: InstanceConfig
    normalization: NormalizationConfig
    statistics: dict[int, tuple[np.ndarray, np.ndarray]]
    tile_shape: tuple[int, ...]
    threads: int
    output: str
    work_dir: str

    def reader(self) -> ImageReader:
        cfg = self.checkpoint.model_config
        return ImageReader(
            self.source,
            self.axes,
            cfg.spatial_dims,
            cfg.in_channels,
            self.normalization,
            statistics=self.statistics,
        )


def _plan(reader: ImageReader, chunk_shape: tuple[int, ...]) -> list[_Chunk]:
    spatial = reader.spatial_shape
    grid_shape = [math.ceil(s / c) for s, c in zip(spatial, chunk_shape, strict=True)]
    chunks = []
    for batch_index in reader.batch_indices():
        for grid in np.ndindex(*grid_shape):
            core = tuple(
                slice(g * c, min((g + 1) * c, s))
                for g, c, s in zip(grid, chunk_shape, spatial, strict=True)
            )
            chunks.append(
                _Chunk(
                    len(chunks),
                    tuple(batch_index),
                    tuple(grid),
                    core,
                    grow_region(core, spatial, WATERSHED_HALO),
                )
            )
    return chunks


def _offsets(ndim: int) -> Iterator[tuple[int, ...]]:
    return (o for o in itertools.product((-1, 0, 1), repeat=ndim) if any(o))


def _key(offset: tuple[int, ...]) -> str:
    return "overlap_" + "_".join(str(o) for o in offset)


def _shared(a: tuple[slice, ...], b: tuple[slice, ...]) -> tuple[slice, ...] | None:
    """Intersection of two regions, None if empty."""
    out = tuple(
        slice(max(x.start, y.start), min(x.stop, y.stop)) for x, y in zip(a, b, strict=True)
    )
    return out if all(s.stop > s.start for s in out) else None


def _local(region: tuple[slice, ...], within: tuple[slice, ...]) -> tuple[slice, ...]:
    return tuple(
        slice(r.start - w.start, r.stop - w.start) for r, w in zip(region, within, strict=True)
    )


def _neighbours(chunk: _Chunk, by_position: dict) -> Iterator[tuple[tuple[int, ...], _Chunk]]:
    for offset in _offsets(len(chunk.grid)):
        grid = tuple(g + o for g, o in zip(chunk.grid, offset, strict=True))
        other = by_position.get((chunk.batch_index, grid))
        if other is not None:
            yield offset, other


def _segment_chunk(spec: _RunSpec, chunk: _Chunk, neighbours: list) -> int:
    """Stage 1 for one chunk; returns its number of local seeds."""
    if torch.get_num_threads() != spec.threads:
        torch.set_num_threads(spec.threads)
    reader = spec.reader()
    cfg = spec.checkpoint.model_config
    device = select_device(spec.inference.device)
    predictor = make_predictor(
        spec.checkpoint.build_model(device), device, spec.inference.mixed_precision
    )
    probabilities = predict_region(
        lambda spatial: reader.read(chunk.batch_index, spatial),
        reader.spatial_shape,
        chunk.grown,
        predictor,
        cfg.out_channels,
        spec.tile_shape,
        spec.inference.overlap,
        spec.inference.batch_size,
    )
    markers = seed_markers(probabilities, cfg.output_kind, spec.instances)
    grown = grow_markers(probabilities, markers, cfg.output_kind, spec.instances)
    del probabilities
    core = grown[_local(chunk.core, chunk.grown)]
    count = int(markers.max(initial=0))
    record: dict[str, np.ndarray] = {
        "count": np.array(count),
        "sizes": np.bincount(core.ravel(), minlength=count + 1),
    }
    for offset, shared in neighbours:
        record[_key(offset)] = markers[_local(shared, chunk.grown)]
    provisional = np.where(core > 0, core + PROVISIONAL, 0).astype(np.int32)
    output = open_labels_zarr(spec.output, mode="r+")
    output[reader.label_region(chunk.batch_index, chunk.core)] = reader.to_label_order(provisional)
    buffer = io.BytesIO()
    np.savez_compressed(buffer, **record)
    # Renamed into place after the labels are written: its presence means "done".
    write_bytes_atomic(Path(spec.work_dir) / "segmented" / f"{chunk.index}.npz", buffer.getvalue())
    return count


def _relabel_chunk(spec: _RunSpec, chunk: _Chunk, lut: np.ndarray) -> int:
    """Stage 3 for one chunk: provisional ids to final ones (idempotent)."""
    reader = spec.reader()
    output = open_labels_zarr(spec.output, mode="r+")
    where = reader.label_region(chunk.batch_index, chunk.core)
    block = np.asarray(output[where])
    provisional = block >= PROVISIONAL
    block[provisional] = lut[block[provisional] - PROVISIONAL]
    output[where] = block
    write_bytes_atomic(Path(spec.work_dir) / "relabelled" / f"{chunk.index}", b"")
    return chunk.index


def _stitch(work_dir: Path, chunks: list[_Chunk], min_size: int) -> list[np.ndarray]:
    """Stage 2: one lookup table (local id -> final label) per chunk."""
    from scipy.sparse import coo_matrix
    from scipy.sparse.csgraph import connected_components

    by_position = {(c.batch_index, c.grid): c for c in chunks}
    counts, sizes, edges = [], [], []
    for chunk in chunks:
        with np.load(work_dir / "segmented" / f"{chunk.index}.npz") as record:
            counts.append(int(record["count"]))
            sizes.append(record["sizes"][1:])
    offsets = np.concatenate([[0], np.cumsum(counts)]).astype(np.int64)
    for chunk in chunks:
        with np.load(work_dir / "segmented" / f"{chunk.index}.npz") as mine:
            for offset, other in _neighbours(chunk, by_position):
                if other.index < chunk.index:
                    continue
                back = tuple(-o for o in offset)
                with np.load(work_dir / "segmented" / f"{other.index}.npz") as theirs:
                    a, b = mine[_key(offset)], theirs[_key(back)]
                both = (a > 0) & (b > 0)
                if both.any():
                    pairs = np.unique(np.stack([a[both], b[both]]), axis=1)
                    edges.append(
                        np.stack(
                            [
                                pairs[0] - 1 + offsets[chunk.index],
                                pairs[1] - 1 + offsets[other.index],
                            ]
                        )
                    )
    nodes = int(offsets[-1])
    if nodes == 0:
        return [np.zeros(1, np.int32) for _ in chunks]
    pairs = np.concatenate(edges, axis=1) if edges else np.zeros((2, 0), np.int64)
    graph = coo_matrix((np.ones(pairs.shape[1], np.int8), (pairs[0], pairs[1])), (nodes, nodes))
    _, component = connected_components(graph, directed=False)
    object_sizes = np.bincount(component, weights=np.concatenate(sizes))
    keep = object_sizes >= max(min_size, 1)
    if int(keep.sum()) >= PROVISIONAL:
        raise UnetTunerError(
            f"{int(keep.sum())} objects do not fit the int32 labels (at most {PROVISIONAL - 1})"
        )
    final = np.where(keep, np.cumsum(keep), 0).astype(np.int32)[component]
    return [
        np.concatenate([[0], final[offsets[i] : offsets[i + 1]]]).astype(np.int32)
        for i in range(len(chunks))
    ]


# dask's nannies start workers with MALLOC_TRIM_THRESHOLD_=64 KiB, which also
# turns off glibc's adaptive mmap threshold: every large tensor is then mmapped
# and unmapped, and torch runs 1.8x slower (2.7 s vs 1.5 s for ten 256 x 256
# forward passes here). A fixed 32 MiB mmap threshold with trimming above
# 256 MiB makes a worker as fast as a plain process (1.4 s).
_WORKER_ENVIRON = {
    "distributed.nanny.pre-spawn-environ.MALLOC_TRIM_THRESHOLD_": str(256 * 2**20),
    "distributed.nanny.pre-spawn-environ.MALLOC_MMAP_THRESHOLD_": str(32 * 2**20),
}


@contextmanager
def local_cluster(config: ChunkedConfig) -> Iterator[ChunkedConfig]:
    """Start the LocalCluster a config asks for; yield the config pointing at it.

    A config without ``workers`` is yielded unchanged. Several runs (a batch
    of files) can share one cluster this way.
    """
    if config.workers is None:
        yield config
        return
    import dask
    from distributed import LocalCluster

    with (
        dask.config.set(_WORKER_ENVIRON),
        LocalCluster(
            n_workers=config.workers,
            threads_per_worker=config.threads_per_worker,
            processes=True,
            memory_limit=config.memory_limit or "auto",
            # ":0": any free port, so that several clusters never collide on 8787.
            dashboard_address=":0",
        ) as cluster,
    ):
        log.info("dask LocalCluster: %d workers at %s", config.workers, cluster.scheduler_address)
        yield dataclasses.replace(config, workers=None, scheduler=cluster.scheduler_address)


@contextmanager
def _dask_client(config: ChunkedConfig) -> Iterator[Any]:
    """Yield a dask.distributed client for the config, or None for the threaded scheduler."""
    if config.workers is None and config.scheduler is None:
        yield None
        return
    from distributed import Client

    with local_cluster(config) as running, Client(running.scheduler) as client:
        yield client


def _run_tasks(
    client: Any,
    function: Callable,
    spec: _RunSpec,
    jobs: Sequence[tuple[_Chunk, Any]],
    threads: int,
) -> Iterator[_Chunk]:
    """Run ``function(spec, chunk, arg)`` for every job on dask; yield chunks as they finish.

    Closing the iterator cancels what has not started (on the threaded
    scheduler: after the current batch).
    """
    import dask

    if client is None:
        for first in range(0, len(jobs), threads):
            batch = jobs[first : first + threads]
            # A partial keeps dask from looking inside the arguments: a dask
            # array in ``spec`` must stay lazy, not be computed whole first.
            tasks = [
                dask.delayed(functools.partial(function, spec, chunk, arg))()
                for chunk, arg in batch
            ]
            dask.compute(*tasks, scheduler="threads", num_workers=threads)
            yield from (chunk for chunk, _ in batch)
        return
    from distributed import as_completed

    shipped = client.scatter(spec, broadcast=True, hash=False)
    futures = {
        client.submit(function, shipped, chunk, arg, pure=False): chunk for chunk, arg in jobs
    }
    try:
        for future in as_completed(futures):
            future.result()  # raises the task's error here, in the caller
            yield futures[future]
    finally:
        client.cancel(list(futures))


def _fingerprint(
    spec: _RunSpec, source_name: str, digest: str, chunk_shape: tuple[int, ...]
) -> dict:
    return {
        "input": source_name,
        "input_sample_sha256": digest,
        "input_shape": [int(s) for s in spec.source.shape],
        "input_dtype": str(np.dtype(spec.source.dtype)),
        "axes": spec.axes,
        "checkpoint_sha256": spec.checkpoint.sha256,
        "instances": spec.instances.to_dict(),
        "normalization": spec.normalization.to_dict(),
        # Every setting that changes the labels: batch size and precision change
        # the last bits of the probabilities, so a seed at a threshold may move.
        "inference": {k: v for k, v in spec.inference.to_dict().items() if k != "num_threads"},
        "tile_shape": list(spec.tile_shape),
        "chunk_shape": list(chunk_shape),
    }


def _prepare_output(
    path: Path,
    fingerprint: dict,
    create: Callable[[], Any],
    overwrite: bool,
) -> Path:
    """Create the output and its work folder, or find an interrupted run to resume."""
    work_dir = path / WORK_DIR
    if path.exists():
        manifest = work_dir / "manifest.json"
        resumable = manifest.exists() and _read_json(manifest) == fingerprint
        if overwrite:
            shutil.rmtree(path)
        elif not resumable:
            state = (
                "is a finished result"
                if not work_dir.exists()
                else "is an interrupted run with other settings or input"
            )
            raise FileExistsError(
                f"{path} exists and {state}; choose another output or allow overwriting"
            )
        else:
            return work_dir
    create()
    write_json_atomic(work_dir / "manifest.json", fingerprint)
    return work_dir


def _read_json(path: Path) -> Any:
    try:
        return json.loads(path.read_text())
    except ValueError:
        return None


def check_chunked_inference(inference: InferenceConfig) -> None:
    """Raise `InputError` if ``inference`` asks for what chunked runs cannot do (rescaling)."""
    if inference.scale != 1.0:
        raise InputError(
            "rescaling (InferenceConfig.scale) is not available for zarr output yet: "
            "set the scale to 1, segment in memory, or resize the image first"
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
    inference = inference or InferenceConfig()
    check_chunked_inference(inference)
    chunked = chunked or ChunkedConfig()
    instances = instances or ckpt.card.instance_config
    normalization = normalization or ckpt.card.normalization_config
    shape = tuple(int(s) for s in image.shape)
    axes = (
        axes
        or getattr(image, "axes", None)
        or infer_axes(shape, cfg.spatial_dims, cfg.in_channels)
    )
    reader = ImageReader(image, axes, cfg.spatial_dims, cfg.in_channels, normalization)
    if ome is None:
        ome = bool(getattr(image, "ome", False))
    if scale is None and getattr(image, "scale", None) is not None:
        scale = tuple(s for s, a in zip(image.scale, reader.axes, strict=True) if a != "C")
    chunk_shape = tuple(
        int(c) for c in (chunked.chunk_shape or DEFAULT_CHUNK_SHAPE[cfg.spatial_dims])
    )
    if len(chunk_shape) != cfg.spatial_dims:
        raise InputError(
            f"chunk_shape {chunk_shape} has {len(chunk_shape)} axes; the model works on "
            f"{cfg.spatial_dims} spatial axes"
        )
    tile_shape = fit_tile_shape(
        reader.spatial_shape,
        inference.tile_shape or DEFAULT_TILE_SHAPE[cfg.spatial_dims],
        cfg.size_multiple,
        inference.overlap,
    )
    chunks = _plan(reader, chunk_shape)
    # One statistic per time point, for every chunk alike.
    firsts = {reader.time_point(c.batch_index): c.batch_index for c in chunks}
    statistics = {t: reader.time_point_statistics(b) for t, b in firsts.items()}
    path = Path(output)
    threads = chunked.threads_per_worker
    spec = _RunSpec(
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
        work_dir = _prepare_output(
            path,
            _fingerprint(spec, source_name, reader.sample_digest(), chunk_shape),
            create,
            overwrite,
        )
        segmented = {int(p.stem) for p in (work_dir / "segmented").glob("*.npz")}
        relabelled = {int(p.name) for p in (work_dir / "relabelled").glob("[0-9]*")}
        resumed = len(segmented)
        if resumed:
            log.info("%s: resuming, %d of %d chunks already segmented", path, resumed, len(chunks))
        by_position = {(c.batch_index, c.grid): c for c in chunks}
        local_threads = chunked.threads_per_worker if chunked.workers else (os.cpu_count() or 1)
        # On the threaded scheduler the chunks share this process's torch thread
        # pool: one torch thread per chunk, restored for the caller afterwards.
        with _dask_client(chunked) as client, cpu_threads(threads if client is None else None):
            workers = local_threads if client is None else max(1, len(client.nthreads()))
            jobs = [
                (
                    chunk,
                    [
                        (offset, _shared(chunk.grown, other.grown))
                        for offset, other in _neighbours(chunk, by_position)
                    ],
                )
                for chunk in chunks
                if chunk.index not in segmented
            ]
            done = resumed
            yield ChunkProgress("segment", done, len(chunks), time.perf_counter() - t0)
            for chunk in _run_tasks(client, _segment_chunk, spec, jobs, workers):
                done += 1
                region = reader.label_region(chunk.batch_index, chunk.core)
                yield ChunkProgress("segment", done, len(chunks), time.perf_counter() - t0, region)
            yield ChunkProgress("stitch", 0, 1, time.perf_counter() - t0)
            luts = _stitch(work_dir, chunks, instances.min_size)
            yield ChunkProgress("stitch", 1, 1, time.perf_counter() - t0)
            jobs = [(c, luts[c.index]) for c in chunks if c.index not in relabelled]
            done = len(chunks) - len(jobs)
            for chunk in _run_tasks(client, _relabel_chunk, spec, jobs, workers):
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
        )


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


def is_complete(path: str | os.PathLike) -> bool:
    """Whether a chunked output on disk was finished."""
    try:
        labels = open_labels_zarr(path)
    except Exception:  # noqa: BLE001 - anything unreadable is not a finished result
        return False
    return bool(dict(labels.attrs).get(ATTRS_KEY, {}).get("complete"))
