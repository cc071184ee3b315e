"""Holding out whole objects, by image region, for a validation that does not leak."""

from __future__ import annotations

import itertools
import math
from collections import defaultdict

import numpy as np

from napari_unet_tuner.training.corrections import object_ids
from napari_unet_tuner.training.data import Sample
from napari_unet_tuner.training.targets import IGNORE

_SPLIT_BLOCKS_PER_AXIS = 5
# Fewer unchanged objects than this: hold nothing out (a score on one or two
# objects says nothing).
_MIN_OBJECTS_TO_SPLIT = 10
# At most this share of the objects is held out, whatever the blocks hold.
_MAX_HELD_OUT_SHARE = 0.5
# This many corrected objects or more make a labelling rather than a review
# (a new kind of image labelled whole, or many scribbled objects): a part of
# them is held out too, and the model kept is the one that generalizes best.
# Fewer would leave too few held out to choose by: on the 63 bacteria of 16
# labelled frames, 17 held-out objects (AP moving by 0.06 per object) chose
# worse models than the corrections reproduced (AP 0.33-0.60 on later frames
# against 0.73).
MANY_CORRECTIONS = 250


def split_validation(
    samples: list[Sample],
    fraction: float,
    rng: np.random.Generator,
    spare_corrections: bool = False,
) -> bool:
    """Hold out about ``fraction`` of the objects that may be spared, by region, for validation.

    Each annotated image is cut into a grid of blocks over Y and X, the
    same blocks in every plane and time point of that image: the same
    nucleus one plane or one frame away is held out with it. A held-out
    block takes the whole objects that touch it, so no held-out object is
    partly trained on; in a Z-stack of 3D objects, the whole 3D object in
    every plane, also where its cross-section leaves the block. Blocks
    with a correction (a corrected, deleted or painted object, or any
    changed pixel) are not held out: what the user corrected is learned.
    With ``spare_corrections`` (`many_corrections`: a labelling rather than
    a review) any block may be: only a held-out part of a large labelling
    tells a model that generalizes from one that memorized. Held-out pixels
    are removed from the training targets and from the objects
    `count_corrections` scores.

    Returns False (and holds nothing out) when too few objects could be
    spared. Validation then scores the corrections on the training
    annotation, or, for annotations with no corrections known (training
    from scratch), the training annotation itself.
    """
    blocks = _candidate_blocks(samples, spare_corrections) if fraction > 0 else []
    # Objects that may be held out, each once (blocks share objects on their edges).
    spare: dict[int, set] = defaultdict(set)
    for masks in blocks:
        for index, mask in masks.items():
            spare[index].update(object_ids(samples[index].instances[mask]).tolist())
    total = sum(len(ids) for ids in spare.values())
    held = 0
    if total >= _MIN_OBJECTS_TO_SPLIT and len(blocks) >= 2:
        for i in rng.permutation(len(blocks)):
            if held >= fraction * total:
                break
            # Only pixels not held out by an earlier block: an object touching
            # two blocks is held out once, keeps its truth in the validation
            # targets, and counts once.
            masks = {
                index: mask & (samples[index].targets != IGNORE)
                for index, mask in blocks[i].items()
            }
            count = sum(len(object_ids(samples[j].instances[m])) for j, m in masks.items())
            if not count or held + count > _MAX_HELD_OUT_SHARE * total:
                continue
            for index, mask in masks.items():
                sample = samples[index]
                sample.val_targets[mask] = sample.targets[mask]
                sample.targets[mask] = IGNORE
                if sample.corrections is not None:
                    for objects in (
                        sample.corrections.unchanged,
                        sample.corrections.corrected,
                        sample.corrections.deleted,
                    ):
                        objects[mask] = 0
                    sample.corrections.emphasis[mask] = False
            held += count
    if held:
        return True
    if all(_nothing_to_fix(s) for s in samples):
        for sample in samples:
            sample.val_targets = sample.targets.copy()
    return False


def _nothing_to_fix(sample: Sample) -> bool:
    return sample.corrections is None or not sample.corrections.fix_mask.any()


def many_corrections(samples: list[Sample]) -> bool:
    """Whether the annotations correct `MANY_CORRECTIONS` objects or more together."""
    return (
        sum(len(object_ids(s.corrections.corrected)) for s in samples if s.corrections)
        >= MANY_CORRECTIONS
    )


def _candidate_blocks(
    samples: list[Sample], spare_corrections: bool
) -> list[dict[int, np.ndarray]]:
    """Blocks that may be held out, with objects: ``{sample index: held-out mask}`` each."""
    by_source: dict[int, list[int]] = defaultdict(list)
    for index, sample in enumerate(samples):
        by_source[sample.source].append(index)
    fixes = [
        s.corrections.fix_mask
        if s.corrections is not None and not spare_corrections
        else np.zeros(s.targets.shape, bool)
        for s in samples
    ]
    blocks = []
    for indices in by_source.values():
        plane_shape = samples[indices[0]].targets.shape[-2:]
        steps = [max(1, math.ceil(s / _SPLIT_BLOCKS_PER_AXIS)) for s in plane_shape]
        for y, x in itertools.product(
            *(range(0, s, st) for s, st in zip(plane_shape, steps, strict=True))
        ):
            block = (..., slice(y, y + steps[0]), slice(x, x + steps[1]))
            touching = _touching_ids(samples, indices, block)
            masks = {}
            for index in indices:
                mask = _held_out_mask(samples[index], fixes[index], block, touching[index])
                if mask is None:
                    masks = {}
                    break
                if len(touching[index]):
                    masks[index] = mask
            if masks:
                blocks.append(masks)
    return blocks


def _touching_ids(samples: list[Sample], indices: list[int], block: tuple) -> dict:
    """Return the object ids touching ``block`` in each sample, as ``{index: ids}``.

    The XY planes of one Z-stack of 3D objects share their ids: an object
    touching the block in any plane is taken in all of them, so no part of
    a held-out 3D object is trained on.
    """
    own = {i: object_ids(samples[i].instances[block]) for i in indices}
    stacks: dict[tuple, list[int]] = defaultdict(list)
    for i in indices:
        if samples[i].stack_plane is not None:
            stacks[samples[i].stack_plane[0]].append(i)
    for planes in stacks.values():
        shared = np.unique(np.concatenate([own[i] for i in planes]))
        for i in planes:
            own[i] = shared[np.isin(shared, samples[i].instances)]
    return own


def _held_out_mask(
    sample: Sample, fixes: np.ndarray, block: tuple, touching: np.ndarray
) -> np.ndarray | None:
    """Return the block grown to the whole ``touching`` objects.

    ``None`` when the block may not be held out (it holds a correction, or
    an object touching it touches one).
    """
    if fixes[block].any():
        return None
    mask = np.zeros(sample.targets.shape, bool)
    mask[block] = sample.targets[block] != IGNORE
    if len(touching):
        lookup = np.zeros(int(sample.instances.max()) + 1, bool)
        lookup[touching] = True
        whole = lookup[sample.instances]
        if (whole & fixes).any():
            return None
        mask |= whole
    return mask
