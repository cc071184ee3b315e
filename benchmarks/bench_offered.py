"""The model a fine-tuning run keeps, and the one it offers to keep anyway, on other images.

The simulated user of `bench_live.py` corrects the 20 worst objects of an
image and fine-tunes 60 s; printed per set and seed (one JSON line each):
whether the run learned, why it stopped, and AP@0.5 on the other images of
the same kind of the starting model, the kept model and the candidate
offered to keep anyway (``FineTuneResult.candidate``). ``--keep-right K``:
the user also keeps the K objects the model got most right, as they are
(the advice the verdict gives a review of deletions alone).

To compare with an older version of the package, run it twice, once with
``PYTHONPATH=<older checkout>/src``, one set after the other.

    python benchmarks/bench_offered.py --sets hela_junk dsb_junk dsb   # about 10 minutes
"""

from __future__ import annotations

import argparse
import json

import numpy as np
import pandas as pd
from bench_corrections import sets as loop_sets
from bench_live import worst_objects
from bench_review import review

from napari_unet_tuner import AnnotatedImage, TrainingConfig, fine_tune, segment
from napari_unet_tuner.model.checkpoint import default_checkpoint_path
from napari_unet_tuner.model.loading import load_checkpoint
from napari_unet_tuner.training.metrics import average_precision, iou_table


def ap_on(checkpoint, others) -> float:
    return float(
        np.mean([average_precision(t, segment(i, checkpoint).labels, 0.5) for i, t in others])
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sets", nargs="+", default=["hela_junk", "dsb_junk", "dsb"])
    parser.add_argument("--seeds", type=int, default=2)
    parser.add_argument("--budget", type=float, default=60.0)
    parser.add_argument("--keep-right", type=int, default=0)
    args = parser.parse_args()
    start = load_checkpoint(default_checkpoint_path())
    all_sets = loop_sets()
    for name in args.sets:
        (image, truth), others = all_sets[name]
        result = segment(image, start)
        items = [worst_objects(result.labels, truth, 20)]
        if args.keep_right:
            ious, _, ids = iou_table(truth, result.labels)
            best = np.argsort(-ious.max(axis=0), kind="stable")[: args.keep_right]
            items.append(pd.DataFrame({"kind": "object", "label": ids[best]}))
        annotation, reviewed, _ = review(result.labels, truth, pd.concat(items))
        annotated = AnnotatedImage(
            image, annotation, prediction=result.labels, reviewed=reviewed, scale=result.scale
        )
        before = ap_on(start, others)
        for seed in range(args.seeds):
            config = TrainingConfig(max_seconds=args.budget, seed=seed)
            run = fine_tune([annotated], start, config)
            row = {
                "set": name,
                "seed": seed,
                "keep_right": args.keep_right,
                "ap_start": round(before, 3),
                "learned": bool(run.learned),
                "stop_reason": run.stop_reason,
                "ap_kept": round(ap_on(run.checkpoint, others), 3),
                "ap_offered": (
                    None if run.candidate is None else round(ap_on(run.candidate, others), 3)
                ),
                "message": run.message,
            }
            print(json.dumps(row), flush=True)


if __name__ == "__main__":
    main()
