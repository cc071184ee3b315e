"""Axes, channels and normalization of input images, read lazily tile by tile.

Images are numpy arrays or array-likes (dask, zarr, memory-mapped TIFF) that
are never loaded whole: only the tiles (and a strided sample for the
normalization statistics) are read.

Axes rule (when no axes are given), for a model with ``spatial_dims`` 2 or 3
and ``in_channels`` channels:

========  ===========================================  =======================
ndim      shape                                        axes
========  ===========================================  =======================
2         any                                          ``YX``
3         last axis 3 or 4, ``in_channels`` 1 or same   ``YXC`` (RGB/RGBA)
3         first axis == ``in_channels`` > 1            ``CYX``
3         otherwise                                    ``ZYX`` (2D model: plane by plane)
4         last axis is 3 or 4 (RGB)                    ``ZYXC``
4         second axis == ``in_channels`` > 1           ``ZCYX``
4         otherwise                                    ``TZYX``
5         any                                          ``TZCYX`` (ImageJ order)
========  ===========================================  =======================

Give the axes explicitly (letters from ``TZCYX``) for anything else.
"""

from __future__ import annotations

import hashlib
import math
import zlib
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from skimage.transform import resize

from napari_unet_tuner.config import NormalizationConfig
from napari_unet_tuner.errors import InputError

AXIS_LETTERS = "TZCYX"
_MAX_SAMPLED_PLANES = 32


def resize_plane(plane: np.ndarray, spatial_shape: tuple[int, ...]) -> np.ndarray:
    """Resize a plane to ``spatial_shape``: images (float, C first) linearly, labels nearest.

    How every image is resized for the model (`Rescaled`, 3D stacks, training
    samples) and every annotation with it.
    """
    if plane.shape[-len(spatial_shape) :] == spatial_shape:
        return plane
    if np.issubdtype(plane.dtype, np.floating):
        shrink = spatial_shape[0] < plane.shape[1]
        return resize(
            plane, (plane.shape[0], *spatial_shape), order=1, anti_aliasing=shrink
        ).astype(np.float32)
    return resize(plane, spatial_shape, order=0, anti_aliasing=False, preserve_range=True).astype(
        plane.dtype
    )


def raw_checksum(raw: np.ndarray) -> int:
    """Return the CRC-32 of raw pixels as read (`ImageReader.checksum`)."""
    return zlib.crc32(np.ascontiguousarray(raw).data)


def infer_axes(shape: tuple[int, ...], spatial_dims: int = 2, in_channels: int = 1) -> str:
    """Guess the axes of an image by the rule in this module's docstring.

    Raises
    ------
    InputError
        If the image has fewer than 2 or more than 5 dimensions.
    """
    ndim = len(shape)
    if 0 in shape:
        raise InputError(f"the image is empty (shape {tuple(shape)}); open an image with pixels")
    rgb_last = ndim >= 3 and shape[-1] in (3, 4) and in_channels in (1, shape[-1])
    if ndim == 2:
        return "YX"
    if ndim == 3:
        if rgb_last:
            return "YXC"
        if in_channels > 1 and shape[0] == in_channels:
            return "CYX"
        return "ZYX"
    if ndim == 4:
        if rgb_last:
            return "ZYXC"
        if in_channels > 1 and shape[1] == in_channels:
            return "ZCYX"
        return "TZYX"
    if ndim == 5:
        return "TZCYX"
    raise InputError(f"cannot segment an image of {ndim} dimensions {shape}; expected 2 to 5")


def validate_axes(axes: str, shape: tuple[int, ...], spatial_dims: int) -> str:
    """Check axes against an image shape and model; return them upper-cased.

    Raises
    ------
    InputError
        If the axes do not fit; the message says what is expected.
    """
    axes = axes.upper()
    if len(axes) != len(shape):
        raise InputError(f"axes {axes!r} name {len(axes)} axes but the image has shape {shape}")
    if len(set(axes)) != len(axes) or any(a not in AXIS_LETTERS for a in axes):
        raise InputError(f"axes {axes!r} must use each of the letters {AXIS_LETTERS} at most once")
    if "Y" not in axes or "X" not in axes:
        raise InputError(f"axes {axes!r} must include Y and X")
    if spatial_dims == 3 and "Z" not in axes:
        raise InputError(f"a 3D model needs a Z axis; axes {axes!r} have none")
    return axes


@dataclass
class ImageReader:
    """Reads normalized ``(C, *spatial)`` float32 tiles from an array-like image.

    Parameters
    ----------
    data : array-like
        numpy, dask, zarr or any object with ``shape``, ``dtype`` and slicing.
    axes : str
        Axes of ``data`` (letters from ``TZCYX``), see `infer_axes`.
    spatial_dims : int
        The model's spatial dimensionality: 2 reads YX planes, 3 reads ZYX volumes.
    in_channels : int
        Channels the model takes. RGB(A) images are averaged to one channel
        for a one-channel model; any other mismatch is an error.
    normalization : NormalizationConfig
        How intensities are scaled. Statistics are shared by all planes of the
        same time point (so empty planes at the top of a Z-stack are not
        stretched into noise) and computed per channel.

    Attributes
    ----------
    batch_axes : str
        Axes iterated over (T, and Z for a 2D model), in image order.
    spatial_axes : str
        ``"YX"`` or ``"ZYX"``.
    """

    data: Any
    axes: str
    spatial_dims: int
    in_channels: int
    normalization: NormalizationConfig = field(default_factory=NormalizationConfig)
    statistics: dict[int, tuple[np.ndarray, np.ndarray]] | None = None
    batch_axes: str = field(init=False)
    spatial_axes: str = field(init=False)
    _stats: dict[int, tuple[np.ndarray, np.ndarray]] = field(init=False, default_factory=dict)
    _digest: Any = field(init=False, default_factory=lambda: hashlib.sha256())
    _digested_raw: bool = field(init=False, default=False)

    def __post_init__(self) -> None:
        shape = tuple(int(s) for s in self.data.shape)
        if 0 in shape:
            raise InputError(f"the image is empty (shape {shape}); open an image with pixels")
        self.axes = validate_axes(self.axes, shape, self.spatial_dims)
        dtype = np.dtype(self.data.dtype)
        if dtype.kind not in "uifb":
            raise InputError(f"cannot segment an image of dtype {dtype}; expected numbers")
        self.spatial_axes = "YX" if self.spatial_dims == 2 else "ZYX"
        self.batch_axes = "".join(a for a in self.axes if a not in self.spatial_axes + "C")
        channels = self.channels
        if channels != self.in_channels and not (self.in_channels == 1 and channels in (3, 4)):
            raise InputError(
                f"the model reads {self.in_channels} channel(s) but the image has {channels} "
                f"(axes {self.axes}, shape {shape}); select the channel(s) the model was "
                "trained on, or give the right axes"
            )
        if self.statistics:
            self._stats.update(self.statistics)

    @property
    def shape(self) -> dict[str, int]:
        """Size of each axis by letter."""
        return dict(zip(self.axes, (int(s) for s in self.data.shape), strict=True))

    @property
    def channels(self) -> int:
        """Number of channels in the image (1 if it has no C axis)."""
        return self.shape.get("C", 1)

    @property
    def spatial_shape(self) -> tuple[int, ...]:
        """Size of the axes the model sees, in ``spatial_axes`` order."""
        return tuple(self.shape[a] for a in self.spatial_axes)

    @property
    def batch_shape(self) -> tuple[int, ...]:
        """Size of the axes iterated over, in ``batch_axes`` order."""
        return tuple(self.shape[a] for a in self.batch_axes)

    @property
    def label_axes(self) -> str:
        """Axes of the labels: the image's axes without C."""
        return self.axes.replace("C", "")

    def batch_indices(self) -> Iterator[tuple[int, ...]]:
        """Iterate over the planes (or volumes) the model is run on."""
        return np.ndindex(*self.batch_shape)

    def label_index(self, batch_index: tuple[int, ...]) -> tuple[Any, ...]:
        """Index into the label array (``label_axes``) of one plane or volume."""
        where = dict(zip(self.batch_axes, batch_index, strict=True))
        return tuple(where.get(a, slice(None)) for a in self.label_axes)

    def label_region(
        self, batch_index: tuple[int, ...], spatial: tuple[slice, ...]
    ) -> tuple[Any, ...]:
        """Index into the label array of a region (``spatial_axes`` order) of one plane."""
        where: dict[str, Any] = dict(zip(self.batch_axes, batch_index, strict=True))
        where.update(zip(self.spatial_axes, spatial, strict=True))
        return tuple(where[a] for a in self.label_axes)

    def to_label_order(
        self, array: np.ndarray, channels: bool = False, inverse: bool = False
    ) -> np.ndarray:
        """Reorder a plane from ``spatial_axes`` order to its order among the label axes.

        With ``inverse``, from label-axes order to ``spatial_axes`` order;
        ``channels`` keeps a leading channel axis first. Returns a view, so
        writing into the result writes into ``array``.
        """
        order = [a for a in self.label_axes if a in self.spatial_axes]
        perm = [self.spatial_axes.index(a) for a in order]
        if inverse:
            perm = list(np.argsort(perm))
        if channels:
            perm = [0] + [p + 1 for p in perm]
        return array.transpose(perm)

    def read(self, batch_index: tuple[int, ...], spatial: tuple[slice, ...]) -> np.ndarray:
        """Return the normalized tile ``(in_channels, *tile)`` as float32."""
        return self.normalized(batch_index, self.read_raw(batch_index, spatial))

    def normalized(self, batch_index: tuple[int, ...], tile: np.ndarray) -> np.ndarray:
        """Return raw values of plane ``batch_index`` (`read_raw`) as the model reads them."""
        lo, hi = self.time_point_statistics(batch_index)
        view = (slice(None),) + (None,) * (tile.ndim - 1)
        tile = (tile - lo[view]) / (hi - lo)[view]
        if tile.shape[0] != self.in_channels:
            tile = tile[:3].mean(axis=0, keepdims=True)
        tile = tile.astype(np.float32, copy=False)
        if not np.isfinite(tile).all():
            raise InputError(
                "the image's values are too large for the model once normalized (beyond "
                "float32); use percentile normalization or rescale the image"
            )
        return tile

    def checksum(self, batch_index: tuple[int, ...], spatial: tuple[slice, ...]) -> int:
        """Return the CRC-32 of the raw pixels of a region, as read.

        A resumed run compares each finished part's input with its checksum
        from the interrupted run (`napari_unet_tuner.inference.chunked`):
        every pixel counts, not a sample.
        """
        return raw_checksum(self.read_raw(batch_index, spatial))

    def read_raw(
        self, batch_index: tuple[int, ...], spatial: tuple[slice, ...], step: int = 1
    ) -> np.ndarray:
        """Return the raw values ``(C, *spatial)`` of a region (every ``step``-th pixel).

        Before normalization, in float32 (float64 for wide types).
        """
        where = dict(zip(self.batch_axes, batch_index, strict=True))
        where.update(
            {
                a: slice(s.start, s.stop, step)
                for a, s in zip(self.spatial_axes, spatial, strict=True)
            }
        )
        index = tuple(where.get(a, slice(None)) for a in self.axes)
        raw = np.asarray(self.data[index])
        kept = [a for a in self.axes if not isinstance(where.get(a), int | np.integer)]
        order = [kept.index("C")] if "C" in kept else []
        order += [kept.index(a) for a in self.spatial_axes]
        raw = raw.transpose(order) if order != list(range(raw.ndim)) else raw
        if "C" not in kept:
            raw = raw[None]
        if raw.dtype.kind == "f" and not np.isfinite(raw).all():
            where_text = f" (plane {self.batch_axes}={batch_index})" if batch_index else ""
            raise InputError(
                f"the image has NaN or infinite values{where_text}; "
                "replace them first, e.g. with numpy.nan_to_num"
            )
        # Wide integers and float64 keep their precision until normalized:
        # 2**40 + 3 and 2**40 + 5 are one float32, and 1e300 is infinite.
        wide = raw.dtype.itemsize > 4 or (raw.dtype.kind in "iu" and raw.dtype.itemsize == 4)
        return raw.astype(np.float64 if wide else np.float32, copy=False)

    def sample_digest(self) -> str:
        """Return a digest of the pixels sampled for the statistics so far.

        Tells two images of the same shape apart without reading either whole
        (a resumed run must be of the same image). Without percentile
        statistics (normalization "none") the first time point is sampled
        for it here.
        """
        if not self._stats or self.normalization.kind == "none":
            if not self._digested_raw:
                self._digest.update(self._sample_time_point(0).tobytes())
                self._digested_raw = True
        return self._digest.hexdigest()

    def time_point(self, batch_index: tuple[int, ...]) -> int:
        """Return the time point a plane belongs to (0 without a T axis)."""
        return batch_index[self.batch_axes.index("T")] if "T" in self.batch_axes else 0

    def time_point_statistics(self, batch_index: tuple[int, ...]) -> tuple[np.ndarray, np.ndarray]:
        """Per-channel (low, high) intensities, computed once per time point."""
        t = self.time_point(batch_index)
        if t in self._stats:
            return self._stats[t]
        cfg = self.normalization
        channels = self.channels
        if cfg.kind == "none":
            stats = (np.zeros(channels, np.float32), np.ones(channels, np.float32))
        else:
            samples = self._sample_time_point(t)
            self._digest.update(samples.tobytes())
            # In the samples' precision (float64 for wide types, see read_raw).
            lo, hi = np.percentile(samples, [cfg.low, cfg.high], axis=1).astype(samples.dtype)
            # A few bright objects on a flat background (fewer pixels than the top
            # percentile) make hi == lo: their brightest sample is the top instead
            # of raw intensities (3 nuclei at 3000 on zeros made 15 objects). A
            # constant image still maps to 0 instead of dividing by zero (lo + 1
            # is lo itself for large float32 values: at least one step above it).
            brightest = samples.max(axis=1)
            step_up = np.maximum(lo + 1.0, np.nextafter(lo, np.inf))
            hi = np.where(hi > lo, hi, np.where(brightest > lo, brightest, step_up))
            hi = hi.astype(samples.dtype)
            stats = (lo, hi)
        self._stats[t] = stats
        return stats

    def _sample_time_point(self, t: int) -> np.ndarray:
        """Strided sample ``(C, n)`` of one time point, at most ``max_samples`` per channel.

        At most `_MAX_SAMPLED_PLANES` evenly spaced planes are read, so a long
        Z-stack under a 2D model costs a handful of plane reads, not all of them.
        """
        others = [a for a in self.batch_axes if a != "T"]
        all_planes = list(np.ndindex(*(self.shape[a] for a in others)))
        pick = np.linspace(0, len(all_planes) - 1, min(len(all_planes), _MAX_SAMPLED_PLANES))
        planes = [all_planes[int(round(i))] for i in pick]
        pixels = math.prod(self.spatial_shape)
        budget = max(1, self.normalization.max_samples // len(planes))
        step = max(1, math.ceil((pixels / budget) ** (1 / self.spatial_dims)))
        full = tuple(slice(0, s) for s in self.spatial_shape)
        chunks = []
        for index in planes:
            where = dict(zip(others, index, strict=True))
            if "T" in self.batch_axes:
                where["T"] = t
            batch_index = tuple(where[a] for a in self.batch_axes)
            raw = self.read_raw(batch_index, full, step=step)
            chunks.append(raw.reshape(raw.shape[0], -1))
        return np.concatenate(chunks, axis=1)


class Rescaled:
    """An `ImageReader`'s planes as the model sees them, resized by ``scale``.

    With ``scale == 1`` tiles are read straight from the image; otherwise
    each plane is read whole, normalized, and resized (linear) once, and
    the model's probabilities are resized back to the plane's own shape.
    """

    def __init__(self, reader: ImageReader, scale: float) -> None:
        self.reader = reader
        self.scale = scale
        self.spatial_shape = tuple(max(1, round(s * scale)) for s in reader.spatial_shape)

    def plane_reader(self, batch_index: tuple[int, ...]) -> Callable[[tuple[slice, ...]], Any]:
        """Return a tile reader (spatial slices -> normalized ``(C, *tile)``) for one plane."""
        if self.scale == 1.0:
            return lambda spatial: self.reader.read(batch_index, spatial)
        whole = tuple(slice(0, s) for s in self.reader.spatial_shape)
        plane = resize_plane(self.reader.read(batch_index, whole), self.spatial_shape)
        return lambda spatial: plane[(slice(None), *spatial)]

    def restore(self, probabilities: np.ndarray) -> np.ndarray:
        """Probabilities ``(C, *scaled)`` resized back to the plane's own shape."""
        if self.scale == 1.0:
            return probabilities
        shape = (probabilities.shape[0], *self.reader.spatial_shape)
        return resize(probabilities, shape, order=1).astype(np.float32)
