"""Z-stacks as 3D objects from a 2D model: planes in XY, XZ and YZ, averaged, grown in 3D.

As Cellpose's ``do_3D``: the 2D model sees the stack three ways, each plane
of each orientation tiled as any image; the XZ and YZ planes are first
resampled to square pixels (`InferenceConfig.anisotropy`). The three
probability volumes are averaged, and `probabilities_to_labels` labels
seeds and grows them by a watershed in 3D, so a nucleus that spans twenty
planes is one object. Stacks too shallow for side views (`has_side_views`:
less deep than one object) use the XY planes alone, linked across planes
by the same 3D labelling. Each volume (a time point) is held in memory whole,
with one float16 sum of its views' probabilities, and labelled a block at a
time: about 20 bytes per voxel beyond the image (a 60 x 1024 x 1024 stack
in under 2 GB in all). Larger ones go through the chunked zarr path
(`napari_unet_tuner.inference.stack_chunked`), which shares the view plan
and the resampling with this module.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Callable, Generator
from dataclasses import dataclass, replace

import numpy as np
from skimage.transform import resize

from napari_unet_tuner.config import InferenceConfig, InstanceConfig, ModelConfig
from napari_unet_tuner.inference.image import ImageReader, resize_plane
from napari_unet_tuner.inference.instances import probabilities_to_labels
from napari_unet_tuner.inference.object_size import SizeEstimate, scale_for
from napari_unet_tuner.inference.objects import ObjectCollector, raw_part
from napari_unet_tuner.inference.tiling import fit_tile_shape, iter_predict_tiled, tile_starts

# Orientations: the axis of the (C, Z, Y, X) volume their planes are stacked along.
_ACROSS = {"xy": 1, "xz": 2, "yz": 3}
# Side views need a stack deeper than its objects: shallower ones cut every
# object in XZ and YZ, those views mislead, and only the XY planes are used,
# their objects linked across planes by the 3D watershed. Depth in object
# diameters (Z step included) does not change when the stack is resized.
# CHO (5 planes 4.95 pixels apart: 25 deep, nuclei 70 px: 0.35 diameters)
# scored 3D AP@0.5 0.41 from XY alone and 0.01 with the side views; cells3d
# (67 deep, 48-px nuclei: 1.4) 0.41 and 0.83; synthetic 15-px nuclei 3
# diameters deep, Z steps 1 and 2, 0.43 and 0.41 from XY alone, 0.76 and
# 0.62 with them (the rule was 48 square pixels before, which kept them out).
SIDE_VIEW_DIAMETERS = 1.0
# Side views less tall than this (in the model's pixels) are not used, objects aside.
MIN_SIDE_VIEW_DEPTH = 16
# Z steps within this factor of the pixel size count as square for the side views.
RESAMPLE_TOLERANCE = 1.25
# Seeds of 3D objects: the three views' averaged interior spreads across
# the faces where nuclei touch (the XY planes see a nucleus on either side),
# so a seed threshold of 2D's 0.4 joins touching nuclei. 3D AP@0.5 by seed
# threshold 0.4 / 0.5 / 0.6 / 0.75 (bench_stack data, Z step known):
# synthetic touching 25-px nuclei, Z step 2, 0.73 / 0.87 / 0.95 / 0.99;
# 40-px, Z step 4, 0.48 / 0.62 / 0.73 / 0.86; but cells3d's whole volume
# 0.68 / 0.68 / 0.66 / 0.58 and CHO frames 16-19 0.67 / 0.67 / 0.66 / 0.63.
# 0.5 gains on crowded nuclei and loses nothing on the real stacks.
STACK_SEED_THRESHOLD = 0.5
# 3D runs objects up to this many times the model's diameter as they are
# (2D: `object_size.LARGEST`, 1.6); larger ones are shrunk to it (`stack_scale`).
LARGEST_IN_3D = 1.2


def stack_instances(card_instances: InstanceConfig) -> InstanceConfig:
    """Return a model's instance settings for 3D objects: seeds at `STACK_SEED_THRESHOLD` at least.

    For runs whose caller gave no instance settings of its own.
    """
    if card_instances.seed_threshold >= STACK_SEED_THRESHOLD:
        return card_instances
    return replace(card_instances, seed_threshold=STACK_SEED_THRESHOLD)


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


def has_side_views(view_depth: int, object_diameter: float | None) -> bool:
    """Whether side views ``view_depth`` tall (square pixels) are worth running.

    They are when the stack is at least `SIDE_VIEW_DIAMETERS` objects deep
    (``object_diameter``, in the same pixels; ``None``: not known, then
    `MIN_SIDE_VIEW_DEPTH` alone decides) and `MIN_SIDE_VIEW_DEPTH` tall.
    """
    if view_depth < MIN_SIDE_VIEW_DEPTH:
        return False
    return object_diameter is None or view_depth >= SIDE_VIEW_DIAMETERS * object_diameter


def stack_scale(size: SizeEstimate | None, model_diameter: float | None, scale: float) -> float:
    """Return the scale of a 3D run: large nuclei are shrunk to the model's size sooner than in 2D.

    2D runs objects up to `LARGEST` (1.6) times the model's diameter as they
    are; in 3D their side views then merge touching nuclei. Synthetic 40-px
    nuclei (1.6x the default's 25 px), Z steps 1, 2 and 4, two seeds: 3D
    AP@0.5 0.62-0.71 unresized, 0.92-0.99 shrunk to 25 px (and faster). Up
    to `LARGEST_IN_3D` times it they run as they are. ``scale`` is returned
    when the size is not known (or was not measured).
    """
    if size is None or size.diameter is None or model_diameter is None:
        return scale
    return scale_for(size.diameter, model_diameter, largest=LARGEST_IN_3D)


def view_diameter(
    size: SizeEstimate | None, model_diameter: float | None, scale: float
) -> float | None:
    """The objects' diameter in the pixels the model sees at ``scale``.

    Measured (``size``) when it was, otherwise the model's own diameter (the
    size it is run at), or ``None`` when neither is known.
    """
    if size is not None and size.diameter is not None:
        return size.diameter * scale
    return model_diameter


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
    if not has_side_views(iso_depth, object_diameter):
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


def iter_segment_stack(
    reader: ImageReader,
    predictor: Callable[[np.ndarray], np.ndarray],
    model_config: ModelConfig,
    inference: InferenceConfig,
    instances: InstanceConfig,
    tile_shape: tuple[int, int],
    return_probabilities: bool,
    progress: Callable[..., object],
    collector: ObjectCollector | None = None,
    image: object = None,
    scale: float = 1.0,
    object_diameter: float | None = None,
) -> Generator[object, None, tuple[np.ndarray, np.ndarray | None]]:
    """Segment every Z-stack of ``reader`` into 3D objects; return ``(labels, probabilities)``.

    Yields ``progress(stage, volume, volumes, tiles_done, tiles_total[, view])``
    records after every batch of tiles (with the orientation running) and
    before each volume's labels.
    Labels are unique over all volumes (time points). ``collector`` measures
    each volume's objects while its probabilities are at hand (their
    intensities in ``image``, the raw array ``reader`` reads).

    ``scale`` (the automatic object size, `object_size`) resizes the stack
    for the model in all three axes alike: its planes in XY, and its side
    views in Z through the Z step in the resized pixels. Probabilities go
    back to the stack's own grid before labels are made, so labels match it.
    ``object_diameter`` (in the resized pixels, `view_diameter`) decides
    whether the stack is deep enough for side views (`has_side_views`).
    """
    others = [a for a in reader.batch_axes if a != "Z"]
    volumes = list(itertools.product(*(range(reader.shape[a]) for a in others)))
    depth = reader.shape["Z"]
    native = reader.spatial_shape
    height, width = (max(1, round(s * scale)) for s in native)
    # Planes of the resized stack are `scale` times larger; its planes lie
    # as far apart as before, so the Z step in its pixels is `scale` times larger.
    anisotropy = inference.anisotropy * scale
    plans = plan_views(
        (depth, height, width),
        anisotropy,
        tile_shape,
        model_config,
        inference.overlap,
        object_diameter,
    )
    iso_depth = plans["xz"].plane_shape[0] if "xz" in plans else depth
    per_volume = sum(
        (depth, height, width)[plan.axis - 1] * view_tiles(plan, inference.overlap)
        for plan in plans.values()
    )
    total = per_volume * len(volumes)
    labels = np.zeros(tuple(reader.shape[a] for a in reader.label_axes), np.int32)
    out_channels = model_config.out_channels
    probabilities = (
        np.zeros((out_channels, *labels.shape), np.float16) if return_probabilities else None
    )
    done = next_label = 0
    for v, rest in enumerate(volumes):
        where = dict(zip(others, rest, strict=True))

        def batch_index(z: int, where=where) -> tuple[int, ...]:
            return tuple(z if a == "Z" else where[a] for a in reader.batch_axes)

        whole = tuple(slice(0, s) for s in native)
        volume = np.stack(
            [
                resize_plane(reader.read(batch_index(z), whole), (height, width))
                for z in range(depth)
            ],
            axis=1,
        )
        # One sum on the stack's grid, in float16 (probabilities need no more,
        # and a 60 x 1024 x 1024 stack's three channels then take 0.4 GB, not
        # 0.8): side views are resampled to square pixels and back plane by
        # plane (`predict_planes`), so no resampled copy of the stack is held.
        summed = np.zeros((out_channels, depth, height, width), np.float16)
        for name, plan in plans.items():
            planes_done = predict_planes(
                volume,
                plan.axis,
                summed,
                plan.tile_shape,
                predictor,
                inference,
                out_channels,
                view_depth=None if name == "xy" else iso_depth,
            )
            for tiles_done in planes_done:
                yield progress("predict", v, len(volumes), done + tiles_done, total, name)
            done += tiles_done
        del volume
        if len(plans) > 1:
            summed /= np.float16(len(plans))
        if (height, width) != native:
            summed = _restore_planes(summed, native)
        yield progress("instances", v, len(volumes), done, total)
        volume_labels = probabilities_to_labels(summed, model_config.output_kind, instances)
        count = int(volume_labels.max(initial=0))
        if next_label:
            np.add(volume_labels, next_label, out=volume_labels, where=volume_labels > 0)
        next_label += count
        if collector is not None:
            part = "Z" + reader.spatial_axes
            raw = None if image is None else raw_part(image, reader.axes, where, part)
            collector.add(volume_labels, summed, part, where, raw)
        for z in range(depth):
            at = reader.label_index(batch_index(z))
            labels[at] = reader.to_label_order(volume_labels[z])
            if probabilities is not None:
                probabilities[(slice(None), *at)] = reader.to_label_order(
                    summed[:, z], channels=True
                )
    return labels, probabilities


def _restore_planes(probabilities: np.ndarray, native: tuple[int, int]) -> np.ndarray:
    """Return a ``(C, Z, Y, X)`` probability volume resized in XY to ``native``, plane by plane.

    Plane by plane keeps the working memory to one plane (resizing the whole
    volume at once computes it in float64).
    """
    restored = np.empty((*probabilities.shape[:2], *native), probabilities.dtype)
    for z in range(probabilities.shape[1]):
        restored[:, z] = resize_plane(probabilities[:, z].astype(np.float32), native)
    return restored


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
