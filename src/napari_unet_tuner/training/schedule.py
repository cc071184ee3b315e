"""How a run trains: patch and batch sizes for its device, and its learning-rate schedule."""

from __future__ import annotations

import math

import torch

from napari_unet_tuner.config import TrainingConfig


def run_settings(
    config: TrainingConfig, spatial_dims: int, device: torch.device, from_checkpoint: bool
) -> tuple[tuple[int, ...], int, bool]:
    """Return the patch shape, batch size and batch-norm freezing a run uses.

    What ``config`` leaves open is chosen for the device: larger patches and
    batches on a GPU; batch norm frozen when fine-tuning a checkpoint.
    """
    gpu = device.type != "cpu"
    base = (128, 128) if spatial_dims == 2 else (16, 64, 64)
    patch = config.patch_shape or tuple(b * (2 if gpu else 1) for b in base)
    batch = config.batch_size or (16 if gpu else 4)
    freeze_bn = from_checkpoint if config.freeze_batch_norm is None else config.freeze_batch_norm
    return tuple(patch), batch, freeze_bn


def annealed_learning_rate(config: TrainingConfig, seconds: float) -> float:
    """Return the step size ``seconds`` into a run (half a cosine to the end of the budget).

    By time, not by step (torch's ``CosineAnnealingLR`` counts steps): a
    run's length is its time budget, and how many steps fit is not known.
    """
    start, end = config.learning_rate, config.final_learning_rate
    if end is None:
        return start
    done = min(seconds / config.max_seconds, 1.0)
    return end + (start - end) * 0.5 * (1.0 + math.cos(math.pi * done))
