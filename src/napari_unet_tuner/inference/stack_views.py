"""How a 2D model sees a Z-stack: its XY planes, and its XZ and YZ planes when deep enough.

Each orientation (a `ViewPlan`) is a stack of planes, tiled as any image;
the side views are resampled to square pixels along Z (`resample_depth`)
for the model and back. `predict_planes` runs the model on every plane of
one orientation and adds its probabilities to a volume. Used by the
in-memory 3D path (`napari_unet_tuner.inference.stack`), the chunked one
(`napari_unet_tuner.inference.stack_chunked`), the Z step's estimate and
the side views training learns from.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Generator
from dataclasses import dataclass

import numpy as np
from skimage.transform import resize

from napari_unet_tuner.config import InferenceConfig, ModelConfig
from napari_unet_tuner.inference.tiling import fit_tile_shape, iter_predict_tiled, tile_starts

# Orientations: the axis of the (C, Z, Y, X) volume their planes are stacked along.
_ACROSS = {"xy": 1, "xz": 2, "yz": 3}
# Side views need a stack deeper than its objects: shallower ones cut every
# object in XZ and YZ, those views mislead, and only the XY planes are used,
# their objects linked from plane to plane (`plane_links`). Depth in object
# diameters (Z step included) does not change when the stack is resized.
# CHO (5 planes 4.95 pixels apart: 25 deep, nuclei 70 px: 0.35 diameters)
# scored 3D AP@0.5 0.41 from XY alone and 0.01 with the side views; cells3d
# (67 deep, 48-px nuclei: 1.4) 0.41 and 0.83; synthetic 15-px nuclei 3
# diameters deep, Z steps 1 and 2, 0.43 and 0.41 from XY alone, 0.76 and
# 0.62 with them (the rule was 48 square pixels before, which kept them out).
SIDE_VIEW_DIAMETERS = 1.0
# Side views also need objects that span this many planes (their measured
# diameter, a median of XY sections, over the Z step): in fewer, the side views
# are mostly interpolated between planes. Synthetic 15-px nuclei at Z step 4
# (measured 3.8 planes) scored 3D AP@0.5 0.45 and 0.50 (2 seeds) with the
# side views, 0.72 and 0.66 from the XY planes linked; 25 px at Z step 4 (6.1
# planes) 0.70 / 0.76 and 0.76 / 0.74; 15 px at Z step 2 (7.5 planes) 0.62 /
# 0.77 with them, 0.54 / 0.50 without.
MIN_OBJECT_PLANES = 4.5
# Side views less tall than this (in the model's pixels) are not used, objects aside.
MIN_SIDE_VIEW_DEPTH = 16
# Z steps within this factor of the pixel size count as square for the side views.
RESAMPLE_TOLERANCE = 1.25


def side_view_depth(depth: int, anisotropy: float) -> int:
    """Planes of a stack ``depth`` deep, in square pixels: the height of its XZ and YZ views.

    Side views are resampled to square pixels only when the Z step is far
    from the pixel size: the model segments objects of 0.5-1.6x its size
    alike (`object_size`), and resampling there and back cost a fifth of a
    near-isotropic run.
    """
    if 1 / RESAMPLE_TOLERANCE <= anisotropy <= RESAMPLE_TOLERANCE:
        return depth
    return max(1, round(depth * anisotropy))


def has_side_views(
    view_depth: int, object_diameter: float | None, anisotropy: float = 1.0
) -> bool:
    """Whether side views ``view_depth`` tall (square pixels) are worth running.

    They are when the stack is at least `SIDE_VIEW_DIAMETERS` objects deep
    and each object spans `MIN_OBJECT_PLANES` planes (``object_diameter``
    over ``anisotropy``, the Z step, both in the same pixels; ``None``: not
    known, then `MIN_SIDE_VIEW_DEPTH` alone decides), and the views are
    `MIN_SIDE_VIEW_DEPTH` tall.
    """
    if view_depth < MIN_SIDE_VIEW_DEPTH:
        return False
    if object_diameter is None:
        return True
    return (
        view_depth >= SIDE_VIEW_DIAMETERS * object_diameter
        and object_diameter >= MIN_OBJECT_PLANES * anisotropy
    )


@dataclass(frozen=True)
class ViewPlan:
    """How one orientation of a stack goes through the model.

    Attributes
    ----------
    axis : int
        The axis of the ``(C, Z, Y, X)`` volume its planes are stacked along.
    plane_shape : tuple of int
        Shape of one plane, Z in square pixels for the side views.
    tile_shape : tuple of int
        The plane itself when it fits in one tile, otherwise the tile.
    """

    axis: int
    plane_shape: tuple[int, int]
    tile_shape: tuple[int, int]


def plan_views(
    volume_shape: tuple[int, int, int],
    anisotropy: float,
    tile_shape: tuple[int, int],
    model_config: ModelConfig,
    overlap: float,
    object_diameter: float | None = None,
) -> dict[str, ViewPlan]:
    """Plan the orientations a ``(Z, Y, X)`` stack is seen in: XY, and XZ, YZ if deep enough.

    ``object_diameter`` (in the stack's pixels; `has_side_views`) decides
    whether it is deep enough.
    """
    depth, height, width = volume_shape
    iso_depth = side_view_depth(depth, anisotropy)
    shapes = {"xy": (height, width), "xz": (iso_depth, width), "yz": (iso_depth, height)}
    if not has_side_views(iso_depth, object_diameter, anisotropy):
        shapes = {"xy": shapes["xy"]}
    plans = {}
    for name, shape in shapes.items():
        # A plane no larger than a tile goes through the model whole (the network
        # pads it), in batches; only larger planes are tiled.
        whole_plane = all(size <= tile for size, tile in zip(shape, tile_shape, strict=True))
        tiles = (
            shape
            if whole_plane
            else fit_tile_shape(shape, tile_shape, model_config.size_multiple, overlap)
        )
        plans[name] = ViewPlan(_ACROSS[name], shape, tuple(tiles))
    return plans


def view_tiles(plan: ViewPlan, overlap: float) -> int:
    """Tiles the model runs on one plane of a view."""
    return math.prod(
        len(tile_starts(s, t, round(t * overlap)))
        for s, t in zip(plan.plane_shape, plan.tile_shape, strict=True)
    )


def resample_depth(volume: np.ndarray, depth: int) -> np.ndarray:
    """Resize a ``(C, Z, ...)`` array along Z alone to ``depth`` planes (linear, float32).

    Every other axis keeps its size, so a band of rows or columns of a stack
    resamples exactly as the same rows of the whole stack do.
    """
    if volume.shape[1] == depth:
        return volume
    shape = (volume.shape[0], depth, *volume.shape[2:])
    return resize(volume, shape, order=1).astype(np.float32, copy=False)


# Planes that fit in one tile go through the model this many pixels at a time
# (a batch of planes): one 512 x 512 tile's worth.
_BATCH_PIXELS = 512 * 512


def predict_planes(
    source: np.ndarray,
    axis: int,
    target: np.ndarray,
    tile_shape: tuple[int, ...],
    predictor: Callable[[np.ndarray], np.ndarray],
    inference: InferenceConfig,
    out_channels: int,
    view_depth: int | None = None,
) -> Generator[int, None, None]:
    """Add the model's probabilities on every plane of ``source`` across ``axis`` to ``target``.

    Yields how many tiles are done. Planes that fit in one tile are batched
    (the XZ and YZ planes of a stack usually do): far fewer, larger forward
    passes than plane by plane. With ``view_depth``, the model sees each
    plane resampled to that many Z rows (`resample_depth`: square pixels for
    a side view) and its probabilities go back to ``source``'s depth before
    they are added: the same sums as resampling the whole volume there and
    back, without a second volume in memory.
    """
    count = source.shape[axis]
    depth = source.shape[1]
    resampled = view_depth is not None and view_depth != depth

    def to_view(part: np.ndarray) -> np.ndarray:
        return resample_depth(part, view_depth) if resampled else part

    def from_view(part: np.ndarray) -> np.ndarray:
        return resample_depth(part, depth) if resampled else part

    plane_shape = tuple(
        (view_depth if resampled and i == 1 else s)
        for i, s in enumerate(source.shape[1:], start=1)
        if i != axis
    )
    at = [slice(None)] * source.ndim

    def where(index) -> tuple:
        at[axis] = index
        return tuple(at)

    if tuple(tile_shape) == plane_shape:
        per_batch = max(inference.batch_size, _BATCH_PIXELS // math.prod(plane_shape))
        for start in range(0, count, per_batch):
            stop = min(count, start + per_batch)
            planes = np.moveaxis(to_view(source[where(slice(start, stop))]), axis, 0)
            probabilities = predictor(np.ascontiguousarray(planes))
            target[where(slice(start, stop))] += from_view(np.moveaxis(probabilities, 0, axis))
            yield stop
        return
    done = 0
    for index in range(count):
        plane = to_view(source[where(index)])
        run = iter_predict_tiled(
            lambda sl, plane=plane: plane[(slice(None), *sl)],
            plane_shape,
            predictor,
            out_channels,
            tile_shape,
            inference.overlap,
            inference.batch_size,
        )
        while True:
            try:
                step = next(run)
            except StopIteration as finished:
                target[where(index)] += from_view(finished.value)
                break
            yield done + step.done
        done += step.done
