"""Fine-tuning a 2D model on 3D objects: XY planes only, or XY, XZ and YZ (issue 23).

    .venv/bin/python benchmarks/bench_stack_finetune.py [--seeds 0 1 2] [--seconds 60]

The cells3d nuclei stack (labels computer-made): its left half (the part the
default's training saw every third plane of) is given as corrections of the
default's own 3D segmentation, as a user who corrected every nucleus in 3D
would give it. The default is fine-tuned on it for the budget with
``stack="planes"`` (XY planes only) and ``stack="3d"`` (also XZ and YZ), side
by side for each seed; each child then segments the held-out right half in
3D. Reported: 3D AP@0.5 and AP@0.75 of the held-out half, before and after,
mean and sd over seeds. Writes results/stack_finetune.json.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np

from napari_unet_tuner import AnnotatedImage, InferenceConfig, TrainingConfig, fine_tune, segment
from napari_unet_tuner.model.checkpoint import default_checkpoint_path
from napari_unet_tuner.model.loading import load_checkpoint
from napari_unet_tuner.training.metrics import average_precision

import datasets

RESULTS = Path(__file__).parent / "results"
# cells3d: 0.29 um planes of 0.26 um pixels (skimage's cells3d).
ANISOTROPY = 0.29 / 0.26


def scores(checkpoint, volume, truth) -> dict[str, float]:
    config = InferenceConfig(stack="3d", anisotropy=ANISOTROPY, diameter=None)
    labels = segment(volume, checkpoint, axes="ZYX", inference=config).labels
    return {
        f"ap{round(t * 100)}": round(average_precision(truth, labels, t), 3) for t in (0.5, 0.75)
    }


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--seconds", type=float, default=60.0)
    args = parser.parse_args()
    start = load_checkpoint(default_checkpoint_path())
    cells, truth = datasets.cells3d_nuclei()
    split = datasets.CELLS3D_SPLIT_X
    train, train_truth = cells[:, :, :split], truth[:, :, :split]
    test, test_truth = cells[:, :, split:], truth[:, :, split:]
    config = InferenceConfig(stack="3d", anisotropy=ANISOTROPY, diameter=None)
    prediction = segment(train, start, axes="ZYX", inference=config).labels
    report = {
        "budget_seconds": args.seconds,
        "before": scores(start, test, test_truth),
        "runs": [],
    }
    print("before", report["before"], flush=True)
    for seed in args.seeds:
        for stack in ("planes", "3d"):
            item = AnnotatedImage(
                train,
                train_truth,
                "corrections",
                prediction=prediction,
                axes="ZYX",
                scale=1.0,
                stack=stack,
                anisotropy=ANISOTROPY,
            )
            t0 = time.perf_counter()
            result = fine_tune(
                [item], start, config=TrainingConfig(max_seconds=args.seconds, seed=seed)
            )
            row = {
                "seed": seed,
                "stack": stack,
                "seconds": round(time.perf_counter() - t0, 1),
                "steps": result.history[-1].step if result.history else 0,
                "learned": result.learned,
                "stop": result.stop_reason,
                **scores(result.checkpoint, test, test_truth),
            }
            report["runs"].append(row)
            print(json.dumps(row), flush=True)
    for stack in ("planes", "3d"):
        rows = [r for r in report["runs"] if r["stack"] == stack]
        report[stack] = {
            key: [
                round(float(np.mean([r[key] for r in rows])), 3),
                round(float(np.std([r[key] for r in rows])), 3),
            ]
            for key in ("ap50", "ap75")
        }
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / "stack_finetune.json").write_text(json.dumps(report, indent=1))
    print(json.dumps({k: report[k] for k in ("before", "planes", "3d")}))


if __name__ == "__main__":
    main()
