"""The training loss: over annotated pixels only, stressing boundaries and corrections."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from napari_unet_tuner.inference.instances import BOUNDARY, DISTANCE
from napari_unet_tuner.training.targets import DISTANCE_SCALE, IGNORE

# Value of the emphasis channel outside a reviewed mask (1: corrected pixels).
UNREVIEWED = 2


def masked_loss(
    logits: torch.Tensor,
    targets: torch.Tensor,
    boundary_weight: float = 4.0,
    contact_weight: float = 1.0,
    emphasis: torch.Tensor | None = None,
    correction_weight: float = 1.0,
    unreviewed_weight: float = 1.0,
) -> torch.Tensor:
    """Loss over annotated pixels only; `IGNORE` pixels contribute nothing.

    Cross-entropy over background / interior / boundary for 3-channel
    models, binary cross-entropy of the foreground for 1-channel ones.
    Boundary pixels weigh ``boundary_weight``; those where two objects touch
    (no background next to them) weigh ``contact_weight`` times more, as
    the U-Net paper weights the gaps between touching cells: a missed
    contact merges two objects, a missed rim only shifts an outline.
    Pixels where ``emphasis`` is true (where the user corrected the
    prediction) weigh ``correction_weight`` times more: a few corrections
    among a whole image of unchanged pixels would otherwise be a few
    percent of the loss. Pixels where ``emphasis`` is `UNREVIEWED` (outside
    what the user reviewed, the starting model's prediction as target)
    weigh ``unreviewed_weight``.

    4-channel (``boundary3_distance``) models take ``targets`` of shape
    ``(N, 2, *spatial)``: classes, and `classes_to_distance` of them; the
    loss adds the binary cross-entropy of the distance channel against
    that fraction, over the pixels where it is known.
    """
    pixel_weight = None
    if emphasis is not None and (correction_weight != 1.0 or unreviewed_weight != 1.0):
        pixel_weight = (
            1.0
            + (correction_weight - 1.0) * (emphasis == 1).float()
            + (unreviewed_weight - 1.0) * (emphasis == UNREVIEWED).float()
        )
    if logits.shape[1] == DISTANCE + 1:
        classes, distance = targets[:, 0], targets[:, 1]
        known = distance != IGNORE
        fraction = distance.to(torch.float32) / DISTANCE_SCALE
        per_pixel = F.binary_cross_entropy_with_logits(
            logits[:, DISTANCE].float(), fraction, reduction="none"
        )
        distance_loss = _weighted_mean(per_pixel, known.float(), pixel_weight, logits)
        class_loss = masked_loss(
            logits[:, :DISTANCE],
            classes,
            boundary_weight,
            contact_weight,
            emphasis,
            correction_weight,
            unreviewed_weight,
        )
        return class_loss + distance_loss
    known = targets != IGNORE
    if not known.any():
        return logits.sum() * 0.0
    if logits.shape[1] == 1:
        fg = (targets > 0).to(logits.dtype)
        per_pixel = F.binary_cross_entropy_with_logits(
            logits[:, 0].float(), fg.float(), reduction="none"
        )
        return _weighted_mean(per_pixel, known.float(), pixel_weight, logits)
    weight = torch.tensor([1.0, 1.0, boundary_weight], device=logits.device, dtype=torch.float32)
    if contact_weight == 1.0 and pixel_weight is None:
        return F.cross_entropy(logits.float(), targets.long(), weight=weight, ignore_index=IGNORE)
    classes = torch.where(known, targets, torch.zeros_like(targets)).long()
    per_pixel = F.cross_entropy(logits.float(), classes, reduction="none")
    class_weight = weight[classes] * known
    if contact_weight != 1.0:
        class_weight = class_weight * _contact_map(targets).mul(contact_weight - 1.0).add(1.0)
    return _weighted_mean(per_pixel, class_weight, pixel_weight, logits)


def _weighted_mean(per_pixel, weight, pixel_weight, logits) -> torch.Tensor:
    if pixel_weight is not None:
        weight = weight * pixel_weight
    total = weight.sum()
    if total == 0:
        return logits.sum() * 0.0
    return (per_pixel * weight).sum() / total


def _contact_map(targets: torch.Tensor) -> torch.Tensor:
    """1.0 at boundary pixels with no background (nor unknown) pixel in their neighbourhood."""
    open_space = ((targets == 0) | (targets == IGNORE)).float().unsqueeze(1)
    pool = F.max_pool2d if targets.ndim == 3 else F.max_pool3d
    near_open = pool(open_space, 3, stride=1, padding=1).squeeze(1) > 0
    return ((targets == BOUNDARY) & ~near_open).float()
