"""Tiled prediction with overlap and smooth blending, in bounded memory.

Tiles are visited band by band along the first spatial axis. Each band's
predictions are blended into a buffer one tile high; rows that no later tile
touches are normalized and written out, so the float32 working memory is one
band, not the whole image.
"""

from __future__ import annotations

import functools
import itertools
import math
import time
from collections.abc import Callable, Generator, Sequence
from dataclasses import dataclass

import numpy as np

from napari_unet_tuner._generators import run_to_completion
from napari_unet_tuner.config import InferenceConfig

Predictor = Callable[[np.ndarray], np.ndarray]
"""Maps a batch ``(N, C_in, *tile)`` float32 to ``(N, C_out, *tile)`` float32."""

TileReader = Callable[[tuple[slice, ...]], np.ndarray]
"""Returns the input tile ``(C_in, *tile)`` float32 at the given spatial slices."""


@dataclass(frozen=True)
class TileProgress:
    """One step of a tiled prediction.

    Attributes
    ----------
    done, total : int
        Tiles predicted so far, and in all.
    elapsed : float
        Seconds since the prediction started.
    """

    done: int
    total: int
    elapsed: float


def tile_starts(size: int, tile: int, overlap: int) -> list[int]:
    """Start offsets of tiles of length ``tile`` covering ``size`` with at least ``overlap``.

    The last tile is shifted to end at ``size`` so that every tile lies fully
    inside the image (no padded tiles at the far border).
    """
    if tile >= size:
        return [0]
    step = max(1, tile - overlap)
    count = math.ceil((size - tile) / step) + 1
    return [min(i * step, size - tile) for i in range(count)]


def fit_tile_shape(
    spatial_shape: Sequence[int],
    tile_shape: Sequence[int],
    multiple: int,
    overlap: float | None = None,
) -> tuple[int, ...]:
    """Clip a tile shape to the image and round it to the model's size multiple.

    Rounding down to ``multiple`` (``2**depth``) avoids padding inside the
    network; a dimension smaller than one multiple is kept as it is. Given
    the ``overlap`` fraction, tiles are also shrunk (never grown) to the
    smallest multiple that covers the axis with as many tiles: a 727-pixel
    axis takes four 208-pixel tiles instead of four 256-pixel ones that
    overlap far more than asked, which is model work for nothing.
    """
    if len(tile_shape) != len(spatial_shape):
        raise ValueError(
            f"tile_shape {tuple(tile_shape)} has {len(tile_shape)} axes but the model "
            f"works on {len(spatial_shape)} spatial axes"
        )
    fitted = []
    for size, tile in zip(spatial_shape, tile_shape, strict=True):
        tile = min(int(tile), int(size))
        if tile >= multiple:
            tile -= tile % multiple
            if overlap is not None and tile < size:
                tile = _balanced_tile(int(size), tile, overlap, multiple)
        fitted.append(tile)
    return tuple(fitted)


def _balanced_tile(size: int, tile: int, overlap: float, multiple: int) -> int:
    """Smallest multiple of ``multiple`` (<= ``tile``) covering ``size`` with as many tiles."""
    overlap_px = int(round(tile * overlap))
    count = len(tile_starts(size, tile, overlap_px))
    # n tiles of length t with overlap o cover n * t - (n - 1) * o pixels; a
    # smaller t also has a smaller o, so the count never grows.
    needed = math.ceil((size + (count - 1) * overlap_px) / count)
    return min(tile, math.ceil(needed / multiple) * multiple)


def _ramp(length: int, overlap: int, at_start: bool, at_end: bool) -> np.ndarray:
    """1D blending weights: 1 in the middle, linear ramps over the overlap.

    Sides on the image border keep weight 1: no other tile covers them.
    The ramp never reaches 0 so that every covered pixel has positive weight.
    """
    weights = np.ones(length, np.float32)
    if overlap <= 0:
        return weights
    ramp = (np.arange(min(overlap, length), dtype=np.float32) + 0.5) / overlap
    if not at_start:
        weights[: len(ramp)] = np.minimum(weights[: len(ramp)], ramp)
    if not at_end:
        weights[length - len(ramp) :] = np.minimum(weights[length - len(ramp) :], ramp[::-1])
    return weights


@functools.lru_cache(maxsize=64)
def blending_window(
    tile_shape: tuple[int, ...],
    overlap: tuple[int, ...],
    at_start: tuple[bool, ...],
    at_end: tuple[bool, ...],
) -> np.ndarray:
    """Separable blending weights of one tile (outer product of per-axis ramps).

    Cached: a grid has at most 3**ndim distinct windows. Do not modify the result.
    """
    window = np.ones((), np.float32)
    for length, ov, s, e in zip(tile_shape, overlap, at_start, at_end, strict=True):
        window = np.multiply.outer(window, _ramp(length, ov, s, e))
    return window


def _weighted_predictions(
    read_tile: TileReader,
    predictor: Predictor,
    corners: Sequence[tuple[int, ...]],
    tile_shape: tuple[int, ...],
    overlap_px: tuple[int, ...],
    spatial_shape: tuple[int, ...],
) -> list[tuple[tuple[int, ...], np.ndarray, np.ndarray]]:
    """Predict one batch of tiles: ``(corner, prediction * window, window)`` per tile."""
    slices = [tuple(slice(s, s + t) for s, t in zip(c, tile_shape, strict=True)) for c in corners]
    pred = np.asarray(predictor(np.stack([read_tile(sl) for sl in slices])), np.float32)
    weighted = []
    for corner, prediction in zip(corners, pred, strict=True):
        window = blending_window(
            tile_shape,
            overlap_px,
            tuple(c == 0 for c in corner),
            tuple(c + t >= s for c, t, s in zip(corner, tile_shape, spatial_shape, strict=True)),
        )
        np.multiply(prediction, window, out=prediction)
        weighted.append((corner, prediction, window))
    return weighted


def iter_predict_tiled(
    read_tile: TileReader,
    spatial_shape: Sequence[int],
    predictor: Predictor,
    out_channels: int,
    tile_shape: Sequence[int],
    overlap: float = InferenceConfig.overlap,
    batch_size: int = 1,
    out: np.ndarray | None = None,
) -> Generator[TileProgress, None, np.ndarray]:
    """Predict an image tile by tile, yielding progress after every batch.

    A caller cancels by closing the generator (or a napari worker's ``quit``):
    work stops before the next batch.

    Parameters
    ----------
    read_tile : callable
        ``read_tile(spatial_slices) -> (C_in, *tile)`` float32.
    spatial_shape : sequence of int
        Size of the image's spatial axes.
    predictor : callable
        ``predictor(batch) -> outputs``, see `Predictor`.
    out_channels : int
        Channels the predictor returns.
    tile_shape : sequence of int
        Tile size per spatial axis; clipped to the image (see `fit_tile_shape`).
    overlap : float
        Fraction of each tile shared with a neighbour.
    batch_size : int
        Tiles per predictor call.
    out : array, optional
        Where to write ``(out_channels, *spatial_shape)``; a float16 numpy array
        is allocated if omitted.

    Returns
    -------
    numpy.ndarray
        The blended predictions (the generator's return value, i.e.
        ``StopIteration.value``; `predict_tiled` unwraps it).
    """
    spatial_shape = tuple(int(s) for s in spatial_shape)
    tile_shape = tuple(min(int(t), s) for t, s in zip(tile_shape, spatial_shape, strict=True))
    overlap_px = tuple(int(round(t * overlap)) for t in tile_shape)
    starts = [
        tile_starts(s, t, o) for s, t, o in zip(spatial_shape, tile_shape, overlap_px, strict=True)
    ]
    if out is None:
        out = np.empty((out_channels, *spatial_shape), np.float16)
    band_rows = tile_shape[0]
    acc = np.zeros((out_channels, band_rows, *spatial_shape[1:]), np.float32)
    weight_sum = np.zeros((band_rows, *spatial_shape[1:]), np.float32)
    total = math.prod(len(s) for s in starts)
    done = 0
    t0 = time.perf_counter()
    for band, row in enumerate(starts[0]):
        tiles = [(row, *corner) for corner in itertools.product(*starts[1:])]
        for first in range(0, len(tiles), batch_size):
            chunk = tiles[first : first + batch_size]
            for corner, prediction, window in _weighted_predictions(
                read_tile, predictor, chunk, tile_shape, overlap_px, spatial_shape
            ):
                local = (slice(0, band_rows),) + tuple(
                    slice(c, c + t) for c, t in zip(corner[1:], tile_shape[1:], strict=True)
                )
                acc[(slice(None), *local)] += prediction
                weight_sum[local] += window
            done += len(chunk)
            yield TileProgress(done=done, total=total, elapsed=time.perf_counter() - t0)
        next_row = starts[0][band + 1] if band + 1 < len(starts[0]) else spatial_shape[0]
        final = next_row - row
        out[:, row:next_row] = acc[:, :final] / weight_sum[:final]
        # Shift the rows that later bands still add to up to the top of the buffer.
        keep = band_rows - final
        acc[:, :keep] = acc[:, final:]
        acc[:, keep:] = 0
        weight_sum[:keep] = weight_sum[final:]
        weight_sum[keep:] = 0
    return out


def predict_region(
    read_tile: TileReader,
    spatial_shape: Sequence[int],
    region: tuple[slice, ...],
    predictor: Predictor,
    out_channels: int,
    tile_shape: Sequence[int],
    overlap: float = InferenceConfig.overlap,
    batch_size: int = 1,
) -> np.ndarray:
    """Predict one region of an image exactly as a whole-image run would.

    Only the tiles of the whole image's grid that touch ``region`` are run,
    and they are blended in the same order with the same windows as in
    `iter_predict_tiled`, so the result equals the whole-image prediction
    inside ``region`` (bit for bit with ``batch_size=1``). This is what lets
    chunks of a huge image be segmented independently and still agree where
    they overlap.

    Returns
    -------
    numpy.ndarray
        float16 ``(out_channels, *region_shape)``.
    """
    spatial_shape = tuple(int(s) for s in spatial_shape)
    tile_shape = tuple(min(int(t), s) for t, s in zip(tile_shape, spatial_shape, strict=True))
    overlap_px = tuple(int(round(t * overlap)) for t in tile_shape)
    touching = [
        [s for s in tile_starts(size, t, o) if s < r.stop and s + t > r.start]
        for size, t, o, r in zip(spatial_shape, tile_shape, overlap_px, region, strict=True)
    ]
    # Sums are kept for the region only (each tile clipped to it): the same
    # additions per pixel as a whole-image run, in a buffer of the region's size.
    box = tuple(r.stop - r.start for r in region)
    acc = np.zeros((out_channels, *box), np.float32)
    weight_sum = np.zeros(box, np.float32)
    # Lexicographic order is the order `iter_predict_tiled` adds tiles in:
    # the same float32 sums, so the same result.
    tiles = list(itertools.product(*touching))
    for first in range(0, len(tiles), batch_size):
        chunk = tiles[first : first + batch_size]
        for corner, prediction, window in _weighted_predictions(
            read_tile, predictor, chunk, tile_shape, overlap_px, spatial_shape
        ):
            clipped = [
                (max(c, r.start), min(c + t, r.stop))
                for c, t, r in zip(corner, tile_shape, region, strict=True)
            ]
            in_tile = tuple(slice(a - c, b - c) for (a, b), c in zip(clipped, corner, strict=True))
            in_region = tuple(
                slice(a - r.start, b - r.start) for (a, b), r in zip(clipped, region, strict=True)
            )
            acc[(slice(None), *in_region)] += prediction[(slice(None), *in_tile)]
            weight_sum[in_region] += window[in_tile]
    return (acc / weight_sum).astype(np.float16)


def predict_tiled(*args, **kwargs) -> np.ndarray:
    """Run `iter_predict_tiled` to the end and return its predictions."""
    return run_to_completion(iter_predict_tiled(*args, **kwargs))
