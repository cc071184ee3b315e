"""Learning while correcting against correcting, then fine-tuning (issue 39).

A simulated user corrects the 20 worst objects of an image (lowest IoU with
the reference first; each fixed as ``bench_review.review`` does: redrawn as
the reference, deleted when on nothing, kept when right), one every
``--every`` seconds:

* **live**: `LiveTrainer` trains from the first correction on, given the
  annotation after each one, and goes on for ``--budget`` seconds after the
  last; the model offered last is kept.
* **batch**: the same 20 corrections, then `fine_tune` for ``--budget``
  seconds (the user's correcting time is not computed: the same total time).

Reported per set and seed: seconds from the last correction to a model
reproducing at least 90 % of the corrections (live: on the last annotation;
batch: from the start of fine-tuning, which begins at the last correction),
and AP@0.5 on other images of the same kind with the model kept.

    python benchmarks/bench_live.py                    # about 25 minutes on 2 cores
"""

from __future__ import annotations

import argparse
import json
import threading
import time

import numpy as np
import pandas as pd
from bench_corrections import sets as loop_sets
from bench_review import RESULTS, cpu_flags, review

from napari_unet_tuner import (
    AnnotatedImage,
    InputError,
    LiveTrainer,
    TrainingConfig,
    iter_fine_tune,
    segment,
)
from napari_unet_tuner.model.checkpoint import default_checkpoint_path
from napari_unet_tuner.model.loading import load_checkpoint
from napari_unet_tuner.training.metrics import average_precision, iou_table

REPRODUCED = 0.9


def worst_objects(labels: np.ndarray, truth: np.ndarray, count: int) -> pd.DataFrame:
    """The ``count`` predicted objects with the lowest IoU against the reference, worst first."""
    ious, _, predicted_ids = iou_table(truth, labels)
    best = ious.max(axis=0) if ious.size else np.zeros(len(predicted_ids))
    order = np.argsort(best, kind="stable")[:count]
    return pd.DataFrame({"kind": "object", "label": predicted_ids[order]})


def reproduced(counts) -> bool:
    return counts is not None and counts.to_fix > 0 and counts.fixed >= REPRODUCED * counts.to_fix


def ap_on(others, checkpoint) -> float:
    return float(
        np.mean([average_precision(t, segment(o, checkpoint).labels, 0.5) for o, t in others])
    )


def annotations(image, truth, result, items: pd.DataFrame) -> list[AnnotatedImage]:
    """What the user has painted after reviewing ``items``: one annotation per step."""
    steps = []
    for k in range(1, len(items) + 1):
        annotation, reviewed, _ = review(result.labels, truth, items.head(k))
        steps.append(
            AnnotatedImage(
                image, annotation, prediction=result.labels, reviewed=reviewed, scale=result.scale
            )
        )
    return steps


def live_arm(checkpoint, steps, seed: int, every: float, budget: float) -> dict:
    trainer = LiveTrainer(checkpoint, TrainingConfig(seed=seed))
    log: list[tuple[float, int, object]] = []

    def train() -> None:
        for record in trainer.run():
            if record.kind == "validation":
                log.append((time.perf_counter(), trainer.version, record.corrections))

    thread = threading.Thread(target=train)
    thread.start()
    start = time.perf_counter()
    for k, step in enumerate(steps):
        time.sleep(max(0.0, start + k * every - time.perf_counter()))
        trainer.update([step])
    last = time.perf_counter()
    given = len(steps)
    time.sleep(budget)
    trainer.stop()
    thread.join()
    after = [(t - last, counts) for t, version, counts in log if version == given]
    when = next((t for t, counts in after if reproduced(counts)), None)
    final = after[-1][1] if after else None
    return {
        "seconds_to_reproduce": when,
        "reproduced_at_end": None if final is None else f"{final.fixed}/{final.to_fix}",
        "offered": trainer.best is not None,
        "checkpoint": trainer.best or checkpoint,
    }


def batch_arm(checkpoint, steps, seed: int, budget: float) -> dict:
    run = iter_fine_tune([steps[-1]], checkpoint, TrainingConfig(max_seconds=budget, seed=seed))
    when = None
    try:
        first = next(run)  # prepares the run: an annotation with nothing to learn fails here
    except InputError as error:
        return {
            "seconds_to_reproduce": None,
            "reproduced_at_end": str(error),
            "offered": False,
            "checkpoint": checkpoint,
        }
    if reproduced(first.corrections):
        when = first.elapsed
    try:
        while True:
            record = next(run)
            if record.kind == "validation" and when is None and reproduced(record.corrections):
                when = record.elapsed
    except StopIteration as done:
        result = done.value
    after = result.corrections_after
    return {
        "seconds_to_reproduce": when,
        "reproduced_at_end": None if after is None else f"{after.fixed}/{after.to_fix}",
        "offered": bool(result.learned),
        "checkpoint": result.checkpoint,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sets", nargs="+", default=["bbbc007", "hela"])
    parser.add_argument("--seeds", type=int, default=3)
    parser.add_argument("--objects", type=int, default=20)
    parser.add_argument("--every", type=float, default=5.0)
    parser.add_argument("--budget", type=float, default=60.0)
    args = parser.parse_args()
    checkpoint = load_checkpoint(default_checkpoint_path())
    all_sets = loop_sets()
    rows = []
    for name in args.sets:
        (image, truth), others = all_sets[name]
        result = segment(image, checkpoint)
        items = worst_objects(result.labels, truth, args.objects)
        steps = annotations(image, truth, result, items)
        _, _, counts = review(result.labels, truth, items)
        before = ap_on(others, checkpoint)
        for seed in range(args.seeds):
            for arm in ("live", "batch"):
                if arm == "live":
                    out = live_arm(checkpoint, steps, seed, args.every, args.budget)
                else:
                    out = batch_arm(checkpoint, steps, seed, args.budget)
                row = {
                    "set": name,
                    "arm": arm,
                    "seed": seed,
                    **counts,
                    "ap_other_before": before,
                    "ap_other_after": ap_on(others, out.pop("checkpoint")),
                    **out,
                }
                rows.append(row)
                print(json.dumps(row), flush=True)
    # Sets not run this time keep their earlier rows (one set at a time fits a session).
    path = RESULTS / "live.json"
    earlier = json.loads(path.read_text())["rows"] if path.exists() else []
    kept = [r for r in earlier if r["set"] not in args.sets]
    rows = kept + rows
    settings = {**vars(args), "sets": list(dict.fromkeys(r["set"] for r in rows))}
    report = {"cpu": cpu_flags(), "settings": settings, "rows": rows}
    path.write_text(json.dumps(report, indent=1))


if __name__ == "__main__":
    main()
