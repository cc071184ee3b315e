"""Reading images lazily and writing results atomically."""

from __future__ import annotations

import os
import uuid
from pathlib import Path
from typing import Any

import numpy as np

from napari_unet_tuner.errors import InputError

TIFF_SUFFIXES = (".tif", ".tiff")


def open_image(path: str | os.PathLike) -> Any:
    """Open an image file without loading it whole where the format allows.

    TIFF files are memory-mapped when their data is stored contiguously and
    uncompressed, and read whole otherwise; ``.npy`` files are memory-mapped;
    ``.zarr`` folders are opened lazily (needs the ``zarr`` package).

    Raises
    ------
    FileNotFoundError
        If there is no such file.
    InputError
        If the file is not an image this function can read.
    """
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"image not found: {path}")
    suffix = "".join(path.suffixes[-1:]).lower()
    try:
        if suffix in TIFF_SUFFIXES:
            import tifffile

            try:
                return tifffile.memmap(path, mode="r")
            except ValueError:  # compressed or non-contiguous: read it
                return tifffile.imread(path)
        if suffix == ".npy":
            return np.load(path, mmap_mode="r", allow_pickle=False)
        if suffix == ".zarr":
            import zarr

            return zarr.open(str(path), mode="r")
    except InputError:
        raise
    except Exception as exc:  # noqa: BLE001 - every reader failure means the same to the user
        raise InputError(f"cannot read {path} as an image: {exc}") from exc
    raise InputError(f"cannot read {path}: expected a .tif/.tiff, .npy or .zarr image")


def write_tiff_atomic(
    path: str | os.PathLike, array: np.ndarray, *, overwrite: bool = False, **kwargs: Any
) -> Path:
    """Write ``array`` as TIFF under a temporary name, then rename it into place.

    A crash mid-write never leaves a partial file under ``path``.

    Raises
    ------
    FileExistsError
        If ``path`` exists and ``overwrite`` is false.
    """
    import tifffile

    path = Path(path)
    if path.exists() and not overwrite:
        raise FileExistsError(f"{path} exists; choose another output or allow overwriting")
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{uuid.uuid4().hex}.tmp")
    try:
        tifffile.imwrite(tmp, array, compression="zlib", **kwargs)
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
    return path
