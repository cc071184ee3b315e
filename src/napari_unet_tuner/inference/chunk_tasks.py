"""The work of one chunk of a chunked run: plan, segment, stitch, relabel.

See `napari_unet_tuner.inference.chunked` for how the stages fit together.
These functions run on dask workers: they take a `RunSpec` and a `Chunk`,
read the image themselves and write to the output and the run's work folder.
"""

from __future__ import annotations

import io
import itertools
import math
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from napari_unet_tuner.config import InferenceConfig, InstanceConfig, NormalizationConfig
from napari_unet_tuner.errors import UnetTunerError
from napari_unet_tuner.inference.chunk_objects import chunk_sums
from napari_unet_tuner.inference.device import select_device
from napari_unet_tuner.inference.image import ImageReader, raw_checksum
from napari_unet_tuner.inference.instances import (
    WATERSHED_HALO,
    grow_markers,
    grow_region,
    seed_markers,
)
from napari_unet_tuner.inference.predictor import build_predictor
from napari_unet_tuner.inference.stack import fragment_size
from napari_unet_tuner.inference.stack_chunked import StackViews, ViewBand, volume_number
from napari_unet_tuner.inference.stack_views import predict_planes
from napari_unet_tuner.inference.tiling import Predictor, predict_region
from napari_unet_tuner.io import write_bytes_atomic
from napari_unet_tuner.labels_files import open_labels_zarr
from napari_unet_tuner.model.checkpoint import Checkpoint

PROVISIONAL = 1 << 30
"""Labels at or above this are a chunk's provisional ids (``PROVISIONAL + local``)."""


@dataclass(frozen=True)
class Chunk:
    """One chunk of a run: its plane, grid position, core and core-plus-halo regions."""

    index: int
    batch_index: tuple[int, ...]
    grid: tuple[int, ...]
    core: tuple[slice, ...]
    grown: tuple[slice, ...]


@dataclass(frozen=True)
class RunSpec:
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
    views: StackViews | None = None

    def reader(self) -> ImageReader:
        """Return a reader of the source image with the run's statistics.

        It reads ``ZYX`` volumes for a 3D model, and for a 2D model whose
        Z-stacks become 3D objects (`views`); ``YX`` planes otherwise.
        """
        cfg = self.checkpoint.model_config
        return ImageReader(
            self.source,
            self.axes,
            3 if self.views is not None else cfg.spatial_dims,
            cfg.in_channels,
            self.normalization,
            statistics=self.statistics,
        )


def plan_chunks(reader: ImageReader, chunk_shape: tuple[int, ...]) -> list[Chunk]:
    """Cut every plane (or volume) of the image into chunks of ``chunk_shape``."""
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
                Chunk(
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


def shared_region(a: tuple[slice, ...], b: tuple[slice, ...]) -> tuple[slice, ...] | None:
    """Intersection of two regions, None if empty."""
    out = tuple(
        slice(max(x.start, y.start), min(x.stop, y.stop)) for x, y in zip(a, b, strict=True)
    )
    return out if all(s.stop > s.start for s in out) else None


def _local(region: tuple[slice, ...], within: tuple[slice, ...]) -> tuple[slice, ...]:
    return tuple(
        slice(r.start - w.start, r.stop - w.start) for r, w in zip(region, within, strict=True)
    )


def neighbours(chunk: Chunk, by_position: dict) -> Iterator[tuple[tuple[int, ...], Chunk]]:
    """Yield ``(offset, chunk)`` for each chunk next to ``chunk`` (faces, edges, corners)."""
    for offset in _offsets(len(chunk.grid)):
        grid = tuple(g + o for g, o in zip(chunk.grid, offset, strict=True))
        other = by_position.get((chunk.batch_index, grid))
        if other is not None:
            yield offset, other


def task_predictor(spec: RunSpec) -> Predictor:
    """Return the run's model on this worker's device, with the run's torch threads."""
    if torch.get_num_threads() != spec.threads:
        torch.set_num_threads(spec.threads)
    device = select_device(spec.inference.device)
    predictor, _ = build_predictor(
        spec.checkpoint.build_model(device),
        device,
        spec.inference.precision,
        spec.inference.runtime,
        tile_shape=spec.tile_shape,
        batch_size=spec.inference.batch_size,
        num_threads=spec.threads,
    )
    return predictor


def segment_chunk(spec: RunSpec, chunk: Chunk, neighbours: list) -> int:
    """Stage 1 for one chunk; returns its number of local seeds."""
    reader = spec.reader()
    cfg = spec.checkpoint.model_config
    if spec.views is not None:  # the views stage ran the model already
        probabilities = spec.views.read(
            spec.work_dir, volume_number(reader, chunk.batch_index), chunk.grown
        )
    else:
        probabilities = predict_region(
            lambda spatial: reader.read(chunk.batch_index, spatial),
            reader.spatial_shape,
            chunk.grown,
            task_predictor(spec),
            cfg.out_channels,
            spec.tile_shape,
            spec.inference.overlap,
            spec.inference.batch_size,
        )
    markers = seed_markers(probabilities, cfg.output_kind, spec.instances)
    grown = grow_markers(probabilities, markers, cfg.output_kind, spec.instances)
    raw = reader.read_raw(chunk.batch_index, chunk.grown)
    local_core = _local(chunk.core, chunk.grown)
    core = grown[local_core]
    count = int(markers.max(initial=0))
    record: dict[str, np.ndarray] = {
        "count": np.array(count),
        "sizes": np.bincount(core.ravel(), minlength=count + 1),
        "input_crc32": np.array(raw_checksum(raw), np.uint32),
    }
    if spec.inference.object_table:
        # Measured now, while the probabilities are in memory; added up per
        # object once the chunks are stitched (chunk_objects).
        origin = tuple(s.start for s in chunk.core)
        raw_core = raw[(slice(None), *local_core)]
        record.update(
            chunk_sums(
                grown, probabilities, local_core, raw_core, origin, cfg.output_kind, spec.instances
            )
        )
    del probabilities, raw
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


def predict_view_band(spec: RunSpec, band: ViewBand, _unused: Any = None) -> int:
    """Run the views stage for one band: predict it, write it, mark it done.

    Returns the number of planes predicted.
    """
    views = spec.views
    predictor = task_predictor(spec)
    reader = spec.reader()
    plan = views.plans[band.view]
    region = views.region(band)
    # Read once: its checksum marks the band done, its normalized values go to the model.
    raw = reader.read_raw(band.batch_index, region)
    checksum = raw_checksum(raw)
    source = reader.normalized(band.batch_index, raw)
    del raw
    target = np.zeros((views.out_channels, *source.shape[1:]), np.float32)
    for _ in predict_planes(
        source,
        plan.axis,
        target,
        plan.tile_shape,
        predictor,
        spec.inference,
        views.out_channels,
        # Side views see square pixels, resampled plane by plane.
        view_depth=None if band.view == "xy" else plan.plane_shape[0],
    ):
        pass
    del source
    views.write(spec.work_dir, band, target, checksum)
    return band.planes.stop - band.planes.start


def changed_input(spec: RunSpec, chunks: list[Chunk], bands: list[ViewBand]) -> str | None:
    """Name the first finished chunk or band whose input differs from when it was done.

    Every pixel a finished part read is read again and compared with the
    checksum the interrupted run stored (far cheaper than the model); None
    when all are the same, so the run may resume.
    """
    reader = spec.reader()
    for chunk in chunks:
        with np.load(Path(spec.work_dir) / "segmented" / f"{chunk.index}.npz") as record:
            expected = int(record["input_crc32"])
        if reader.checksum(chunk.batch_index, chunk.grown) != expected:
            return f"chunk {chunk.index}, plane {chunk.batch_index} at {_describe(chunk.core)}"
    for band in bands:
        expected = spec.views.done_checksum(spec.work_dir, band)
        if reader.checksum(band.batch_index, spec.views.region(band)) != expected:
            return f"planes {band.planes.start}-{band.planes.stop - 1} of the {band.view} view"
    return None


def _describe(region: tuple[slice, ...]) -> str:
    return " x ".join(f"{s.start}:{s.stop}" for s in region)


def relabel_chunk(spec: RunSpec, chunk: Chunk, lut: np.ndarray) -> int:
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


def stitch(
    work_dir: Path, chunks: list[Chunk], min_size: int, fragments: bool = False
) -> list[np.ndarray]:
    """Stage 2: one lookup table (local id -> final label) per chunk.

    ``fragments``: also drop objects far smaller than the rest
    (`stack.fragment_size`, over the whole image), as 3D runs in memory do.
    """
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
            for offset, other in neighbours(chunk, by_position):
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
    if fragments:
        min_size = max(min_size, fragment_size(object_sizes))
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
