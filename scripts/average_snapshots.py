"""Average the weights of training snapshots (stochastic weight averaging), as one checkpoint.

    .venv/bin/python scripts/average_snapshots.py OUTPUT SNAPSHOT [SNAPSHOT ...]
        [--batches 150]

Snapshots come from ``train_default.py --snapshot-every``: points along one
run at a constant learning rate, where the held-out scores swing from one
snapshot to the next. Averaging their weights (Izmailov et al., 2018) is
the usual cure; the batch-norm statistics of the average are then measured
again on augmented training patches (`train_default.training_pairs`),
because averaged weights do not fit any snapshot's statistics. The card is
the last snapshot's; score the result with
``benchmarks/outline_area.py OUTPUT --instances-from CHECKPOINT`` or
``train_default.py --retune --output OUTPUT``. About 30 s on 2 cores.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
import torch
import train_default
from torch.optim.swa_utils import update_bn

from napari_unet_tuner import Checkpoint, TrainingConfig, load_checkpoint, save_checkpoint
from napari_unet_tuner.config import NormalizationConfig
from napari_unet_tuner.training.data import PatchSampler, build_samples

PATCH_SHAPE = (128, 128)
BATCH_SIZE = 8


def averaged(checkpoints: list[Checkpoint]) -> Checkpoint:
    """The mean of the checkpoints' learned weights, with the last one's card and buffers."""
    last = checkpoints[-1]
    state = {}
    for key, value in last.state_dict.items():
        if value.is_floating_point() and "running_" not in key:
            stacked = torch.stack([c.state_dict[key].float() for c in checkpoints])
            state[key] = stacked.mean(0).to(value.dtype)
        else:
            state[key] = value.clone()
    return Checkpoint(model_config=last.model_config, card=last.card, state_dict=state)


def remeasure_batch_norm(checkpoint: Checkpoint, batches: int) -> Checkpoint:
    """``checkpoint`` with batch-norm statistics averaged over training patches (`update_bn`)."""
    pairs, _ = train_default.training_pairs(crowd=0.5)
    samples, _ = build_samples(pairs, "corrections", 2, 1, NormalizationConfig())
    augmentation = TrainingConfig(**train_default.STRONG_AUGMENTATION)
    sampler = PatchSampler(samples, PATCH_SHAPE, augmentation, np.random.default_rng(0))
    model = checkpoint.build_model()
    batches_of_patches = (torch.from_numpy(sampler.batch(BATCH_SIZE)[0]) for _ in range(batches))
    update_bn(batches_of_patches, model)
    return Checkpoint.from_model(model.eval(), checkpoint.card)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("output", type=Path)
    parser.add_argument("snapshots", type=Path, nargs="+")
    parser.add_argument("--batches", type=int, default=150)
    args = parser.parse_args()
    if args.output.resolve() in {path.resolve() for path in args.snapshots}:
        parser.error("OUTPUT is one of the snapshots: write the average elsewhere")
    checkpoints = [load_checkpoint(path) for path in args.snapshots]
    result = remeasure_batch_norm(averaged(checkpoints), args.batches)
    path = save_checkpoint(result, args.output, overwrite=True)
    print(f"wrote {path}: the average of {len(checkpoints)} snapshots")


if __name__ == "__main__":
    main()
