"""Label files this package writes: TIFFs that say the scale they were made at, zarr arrays."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

SEGMENTED_SCALE_KEY = "unet_tuner_scale"
"""Labels TIFF metadata: the scale the image was resized by for the model when segmented."""


def segmented_scale(path: str | os.PathLike) -> float | None:
    """Return the scale a labels TIFF written by ``unet-tuner segment`` was segmented at.

    Fine-tuning on those labels (edited or not) learns them at that scale,
    and computes the model's own prediction there, so that what the user
    did not edit compares equal. ``None`` for other files.
    """
    import tifffile

    if Path(path).suffix.lower() not in (".tif", ".tiff"):
        return None
    try:
        with tifffile.TiffFile(path) as tif:
            metadata = tif.shaped_metadata or ()
    except (OSError, ValueError, tifffile.TiffFileError):
        return None
    for entry in metadata:
        scale = entry.get(SEGMENTED_SCALE_KEY) if isinstance(entry, dict) else None
        if isinstance(scale, int | float) and 0.1 <= scale <= 10:
            return float(scale)
    return None


LABELS_LEVEL = "0"
"""Path of the labels inside an OME-Zarr output."""


def create_labels_zarr(
    path: str | os.PathLike,
    shape: tuple[int, ...],
    chunks: tuple[int, ...],
    axes: str,
    *,
    ome: bool = False,
    scale: tuple[float, ...] | None = None,
) -> Any:
    """Create an empty int32 label array on disk and return it (opened for writing).

    Parameters
    ----------
    path : path-like
        A new ``.zarr`` folder.
    shape, chunks : tuple of int
        Array and chunk shape.
    axes : str
        Axes of the labels, letters from ``TZYX``.
    ome : bool
        Write an OME-Zarr image (NGFF multiscales metadata, one level at
        `LABELS_LEVEL`) instead of a bare zarr array.
    scale : tuple of float, optional
        Pixel size per axis for the OME-Zarr metadata.
    """
    import zarr

    if not ome:
        return zarr.create_array(
            store=str(path), shape=shape, chunks=chunks, dtype="int32", fill_value=0
        )
    from ome_zarr.writer import write_multiscales_metadata

    group = zarr.open_group(str(path), mode="w-", zarr_format=3)
    array = group.create_array(
        LABELS_LEVEL, shape=shape, chunks=chunks, dtype="int32", fill_value=0
    )
    transform = [{"type": "scale", "scale": list(scale or (1.0,) * len(shape))}]
    write_multiscales_metadata(
        group,
        [{"path": LABELS_LEVEL, "coordinateTransformations": transform}],
        axes=axes.lower(),
        name="labels",
    )
    return array


def open_labels_zarr(path: str | os.PathLike, mode: str = "r") -> Any:
    """Open a label array written by `create_labels_zarr` (bare or OME-Zarr)."""
    import zarr

    node = zarr.open(str(path), mode=mode)
    return node if isinstance(node, zarr.Array) else node[LABELS_LEVEL]
