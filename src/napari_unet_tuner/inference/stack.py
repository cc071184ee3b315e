"""Z-stacks as 3D objects from a 2D model: planes in XY, XZ and YZ, averaged, grown in 3D.

As Cellpose's ``do_3D``: the 2D model sees the stack three ways, each plane
of each orientation tiled as any image; the XZ and YZ planes are first
resampled to square pixels (`InferenceConfig.anisotropy`). The three
probability volumes are averaged, and `probabilities_to_labels` labels
seeds and grows them by a watershed in 3D, so a nucleus that spans twenty
planes is one object. Stacks too shallow for side views (`has_side_views`:
less deep than one object, or objects in too few planes) use the XY planes
alone, their objects found plane by plane and linked by overlap
(`plane_links`). 3D objects far smaller than the rest are fragments, dropped. Each volume (a
time point) is held in memory whole, with one float16 sum of its views'
probabilities, and labelled a block at a time: about 20 bytes per voxel
beyond the image (a 60 x 1024 x 1024 stack in under 2 GB in all). Larger
ones go through the chunked zarr path
(`napari_unet_tuner.inference.stack_chunked`), which shares the views.
"""

from __future__ import annotations

import itertools
from collections.abc import Callable, Generator
from dataclasses import replace

import numpy as np

from napari_unet_tuner.config import InferenceConfig, InstanceConfig, ModelConfig
from napari_unet_tuner.inference.image import ImageReader, resize_plane
from napari_unet_tuner.inference.instances import (
    probabilities_to_labels,
    remove_small_objects,
)
from napari_unet_tuner.inference.object_size import SizeEstimate, scale_for
from napari_unet_tuner.inference.objects import ObjectCollector, raw_part
from napari_unet_tuner.inference.overlaps import object_sizes
from napari_unet_tuner.inference.plane_links import link_planes
from napari_unet_tuner.inference.seed_levels import CORE_SHARE
from napari_unet_tuner.inference.stack_views import plan_views, predict_planes, view_tiles

# Seeds of 3D objects: the three views' averaged interior spreads across
# the faces where nuclei touch (the XY planes see a nucleus on either side),
# so a seed threshold of 2D's 0.4 joins touching nuclei. 3D AP@0.5 by seed
# threshold 0.4 / 0.5 / 0.6 / 0.75 (bench_stack data, Z step known):
# synthetic touching 25-px nuclei, Z step 2, 0.73 / 0.87 / 0.95 / 0.99;
# 40-px, Z step 4, 0.48 / 0.62 / 0.73 / 0.86; but cells3d's whole volume
# 0.68 / 0.68 / 0.66 / 0.58 and CHO frames 16-19 0.67 / 0.67 / 0.66 / 0.63.
# 0.5 gains on crowded nuclei and loses nothing on the real stacks.
STACK_SEED_THRESHOLD = 0.5
# 3D objects smaller than this share of the volume's median object are
# fragments (caps split off a nucleus, slivers of nuclei cut by the volume's
# top, bottom or sides), dropped. 3D AP@0.5 with no share / 0.1 / 0.15 / 0.25:
# cells3d's whole volume 0.83 / 0.91 / 0.95 / 0.95, CHO frames 16-19 (mean)
# 0.72 / 0.87 / 0.89 / 0.95; synthetic touching nuclei of 15-40 px (Z steps
# 1-4, 2 seeds, whose labels keep every cut nucleus) 0.804 / 0.805 / 0.805 / 0.801.
FRAGMENT_SHARE = 0.15
# Fewer objects than this in a volume say nothing of its typical object.
FRAGMENT_MIN_OBJECTS = 5
# 3D runs objects up to this many times the model's diameter as they are
# (2D: `object_size.LARGEST`, 1.6); larger ones are shrunk to it (`stack_scale`).
LARGEST_IN_3D = 1.2


def stack_instances(card_instances: InstanceConfig) -> InstanceConfig:
    """Return a model's instance settings for 3D objects.

    Seeds at `STACK_SEED_THRESHOLD` at least, and seeds of touching nuclei
    split at higher levels (`seed_levels.CORE_SHARE`) unless the card sets a
    share of its own. For runs whose caller gave no instance settings of
    its own (`run_instances`).
    """
    return replace(
        card_instances,
        seed_threshold=max(card_instances.seed_threshold, STACK_SEED_THRESHOLD),
        core_share=CORE_SHARE if card_instances.core_share is None else card_instances.core_share,
    )


def run_instances(
    given: InstanceConfig | None, card_instances: InstanceConfig, in_3d: bool
) -> InstanceConfig:
    """Return the instance settings a run uses: the caller's, or the model's.

    The model's are made stricter for 3D objects (`stack_instances`). A
    caller's are kept as given, except an automatic ``core_share`` (``None``,
    as when only a threshold or a minimum size was set), which 3D objects
    resolve to `seed_levels.CORE_SHARE`: touching nuclei stay apart.
    """
    if given is None:
        return stack_instances(card_instances) if in_3d else card_instances
    if in_3d and given.core_share is None:
        return replace(given, core_share=CORE_SHARE)
    return given


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
    """Return the objects' diameter in the pixels the model sees at ``scale``.

    Measured (``size``) when it was, otherwise the model's own diameter (the
    size it is run at), or ``None`` when neither is known.
    """
    if size is not None and size.diameter is not None:
        return size.diameter * scale
    return model_diameter


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
        if len(plans) > 1:
            volume_labels = probabilities_to_labels(summed, model_config.output_kind, instances)
        else:
            volume_labels = link_planes(summed, model_config.output_kind, instances)
        volume_labels = drop_fragments(volume_labels)
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


def fragment_size(sizes: np.ndarray, share: float = FRAGMENT_SHARE) -> float:
    """Return the voxels under which a 3D object is a fragment: ``share`` of the median object.

    ``sizes``: the voxels of each object (no background; empty ones are not
    counted). 0 when there are fewer than `FRAGMENT_MIN_OBJECTS` objects.
    """
    counted = sizes[sizes > 0]
    if len(counted) < FRAGMENT_MIN_OBJECTS:
        return 0.0
    return share * float(np.median(counted))


def drop_fragments(labels: np.ndarray) -> np.ndarray:
    """Drop the fragments (`fragment_size`) of a volume's 3D labels and renumber, in place."""
    sizes = object_sizes(labels)
    return remove_small_objects(labels, fragment_size(sizes[1:]), sizes)


def _restore_planes(probabilities: np.ndarray, native: tuple[int, int]) -> np.ndarray:
    """Return a ``(C, Z, Y, X)`` probability volume resized in XY to ``native``, plane by plane.

    Plane by plane keeps the working memory to one plane (resizing the whole
    volume at once computes it in float64).
    """
    restored = np.empty((*probabilities.shape[:2], *native), probabilities.dtype)
    for z in range(probabilities.shape[1]):
        restored[:, z] = resize_plane(probabilities[:, z].astype(np.float32), native)
    return restored
