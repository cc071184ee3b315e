"""Does showing what a new model changed point at its errors on the next image?

A simulated user corrects the 20 worst objects of an image (as
`bench_live.py`), then fine-tunes 60 s. The new model (the one kept, or the
one offered to keep anyway when the run learned nothing) segments the other
images of the same kind, and each is reviewed by one of two queues:

* **doubt**: `review_queue` as after any segmentation (least confident first);
* **changes first**: the objects new against the starting model's
  segmentation of the same image, and the ones it lost
  (`napari_unet_tuner.inference.changes.changed_objects`), then the rest.

Reported per set and seed: the changes (how many; how many of them are
errors against the reference, and how many are fixes), and the errors found
in the first ``--review`` items of each queue (`bench_review.review`: objects
wrong, on nothing, or missed), with AP@0.5 on those images before and after.

    python benchmarks/bench_changes.py           # about 15 minutes on 2 cores
"""

from __future__ import annotations

import argparse
import json

from bench_corrections import sets as loop_sets
from bench_live import annotations, worst_objects
from bench_review import RESULTS, cpu_flags, review

from napari_unet_tuner import TrainingConfig, fine_tune, segment
from napari_unet_tuner.inference.changes import changed_objects
from napari_unet_tuner.inference.objects import review_queue
from napari_unet_tuner.model.checkpoint import default_checkpoint_path
from napari_unet_tuner.model.loading import load_checkpoint
from napari_unet_tuner.training.metrics import average_precision, iou_table


def change_outcomes(changes, before, after, truth) -> dict:
    """How many changes made an error (or fixed one) against the reference."""
    ious, _, after_ids = iou_table(truth, after)
    right_after = set(after_ids[ious.max(axis=0) >= 0.5]) if ious.size else set()
    ious_before, _, before_ids = iou_table(truth, before)
    right_before = (
        dict(zip(before_ids, ious_before.max(axis=0), strict=True)) if ious_before.size else {}
    )
    errors = fixes = 0
    for row in changes.to_dict("records"):
        if row["change"] == "new":
            if row["label"] in right_after:
                fixes += 1
            else:
                errors += 1
        else:
            at = tuple(int(round(row[f"centroid-{a}"])) for a in range(before.ndim))
            lost = before[at]
            # A lost object that was right is an error; one on nothing, a fix.
            if lost and right_before.get(lost, 0.0) >= 0.5:
                errors += 1
            elif lost:
                fixes += 1
    return {"changes": len(changes), "change_errors": errors, "change_fixes": fixes}


def errors_found(labels, truth, queue, count: int) -> int:
    _, _, found = review(labels, truth, queue.head(count))
    return found["fixed"] + found["deleted"] + found["added"]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sets", nargs="+", default=["dsb", "hela", "bbbc007", "hela_junk"])
    parser.add_argument("--seeds", type=int, default=2)
    parser.add_argument("--review", type=int, default=10)
    parser.add_argument("--budget", type=float, default=60.0)
    args = parser.parse_args()
    start = load_checkpoint(default_checkpoint_path())
    all_sets = loop_sets()
    rows = []
    for name in args.sets:
        (image, truth), others = all_sets[name]
        result = segment(image, start)
        steps = annotations(image, truth, result, worst_objects(result.labels, truth, 20))
        before = [segment(other, start) for other, _ in others]
        for seed in range(args.seeds):
            run = fine_tune([steps[-1]], start, TrainingConfig(max_seconds=args.budget, seed=seed))
            model = run.checkpoint if run.learned else run.candidate
            if model is None:
                rows.append({"set": name, "seed": seed, "model": "none"})
                print(json.dumps(rows[-1]), flush=True)
                continue
            for index, ((other, other_truth), old) in enumerate(zip(others, before, strict=True)):
                new = segment(other, model)
                changes = changed_objects(old.labels, new.labels)
                doubt = review_queue(new.objects, new.possible_misses)
                first = review_queue(new.objects, new.possible_misses, changes)
                rows.append(
                    {
                        "set": name,
                        "seed": seed,
                        "image": index,
                        "model": "kept" if run.learned else "offered anyway",
                        "ap_before": average_precision(other_truth, old.labels, 0.5),
                        "ap_after": average_precision(other_truth, new.labels, 0.5),
                        **change_outcomes(changes, old.labels, new.labels, other_truth),
                        "errors_doubt": errors_found(new.labels, other_truth, doubt, args.review),
                        "errors_changes_first": errors_found(
                            new.labels, other_truth, first, args.review
                        ),
                    }
                )
                print(json.dumps(rows[-1]), flush=True)
    report = {"cpu": cpu_flags(), "settings": vars(args), "rows": rows}
    (RESULTS / "changes.json").write_text(json.dumps(report, indent=1))


if __name__ == "__main__":
    main()
