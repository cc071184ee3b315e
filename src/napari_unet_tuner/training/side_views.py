"""Side views of annotated Z-stacks: the XZ and YZ planes a 2D model also learns from.

3D segmentation (`napari_unet_tuner.inference.stack`) runs the 2D model on
the XY, XZ and YZ planes of a stack and averages them; a model fine-tuned on
XY planes alone learns a third of what it is then judged on. An annotation
of 3D objects (``AnnotatedImage(stack="3d")``) gives the side views too:
each XZ and YZ plane of the stacked XY samples, its Z axis resampled to
square pixels as segmentation resamples it. Stacks shallower than
`TRAINING_SIDE_VIEW_DEPTH` give none.

Side views are made after the held-out split (`split_validation`) from the
XY samples' targets: a pixel held out or unknown in XY is unknown in every
view, so nothing held out is trained on from the side. They are training
patches only; validation scores the XY planes, as before.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Mapping, Sequence

import numpy as np
from skimage.transform import resize

from napari_unet_tuner.inference.stack_views import side_view_depth
from napari_unet_tuner.training.corrections import CorrectionMap
from napari_unet_tuner.training.data import Sample
from napari_unet_tuner.training.targets import IGNORE, annotation_to_targets

# Side views of stacks shallower than this (square pixels) cut most objects,
# and segmentation runs such stacks from their XY planes alone
# (`napari_unet_tuner.inference.stack_views.has_side_views`, which also weighs the
# objects' size): nothing to learn for it there. bench_stack_finetune's
# figures are with this depth.
TRAINING_SIDE_VIEW_DEPTH = 48


def side_view_samples(samples: Sequence[Sample], anisotropy: Mapping[int, float]) -> list[Sample]:
    """Return the XZ and YZ planes of every annotated Z-stack among ``samples``.

    Parameters
    ----------
    samples : sequence of Sample
        Training samples after the held-out split; those with a
        ``stack_plane`` are the XY planes of 3D annotations.
    anisotropy : mapping of int to float
        Z step over pixel size, by ``Sample.source``.

    Returns
    -------
    list of Sample
        One sample per XZ and YZ plane with anything known, its targets
        computed from the 3D objects as seen in that plane.
    """
    stacks: dict[tuple, dict[int, Sample]] = defaultdict(dict)
    for sample in samples:
        if sample.stack_plane is not None:
            volume, z = sample.stack_plane
            stacks[(sample.source, volume)][z] = sample
    out = []
    for (source, _), planes in stacks.items():
        ordered = [planes[z] for z in sorted(planes)]
        out += _views_of_stack(ordered, source, anisotropy.get(source, 1.0))
    return out


def _views_of_stack(planes: list[Sample], source: int, anisotropy: float) -> list[Sample]:
    depth = len(planes)
    iso_depth = side_view_depth(depth, anisotropy)
    if iso_depth < TRAINING_SIDE_VIEW_DEPTH:
        return []
    image = np.stack([p.image for p in planes], axis=1)  # (C, Z, Y, X)
    objects = np.stack([p.instances for p in planes])
    unknown = np.stack([p.targets == IGNORE for p in planes])
    emphasis = np.stack(
        [
            p.corrections.emphasis if p.corrections is not None else np.zeros_like(p.targets, bool)
            for p in planes
        ]
    )
    if iso_depth != depth:
        image = resize(image, (image.shape[0], iso_depth, *image.shape[2:]), order=1)
        image = image.astype(np.float32)
        objects, unknown, emphasis = (
            resize(
                a, (iso_depth, *a.shape[1:]), order=0, preserve_range=True, anti_aliasing=False
            ).astype(a.dtype)
            for a in (objects, unknown, emphasis)
        )
    views = []
    for axis in (1, 2):  # along Y: XZ planes; along X: YZ planes
        for index in range(objects.shape[axis]):
            at = (slice(None),) * axis + (index,)
            known = ~unknown[at]
            if not known.any():
                continue
            plane_objects = np.ascontiguousarray(objects[at])
            targets = annotation_to_targets(plane_objects, "corrections")
            targets[~known] = IGNORE
            none = np.zeros_like(plane_objects)
            views.append(
                Sample(
                    image=np.ascontiguousarray(image[(slice(None), *at)]),
                    targets=targets,
                    val_targets=np.full_like(targets, IGNORE),
                    instances=plane_objects,
                    source=source,
                    corrections=CorrectionMap(
                        none, none, none, emphasis[at] & known, known, plane_objects
                    ),
                )
            )
    return views
