"""The object table of a chunked run: sums per chunk, added up per object after stitching.

A chunked run never holds an image's labels or probabilities whole, so the
table of `napari_unet_tuner.inference.objects` is built from parts: each
chunk, while its probabilities are in memory, sums what the table needs
over the pixels of its core for each of its local objects (pixels, their
coordinates, interior probability, raw intensity, and stability weighted
by pixels; `chunk_sums`). Once the chunks are stitched, every local object
has its final label, and the sums of its pieces add up to the whole
object's (`chunked_tables`): the same ``area``, ``centroid`` and
``intensity_mean`` as in memory, and means of ``interior_mean`` and
``stability`` over the object's pixels. Stability is measured on each
chunk's grown region (its core plus a halo), so an object larger than the
halo is judged piece by piece. Possible misses are found per chunk core:
one that crosses a chunk border is listed once per chunk it lies in.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd
from scipy import ndimage

from napari_unet_tuner.config import InstanceConfig, OutputKind
from napari_unet_tuner.inference.instances import INTERIOR
from napari_unet_tuner.inference.objects import (
    DEFAULT_CONFIDENCE,
    possible_misses,
    review_ranks,
    size_deviations,
)
from napari_unet_tuner.inference.stability import object_stability
from napari_unet_tuner.io import write_bytes_atomic

if TYPE_CHECKING:
    from napari_unet_tuner.inference.image import ImageReader

_PREFIX = "table_"


def chunk_sums(
    grown_labels: np.ndarray,
    probabilities: np.ndarray,
    core: tuple[slice, ...],
    raw_core: np.ndarray,
    origin: tuple[int, ...],
    output_kind: OutputKind,
    instances: InstanceConfig,
) -> dict[str, np.ndarray]:
    """Return what one chunk adds to the table, as arrays to store with its record.

    Parameters
    ----------
    grown_labels : numpy.ndarray
        The chunk's local labels over its grown region (1..count).
    probabilities : numpy.ndarray
        ``(C, *grown)`` probabilities they were made from.
    core : tuple of slice
        The chunk's core within the grown region.
    raw_core : numpy.ndarray
        ``(channels, *core)`` raw image values of the core.
    origin : tuple of int
        Position of the core's first pixel in the image (spatial axes).
    output_kind, instances
        How the labels were made.

    Returns
    -------
    dict of str to numpy.ndarray
        Per local id 0..count (row 0 unused): ``area``, ``sum-<axis>``,
        ``interior``, ``stability``, ``intensity`` (one column per channel),
        and the core's possible misses (``misses``, one row each: area,
        centroid per axis in image coordinates, foreground mean, confidence).
    """
    count = int(grown_labels.max(initial=0))
    labels = grown_labels[core]
    ids = np.arange(count + 1)
    area = np.bincount(labels.ravel(), minlength=count + 1).astype(np.float64)
    sums = {"area": area}
    for axis, start in enumerate(origin):
        coordinate = np.arange(labels.shape[axis], dtype=np.float64) + start
        shape = [1] * labels.ndim
        shape[axis] = -1
        weights = np.broadcast_to(coordinate.reshape(shape), labels.shape)
        sums[f"sum-{axis}"] = ndimage.sum_labels(weights, labels, ids)
    interior = probabilities[0 if output_kind == "foreground" else INTERIOR]
    sums["interior"] = ndimage.sum_labels(interior[core], labels, ids)
    present = ids[area > 0]
    present = present[present > 0]
    stability = np.zeros(count + 1)
    if len(present):
        stability[present] = object_stability(
            grown_labels, present, probabilities, output_kind, instances
        )
    sums["stability"] = stability * area
    sums["intensity"] = np.stack(
        [ndimage.sum_labels(channel, labels, ids) for channel in raw_core], axis=1
    )
    misses = possible_misses(labels, probabilities[(slice(None), *core)], output_kind, 1)
    misses = misses[misses["area"] >= instances.min_size]
    columns = misses[[c for c in misses.columns if c.startswith("centroid-")]].to_numpy(float)
    sums["misses"] = np.column_stack(
        [
            misses["area"].to_numpy(float),
            columns + np.asarray(origin, float),
            misses["foreground_mean"].to_numpy(float),
            misses["confidence"].to_numpy(float),
        ]
    ).reshape(len(misses), 3 + len(origin))
    return {_PREFIX + k: v for k, v in sums.items()}


def table_paths(output: Path) -> tuple[Path, Path]:
    """Where a chunked run writes its object table and possible misses: beside its output.

    ``cells_labels.zarr`` gives ``cells_objects.csv`` and
    ``cells_objects_possible_misses.csv``, as ``unet-tuner segment --table``
    names them beside a TIFF.
    """
    stem = output.name.removesuffix(".zarr").removesuffix(".ome").removesuffix("_labels")
    objects = output.with_name(f"{stem}_objects.csv")
    return objects, objects.with_name(f"{objects.stem}_possible_misses.csv")


def write_tables(
    work_dir: Path,
    chunks: Sequence[Any],
    luts: Sequence[np.ndarray],
    reader: ImageReader,
    output: Path,
) -> tuple[Path, Path]:
    """Add the chunks' stored sums up and write both tables beside ``output`` (atomically)."""
    records = []
    for chunk in chunks:
        with np.load(work_dir / "segmented" / f"{chunk.index}.npz") as record:
            records.append({k: record[k] for k in record.files if k.startswith(_PREFIX)})
    objects, misses = chunked_tables(
        records,
        luts,
        [c.batch_index for c in chunks],
        reader.batch_axes,
        reader.spatial_axes,
        reader.label_axes,
    )
    objects_path, misses_path = table_paths(output)
    write_bytes_atomic(objects_path, objects.to_csv(index=False).encode())
    write_bytes_atomic(misses_path, misses.to_csv(index=False).encode())
    return objects_path, misses_path


def chunked_tables(
    records: Sequence[dict[str, np.ndarray]],
    luts: Sequence[np.ndarray],
    planes: Sequence[tuple[int, ...]],
    batch_axes: str,
    spatial_axes: str,
    label_axes: str,
) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Add the chunks' sums up per final label: the object table and the possible misses.

    Parameters
    ----------
    records : sequence of dict
        Each chunk's `chunk_sums` (as stored, with its prefix).
    luts : sequence of numpy.ndarray
        Each chunk's local id -> final label (0: dropped).
    planes : sequence of tuple of int
        Each chunk's plane (or volume) index on ``batch_axes``.
    batch_axes, spatial_axes, label_axes : str
        The run's axes: the table's centroids follow ``label_axes``.

    Returns
    -------
    objects, possible_misses : pandas.DataFrame
        As `SegmentationResult.objects` and ``possible_misses``.
    """
    count = max((int(lut.max(initial=0)) for lut in luts), default=0)
    channels = next((r[_PREFIX + "intensity"].shape[1] for r in records), 1)
    total: dict[str, np.ndarray] = {}
    plane_of = np.zeros((count + 1, len(batch_axes)), np.int64)
    for record, lut, plane in zip(records, luts, planes, strict=True):
        final = np.asarray(lut)
        for key, values in record.items():
            name = key.removeprefix(_PREFIX)
            if name == "misses":
                continue
            values = values.reshape(len(final), -1)
            if name not in total:
                total[name] = np.zeros((count + 1, values.shape[1]))
            np.add.at(total[name], final, values)
        plane_of[final] = plane
    area = total["area"][1:, 0] if count else np.zeros(0)
    keep = area > 0
    labels = np.arange(1, count + 1)[keep]
    area = area[keep]
    table = {"label": labels, "area": area}
    for name in label_axes:
        if name in spatial_axes:
            axis = spatial_axes.index(name)
            value = total[f"sum-{axis}"][1:, 0][keep] / area
        else:
            value = plane_of[1:, batch_axes.index(name)][keep].astype(float)
        table[f"centroid-{label_axes.index(name)}"] = value
    intensity = total["intensity"][1:][keep] / area[:, None]
    if channels == 1:
        table["intensity_mean"] = intensity[:, 0]
    else:
        for c in range(channels):
            table[f"intensity_mean-{c}"] = intensity[:, c]
    table["interior_mean"] = total["interior"][1:, 0][keep] / area
    planes_of_objects = [tuple(p) for p in plane_of[1:][keep]]
    table["size_deviation"] = size_deviations(area, planes_of_objects)
    table["stability"] = total["stability"][1:, 0][keep] / area
    objects = pd.DataFrame(table)
    objects["confidence"] = DEFAULT_CONFIDENCE(objects)
    objects["review_rank"] = review_ranks(objects["confidence"].to_numpy())
    return objects, _misses(records, planes, batch_axes, spatial_axes, label_axes)


def _misses(records, planes, batch_axes, spatial_axes, label_axes) -> pd.DataFrame:
    """Return the chunks' possible misses on the label axes, likeliest nuclei first."""
    rows = []
    for record, plane in zip(records, planes, strict=True):
        misses = record[_PREFIX + "misses"]
        if not len(misses):
            continue
        part = {"area": misses[:, 0]}
        for name in label_axes:
            if name in spatial_axes:
                part[name] = misses[:, 1 + spatial_axes.index(name)]
            else:
                part[name] = np.full(len(misses), float(plane[batch_axes.index(name)]))
        part["foreground_mean"] = misses[:, -2]
        part["confidence"] = misses[:, -1]
        rows.append(pd.DataFrame(part))
    columns = ["area", *[f"centroid-{i}" for i in range(len(label_axes))]]
    columns += ["foreground_mean", "confidence", "review_rank"]
    if not rows:
        return pd.DataFrame(columns=columns)
    misses = pd.concat(rows, ignore_index=True)
    misses = misses.rename(columns={name: f"centroid-{i}" for i, name in enumerate(label_axes)})
    misses = misses.sort_values("confidence", ascending=False, kind="stable")
    misses = misses.reset_index(drop=True)
    misses["review_rank"] = np.arange(1, len(misses) + 1)
    return misses[columns]
