"""How the foreground threshold sizes the outlines of checkpoints on the held-out sets.

    .venv/bin/python benchmarks/outline_area.py CHECKPOINT [CHECKPOINT ...]
        [--thresholds 0.5 0.7 0.9] [--instances-from CHECKPOINT]

For each checkpoint and held-out set (`datasets.held_out_sets`), and for
foreground thresholds 0.5 / 0.7 / 0.9 (the card's other instance settings
kept, or those of ``--instances-from``: snapshots saved during training
carry the trainer's interim settings, not tuned ones), prints AP@0.5,
AP@0.75 and the median ratio of predicted to true area over the nuclei
found (IoU > 0.5). A diagnosis, not a benchmark: it is not run by
run_all.sh, and nothing is chosen from the hand-annotated image.
It showed that at the card's threshold (0.9) outlines on the hand-annotated
DSB2018 image cover less of each nucleus than on the computer-labelled sets,
and more so for a model trained longer (BENCHMARKS.md, "Recipes tried").
About 15 s per checkpoint on 2 cores.
"""

from __future__ import annotations

import argparse
from dataclasses import replace
from pathlib import Path

import numpy as np

from napari_unet_tuner import load_checkpoint, segment
from napari_unet_tuner.inference.instances import probabilities_to_labels
from napari_unet_tuner.training.metrics import matched_ious

import datasets

THRESHOLDS = (0.5, 0.7, 0.9)


def matched_area_ratio(truth: np.ndarray, prediction: np.ndarray) -> list[float]:
    """Predicted / true area of each true object matched at IoU > 0.5 (a match is unique)."""
    ious = matched_ious(truth, prediction)
    true_area = np.unique(truth[truth > 0], return_counts=True)[1]
    predicted_area = np.unique(prediction[prediction > 0], return_counts=True)[1]
    rows, cols = np.nonzero(ious > 0.5)
    return list(predicted_area[cols] / true_area[rows])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("checkpoints", type=Path, nargs="+")
    parser.add_argument("--thresholds", type=float, nargs="+", default=THRESHOLDS)
    parser.add_argument(
        "--instances-from",
        type=Path,
        help="use this checkpoint's instance settings (all but the threshold) for every one",
    )
    args = parser.parse_args()
    sets = datasets.held_out_sets()
    shared = None
    if args.instances_from:
        shared = load_checkpoint(args.instances_from).card.instance_config
    for path in args.checkpoints:
        checkpoint = load_checkpoint(path)
        instances = shared or checkpoint.card.instance_config
        kind = checkpoint.model_config.output_kind
        print(f"{path}: {instances}")
        for name, pairs in sets.items():
            probabilities = [
                segment(image, checkpoint, return_probabilities=True).probabilities
                for image, _ in pairs
            ]
            cells = []
            for threshold in args.thresholds:
                config = replace(instances, threshold=threshold)
                predictions = [probabilities_to_labels(p, kind, config) for p in probabilities]
                ap = datasets.mean_ap([truth for _, truth in pairs], predictions)
                ratios = [
                    r
                    for (_, truth), prediction in zip(pairs, predictions, strict=True)
                    for r in matched_area_ratio(truth, prediction)
                ]
                area = f"{np.median(ratios):.2f}" if ratios else "-"
                cells.append(f"{threshold}: {ap['ap50']:.3f} / {ap['ap75']:.3f}, area {area}")
            print(f"  {name[:40]:40s} " + " | ".join(cells), flush=True)


if __name__ == "__main__":
    main()
