"""Reading images lazily and writing results atomically."""

from __future__ import annotations

import glob
import json
import os
import time
import uuid
from pathlib import Path
from typing import Any

import numpy as np

from napari_unet_tuner.errors import InputError

TIFF_SUFFIXES = (".tif", ".tiff")
PICTURE_SUFFIXES = (".png", ".jpg", ".jpeg")
_AXIS_LETTERS = "TZCYX"


def _known_axes(axes: str | None) -> str | None:
    """Axes as our letters (TIFF's S for RGB samples is C), or None if foreign."""
    if not axes:
        return None
    axes = axes.upper().replace("S", "C")
    if len(set(axes)) != len(axes) or any(a not in _AXIS_LETTERS for a in axes):
        return None
    return axes


def _is_zarr(path: Path) -> bool:
    return any(part.lower().endswith(".zarr") for part in path.parts)


def _open_zarr(path: Path) -> tuple[Any, str | None, tuple[float, ...] | None]:
    """Open a zarr array, or an OME-Zarr image's full-resolution level, with axes and scale."""
    import zarr

    node = zarr.open(str(path), mode="r")
    if isinstance(node, zarr.Array):
        return node, None, None
    attrs = dict(node.attrs)
    multiscales = attrs.get("ome", attrs).get("multiscales")
    if not multiscales:
        arrays = sorted(name for name, _ in node.arrays())
        hint = f", e.g. {path / arrays[0]}" if arrays else ""
        raise InputError(
            f"{path} is a zarr group without OME-Zarr multiscales metadata; "
            f"give the path of the array inside it{hint}"
        )
    image = multiscales[0]
    level0 = image["datasets"][0]
    axes = "".join(a["name"] if isinstance(a, dict) else a for a in image.get("axes", []))
    scale = None
    for transform in level0.get("coordinateTransformations", []):
        if transform.get("type") == "scale":
            scale = tuple(float(v) for v in transform["scale"])
    return node[level0["path"]], _known_axes(axes), scale


class FileImage:
    """An image file, opened lazily and never loaded whole.

    TIFF files are memory-mapped where their data is contiguous and
    uncompressed and read tile by tile (through tifffile's zarr interface)
    otherwise; ``.npy`` files are memory-mapped; zarr arrays and OME-Zarr
    images (their full-resolution level) are read chunk by chunk.

    A `FileImage` pickles as its path, so dask workers, on this machine or
    another one that sees the same file system, reopen the file themselves.

    Parameters
    ----------
    path : path-like
        The image file or folder (``.tif``, ``.tiff``, ``.npy``, ``.zarr``,
        or an array inside a zarr group such as ``plate.zarr/A/1/0``).

    Attributes
    ----------
    axes : str or None
        Axes from the file's metadata (TIFF series axes, OME-Zarr axes) when
        they are letters of ``TZCYX``, otherwise None.
    scale : tuple of float or None
        Pixel size per axis: an OME-Zarr image's full-resolution level, an
        OME-TIFF's physical sizes, or an ImageJ TIFF's resolution and Z
        spacing (1 for axes without a size); None when the file gives none.
    ome : bool
        Whether the file is an OME-Zarr image.

    Raises
    ------
    FileNotFoundError
        If there is no such file.
    InputError
        If the file is not an image that can be read.
    """

    def __init__(self, path: str | os.PathLike) -> None:
        self.path = Path(path)
        self._open()

    def _open(self) -> None:
        path = self.path
        if not path.exists():
            raise FileNotFoundError(f"image not found: {path}")
        suffix = path.suffix.lower()
        self.axes, self.scale, self.ome = None, None, False
        try:
            if _is_zarr(path):
                self._array, self.axes, self.scale = _open_zarr(path)
                self.ome = self.scale is not None or self.axes is not None
            elif suffix in TIFF_SUFFIXES:
                self._array, self.axes, self.scale = _open_tiff(path)
            elif suffix == ".npy":
                self._array = np.load(path, mmap_mode="r", allow_pickle=False)
            elif suffix in PICTURE_SUFFIXES:
                import imageio.v3 as iio

                # Small by nature: read whole (no lazy reader exists for them).
                self._array = np.asarray(iio.imread(path))
                if self._array.ndim == 3 and self._array.shape[-1] in (3, 4):
                    self.axes = "YXC"
                elif self._array.ndim == 2:
                    self.axes = "YX"
            else:
                raise InputError(
                    f"cannot read {path}: expected a .tif/.tiff, .npy, .zarr, .png or .jpg image"
                )
        except InputError:
            raise
        except Exception as exc:  # noqa: BLE001 - every reader failure means the same to the user
            raise InputError(f"cannot read {path} as an image: {exc}") from exc

    @property
    def array(self) -> Any:
        """The underlying lazy array (memory map or zarr array)."""
        return self._array

    @property
    def shape(self) -> tuple[int, ...]:
        """Shape of the image."""
        return tuple(int(s) for s in self._array.shape)

    @property
    def dtype(self) -> np.dtype:
        """Data type of the pixels."""
        return np.dtype(self._array.dtype)

    @property
    def ndim(self) -> int:
        """Number of axes."""
        return len(self.shape)

    @property
    def anisotropy(self) -> float | None:
        """Z step over the X pixel size from the file's metadata, or None if it has none."""
        return _anisotropy(self.axes, self.scale)

    def __getitem__(self, index: Any) -> np.ndarray:
        return np.asarray(self._array[index])

    def __getstate__(self) -> dict[str, Any]:
        return {"path": self.path}

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.path = state["path"]
        self._open()

    def __repr__(self) -> str:
        return f"FileImage({str(self.path)!r}, shape={self.shape}, dtype={self.dtype})"


class OneChannel:
    """One channel of a `FileImage`, read lazily: what ``--channel`` segments.

    Behaves as a `FileImage` without the C axis (shape, dtype, axes, scale,
    anisotropy, path) and pickles as its file and channel.

    Parameters
    ----------
    image : FileImage
        The multichannel image.
    axes : str
        Its axes, with a ``C``.
    channel : int
        Which channel (0-based).

    Raises
    ------
    InputError
        If ``axes`` has no C or the image has no such channel.
    """

    def __init__(self, image: FileImage, axes: str, channel: int) -> None:
        axes = axes.upper()
        if "C" not in axes or len(axes) != image.ndim:
            raise InputError(
                f"--channel needs to know which axis holds the channels: {image.path.name} has "
                f"shape {image.shape}; give its axes with a C, e.g. --axes "
                f"{'CYX' if image.ndim == 3 else 'ZCYX'}"
            )
        self._axis = axes.index("C")
        count = image.shape[self._axis]
        if not 0 <= channel < count:
            raise InputError(
                f"{image.path.name} has {count} channels (0 to {count - 1}); --channel {channel} "
                "is not one of them"
            )
        self.image, self.channel = image, channel
        self.path, self.ome = image.path, False
        self.axes = axes.replace("C", "")
        self.shape = tuple(s for i, s in enumerate(image.shape) if i != self._axis)
        self.dtype, self.ndim = image.dtype, len(self.shape)
        self.scale = (
            None
            if image.scale is None
            else tuple(s for i, s in enumerate(image.scale) if i != self._axis)
        )
        self.anisotropy = _anisotropy(self.axes, self.scale)

    def __getitem__(self, index: Any) -> np.ndarray:
        index = index if isinstance(index, tuple) else (index,)
        if Ellipsis in index:
            at = index.index(Ellipsis)
            fill = (slice(None),) * (self.ndim - len(index) + 1)
            index = index[:at] + fill + index[at + 1 :]
        index = index + (slice(None),) * (self.ndim - len(index))
        return np.asarray(self.image[index[: self._axis] + (self.channel,) + index[self._axis :]])

    def __repr__(self) -> str:
        return f"OneChannel({self.image!r}, channel={self.channel})"


def _anisotropy(axes: str | None, scale: tuple[float, ...] | None) -> float | None:
    """Z step over the X pixel size, or None when the sizes do not give it."""
    if not axes or not scale or "Z" not in axes or "X" not in axes:
        return None
    size = dict(zip(axes, scale, strict=True))
    if size["X"] <= 0 or size["Z"] <= 0 or size["Z"] == 1.0 == size["X"]:
        return None  # 1 and 1 is what files without physical sizes say
    return size["Z"] / size["X"]


def _open_tiff(path: Path) -> tuple[Any, str | None, tuple[float, ...] | None]:
    import tifffile
    import zarr

    with tifffile.TiffFile(path) as tif:
        axes = _known_axes(tif.series[0].axes)
        scale = _tiff_scale(tif, axes) if axes else None
    try:
        return tifffile.memmap(path, mode="r"), axes, scale
    except ValueError:  # compressed or not contiguous: read tile by tile
        return zarr.open(tifffile.imread(path, aszarr=True), mode="r"), axes, scale


def _tiff_scale(tif: Any, axes: str) -> tuple[float, ...] | None:
    """Pixel size per axis from OME-TIFF or ImageJ metadata; None without any."""
    import tifffile

    sizes: dict[str, float] = {}
    try:
        if tif.is_ome:
            image = tifffile.xml2dict(tif.ome_metadata)["OME"]["Image"]
            pixels = (image[0] if isinstance(image, list) else image)["Pixels"]
            sizes = {
                a: float(pixels[f"PhysicalSize{a}"]) for a in "ZYX" if f"PhysicalSize{a}" in pixels
            }
        elif tif.is_imagej:
            page = tif.pages[0]
            for axis, tag in (("X", "XResolution"), ("Y", "YResolution")):
                if tag in page.tags:
                    pixels_per_unit, unit = page.tags[tag].value
                    if pixels_per_unit > 0:
                        sizes[axis] = unit / pixels_per_unit
            spacing = (tif.imagej_metadata or {}).get("spacing")
            if spacing:
                sizes["Z"] = float(spacing)
    except (KeyError, TypeError, ValueError, IndexError):  # malformed metadata: no sizes
        return None
    # A stack without its Z step has no scale to go by (ImageJ leaves spacing
    # out unless it was set).
    if not sizes or ("Z" in axes and "Z" not in sizes):
        return None
    return tuple(sizes.get(a, 1.0) for a in axes)


def open_image(path: str | os.PathLike) -> Any:
    """Open an image file without loading it whole where the format allows.

    Returns the lazy array of a `FileImage` (see there for the formats).

    Raises
    ------
    FileNotFoundError
        If there is no such file.
    InputError
        If the file is not an image this function can read.
    """
    return FileImage(path).array


# A temporary file untouched this long belongs to a run that was killed.
STALE_TEMPORARY_SECONDS = 600


def temporary_beside(path: Path) -> Path:
    """Return a fresh temporary name beside ``path``: ``.<name>.<random>.tmp``."""
    return path.with_name(f".{path.name}.{uuid.uuid4().hex}.tmp")


def remove_stale_temporaries(path: Path) -> None:
    """Remove temporaries of earlier writes to ``path`` that were killed mid-way.

    Only those `STALE_TEMPORARY_SECONDS` old: a younger one may be another
    run's write in progress. Called before writing a user's file (a TIFF, a
    checkpoint), not for the many small files inside a chunked run's work
    folder, which is removed whole when the run completes.
    """
    now = time.time()
    for old in path.parent.glob(f".{glob.escape(path.name)}.*.tmp"):
        try:
            if now - old.stat().st_mtime > STALE_TEMPORARY_SECONDS:
                old.unlink()
        except OSError:
            pass  # removed meanwhile, or not ours to remove


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
        raise FileExistsError(
            f"{path} exists; choose another output or allow "
            "overwriting (--overwrite, overwrite=True)"
        )
    path.parent.mkdir(parents=True, exist_ok=True)
    remove_stale_temporaries(path)
    tmp = temporary_beside(path)
    try:
        tifffile.imwrite(tmp, array, compression="zlib", **kwargs)
        _fsync(tmp)
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
    return path


def write_bytes_atomic(path: str | os.PathLike, data: bytes) -> Path:
    """Write ``data`` under a temporary name, then rename it into place."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = temporary_beside(path)
    try:
        tmp.write_bytes(data)
        _fsync(tmp)
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
    return path


def _fsync(path: Path) -> None:
    """Flush a file to the disk before it is renamed into place."""
    with open(path, "rb+") as fh:
        os.fsync(fh.fileno())


def write_json_atomic(path: str | os.PathLike, data: Any) -> Path:
    """Write ``data`` as JSON atomically (see `write_bytes_atomic`)."""
    return write_bytes_atomic(path, json.dumps(data, indent=1, sort_keys=True).encode())


def cache_dir() -> Path:
    """Folder for files the plugin can rebuild (``$UNET_TUNER_CACHE_DIR`` overrides it)."""
    return user_folder("cache")


def user_folder(kind: str) -> Path:
    """Return the plugin's ``"config"`` or ``"cache"`` folder (``$UNET_TUNER_<KIND>_DIR`` wins)."""
    override = os.environ.get(f"UNET_TUNER_{kind.upper()}_DIR")
    if override:
        return Path(override)
    import platformdirs

    where = {"config": platformdirs.user_config_dir, "cache": platformdirs.user_cache_dir}
    return Path(where[kind]("napari-unet-tuner"))
