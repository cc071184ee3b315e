"""Guided review: does the model's confidence point at its own errors, and does reviewing them pay?

Three measurements, each on images the default checkpoint never saw in training:

1. **Ranking** (`datasets.held_out_sets`): per image, the share of the default's
   wrong objects (IoU < 0.5 with the reference) among the 10 least confident
   (recall@10, pooled over images) and the share of wrong ones among the 5
   least confident (precision@5), beside a random order and beside the
   mean-interior-probability baseline. Possible misses: how many are real
   missed nuclei.
2. **Cost**: segmentation with and without the object table, side by side.
3. **The loop** (`bench_corrections.sets`): a simulated user reviews the top
   10 of the queue (fixes the wrong, keeps the right; only those and their
   surroundings are reviewed) against one who reviews 10 random objects,
   then fine-tunes 60 s; AP@0.5 on other images of the same kind after.

``--fit`` first fits the confidence (`napari_unet_tuner.inference.objects`)
on the default's *training* images and prints the coefficients to paste.

    python benchmarks/bench_review.py --fit
    python benchmarks/bench_review.py                 # ranking, cost, loop
"""

from __future__ import annotations

import argparse
import json
import platform
import subprocess
import time
from pathlib import Path

import matplotlib
import numpy as np
import pandas as pd
from bench_corrections import sets as loop_sets
from scipy.optimize import minimize

from napari_unet_tuner import AnnotatedImage, InferenceConfig, TrainingConfig, fine_tune, segment
from napari_unet_tuner.inference.objects import FEATURES, review_queue
from napari_unet_tuner.model.checkpoint import default_checkpoint_path
from napari_unet_tuner.model.loading import load_checkpoint
from napari_unet_tuner.training.metrics import average_precision, iou_table
from napari_unet_tuner.training.review import around

import datasets

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

RESULTS = Path(__file__).parent / "results"


def cpu_flags() -> str:
    """The lscpu model and the flags that decide CPU speed here."""
    out = subprocess.run(["lscpu"], capture_output=True, text=True).stdout
    model = next(
        (line.split(":", 1)[1].strip() for line in out.splitlines() if "Model name" in line), "?"
    )
    wanted = ("avx2", "avx512f", "avx512_bf16", "amx_bf16")
    flags = [f for f in wanted if f" {f}" in out]
    return f"{model} ({', '.join(flags)})"


def measured(image, truth, checkpoint) -> tuple[pd.DataFrame, pd.DataFrame, np.ndarray]:
    """The default's objects and possible misses on one image, each marked right or wrong."""
    result = segment(image, checkpoint)
    labels = result.labels
    objects = result.objects.copy()
    ious, truth_ids, predicted_ids = iou_table(truth, labels)
    best = np.zeros(int(labels.max()) + 1)
    if ious.size:
        best[predicted_ids] = ious.max(axis=0)
    objects["iou"] = best[objects["label"].to_numpy()]
    objects["wrong"] = objects["iou"] < 0.5
    # A possible miss is real when it lies on a true object that no predicted one matches.
    unmatched = truth_ids[ious.max(axis=1) < 0.5] if ious.size else np.unique(truth[truth > 0])
    missed_truth = np.isin(truth, unmatched)
    misses = result.possible_misses.copy()
    at = tuple(
        np.clip(misses[f"centroid-{a}"].to_numpy().round().astype(int), 0, truth.shape[a] - 1)
        for a in range(truth.ndim)
    )
    misses["real"] = missed_truth[at] if len(misses) else np.zeros(0, bool)
    return objects, misses, labels


def collect(images: dict[str, list], checkpoint) -> tuple[pd.DataFrame, pd.DataFrame]:
    object_rows, miss_rows = [], []
    for name, pairs in images.items():
        for i, (image, truth) in enumerate(pairs):
            objects, misses, _ = measured(image, truth, checkpoint)
            for table, rows in ((objects, object_rows), (misses, miss_rows)):
                rows.append(table.assign(set=name, image=f"{name}#{i}"))
    return pd.concat(object_rows, ignore_index=True), pd.concat(miss_rows, ignore_index=True)


def fit_logistic(x: np.ndarray, y: np.ndarray, l2: float = 1.0) -> dict:
    """Standardized logistic regression by L-BFGS: mean, scale, weights, bias."""
    mean, scale = x.mean(axis=0), x.std(axis=0) + 1e-9
    z = np.column_stack([(x - mean) / scale, np.ones(len(x))])

    def loss(w):
        logits = z @ w
        return np.sum(np.logaddexp(0, logits) - y * logits) + l2 * np.sum(w[:-1] ** 2)

    w = minimize(loss, np.zeros(z.shape[1]), method="L-BFGS-B").x
    return {
        "mean": [round(float(v), 4) for v in mean],
        "scale": [round(float(v), 4) for v in scale],
        "weights": [round(float(v), 4) for v in w[:-1]],
        "bias": round(float(w[-1]), 4),
    }


def fit(checkpoint) -> dict:
    objects, misses = collect(datasets.training_sets(), checkpoint)
    right = fit_logistic(
        objects[list(FEATURES)].to_numpy(float), (~objects["wrong"]).to_numpy(float)
    )
    real = fit_logistic(
        misses[["foreground_mean"]].to_numpy(float), misses["real"].to_numpy(float)
    )
    return {
        "objects": len(objects),
        "wrong": int(objects["wrong"].sum()),
        "misses": len(misses),
        "real_misses": int(misses["real"].sum()),
        "confidence": right,
        "miss_confidence": real,
    }


def ranking(objects: pd.DataFrame, score: np.ndarray, k: int = 10, top: int = 5) -> dict:
    """recall@k and precision@top of ``score`` (higher = looked at first), pooled over images."""
    found = wrong = hits = shown = achievable = 0
    for _, image in objects.assign(score=score).groupby("image"):
        order = image.sort_values("score", ascending=False, kind="stable")["wrong"].to_numpy()
        found += order[:k].sum()
        wrong += order.sum()
        achievable += min(k, order.sum())
        hits += order[:top].sum()
        shown += min(top, len(order))
    return {
        f"recall@{k}": found / max(wrong, 1),
        f"recall@{k}_of_possible": found / max(achievable, 1),
        f"precision@{top}": hits / max(shown, 1),
    }


def rank_report(objects: pd.DataFrame, misses: pd.DataFrame) -> dict:
    rng = np.random.default_rng(0)
    orders = {
        "confidence": 1 - objects["confidence"].to_numpy(),
        "interior probability": 1 - objects["interior_mean"].to_numpy(),
    }
    report = {"pooled": {}, "per set": {}}
    for name, score in orders.items():
        report["pooled"][name] = ranking(objects, score)
    randoms = [ranking(objects, rng.random(len(objects))) for _ in range(50)]
    report["pooled"]["random"] = {k: float(np.mean([r[k] for r in randoms])) for k in randoms[0]}
    for name, part in objects.groupby("set"):
        report["per set"][name] = {
            "images": int(part["image"].nunique()),
            "objects": len(part),
            "wrong": int(part["wrong"].sum()),
            **{
                order: ranking(part, 1 - part[column].to_numpy())
                for order, column in (("confidence", "confidence"), ("interior", "interior_mean"))
            },
        }
    report["objects"], report["wrong"] = len(objects), int(objects["wrong"].sum())
    report["possible misses"] = {
        "listed": len(misses),
        "real": int(misses["real"].sum()),
        "per image": len(misses) / max(objects["image"].nunique(), 1),
    }
    return report


def cost(images: list, checkpoint, repeats: int = 3) -> dict:
    """Segmentation seconds with the object table and without, alternating, same images."""
    times = {True: [], False: []}
    for _ in range(repeats):
        for table in (False, True):
            start = time.perf_counter()
            for image, _truth in images:
                segment(image, checkpoint, inference=InferenceConfig(object_table=table))
            times[table].append(time.perf_counter() - start)
    without, with_table = np.median(times[False]), np.median(times[True])
    return {"without": without, "with": with_table, "extra": with_table / without - 1}


def review(labels, truth, reviewed_items: pd.DataFrame) -> tuple[np.ndarray, np.ndarray, dict]:
    """The simulated reviewer: each item judged against the reference, fixed if wrong.

    An object is right when a true object matches it (IoU >= 0.5); a wrong
    one is erased and the true objects under it painted whole (with any
    other predicted object they cover); one on nothing is deleted. A
    possible miss on an unmatched true object gets it painted. What was
    looked at, plus `REVIEW_MARGIN` pixels, is the reviewed mask.
    """
    annotation = labels.astype(np.int32, copy=True)
    seen = np.zeros(labels.shape, bool)
    ious, truth_ids, predicted_ids = iou_table(truth, labels)
    best = dict(zip(predicted_ids, ious.max(axis=0), strict=True)) if ious.size else {}
    matched_truth = set(truth_ids[ious.max(axis=1) >= 0.5]) if ious.size else set()
    next_label = int(labels.max()) + 1
    counts = {"right": 0, "fixed": 0, "deleted": 0, "added": 0}

    def paint(true_ids):
        nonlocal next_label
        for t in true_ids:
            region = truth == t
            for other in np.unique(labels[region]):
                if other:
                    annotation[labels == other] = 0
                    seen[labels == other] = True
            annotation[region] = next_label
            seen[region] = True
            next_label += 1

    for item in reviewed_items.to_dict("records"):
        if item["kind"] == "object":
            mine = labels == item["label"]
            seen |= mine
            if best.get(item["label"], 0.0) >= 0.5:
                counts["right"] += 1
                continue
            under, pixels = np.unique(truth[mine], return_counts=True)
            areas = {t: np.count_nonzero(truth == t) for t in under if t}
            painted = [t for t, n in zip(under, pixels, strict=True) if t and n >= areas[t] / 3]
            annotation[mine] = 0
            paint(painted)
            counts["fixed" if painted else "deleted"] += 1
        else:
            at = tuple(int(round(item[f"centroid-{a}"])) for a in range(truth.ndim))
            seen[at] = True
            t = truth[at]
            if t and t not in matched_truth:
                paint([t])
                counts["added"] += 1
    reviewed = around(seen)
    return annotation, reviewed, counts


def loop_run(name, data, checkpoint, arm: str, seed: int, budget: float, variant: str) -> dict:
    (image, truth), others = data
    result = segment(image, checkpoint)
    queue = review_queue(result.objects, result.possible_misses)
    if arm == "guided":
        chosen = queue.head(10)
    else:
        objects = queue[queue["kind"] == "object"]
        chosen = objects.sample(n=min(10, len(objects)), random_state=seed)
    annotation, reviewed, counts = review(result.labels, truth, chosen)
    row = {"set": name, "arm": arm, "seed": seed, "variant": variant, **counts}
    before = [segment(o, checkpoint).labels for o, _ in others]
    row["ap_other_before"] = float(
        np.mean([average_precision(t, b, 0.5) for (_, t), b in zip(others, before, strict=True)])
    )
    if counts["fixed"] + counts["deleted"] + counts["added"] == 0:
        row.update(learned=False, ap_other_after=row["ap_other_before"], message="nothing to fix")
        return row
    tuned = fine_tune(
        [
            AnnotatedImage(
                image, annotation, prediction=result.labels, reviewed=reviewed, scale=result.scale
            )
        ],
        checkpoint,
        TrainingConfig(max_seconds=budget, seed=seed, **overrides(variant)),
    )
    after = [segment(o, tuned.checkpoint).labels for o, _ in others]
    row["ap_other_after"] = float(
        np.mean([average_precision(t, a, 0.5) for (_, t), a in zip(others, after, strict=True)])
    )
    row.update(learned=bool(tuned.learned), message=tuned.message)
    return row


def overrides(variant: str) -> dict:
    """TrainingConfig keyword arguments of a variant name ("default": none)."""
    if variant == "default":
        return {}
    out = {}
    for part in variant.split(","):
        key, value = part.split("=")
        out[key] = type(getattr(TrainingConfig, key))(value)
    return out


def plot(report: dict, path: Path) -> None:
    fig, axes = plt.subplots(1, 2, figsize=(10, 3.6))
    pooled = report.get("ranking", {}).get("pooled", {})
    names = list(pooled)
    for ax, key in zip(axes[:1] if pooled else [], ("recall@10",), strict=False):
        x = np.arange(len(names))
        ax.bar(x - 0.2, [pooled[n][key] for n in names], 0.4, label="recall@10")
        ax.bar(x + 0.2, [pooled[n]["precision@5"] for n in names], 0.4, label="precision@5")
        ax.set_xticks(x, names)
        ax.set_ylim(0, 1)
        counts = report["ranking"]
        ax.set_title(f"which objects are wrong ({counts['wrong']} of {counts['objects']})")
        ax.legend()
    rows = pd.DataFrame(report.get("loop", []))
    if len(rows):
        rows["gain"] = rows["ap_other_after"] - rows["ap_other_before"]
        summary = rows.groupby(["set", "arm"])["gain"].agg(["mean", "std"]).unstack("arm")
        sets_ = list(summary.index)
        x = np.arange(len(sets_))
        for offset, arm in ((-0.2, "guided"), (0.2, "random")):
            if ("mean", arm) in summary:
                axes[1].bar(
                    x + offset, summary[("mean", arm)], 0.4, yerr=summary[("std", arm)], label=arm
                )
        axes[1].axhline(0, color="k", lw=0.8)
        axes[1].set_xticks(x, sets_)
        axes[1].set_title("AP@0.5 gain on other images after 60 s")
        axes[1].legend()
    fig.tight_layout()
    fig.savefig(path, dpi=110)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--fit", action="store_true", help="fit the confidence on training images")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--sets", nargs="+", default=["dsb", "hela", "bbbc007", "dsb_junk"])
    parser.add_argument("--seconds", type=float, default=60.0)
    parser.add_argument("--no-loop", action="store_true")
    parser.add_argument(
        "--variants",
        nargs="+",
        default=["default"],
        help="TrainingConfig settings to run side by side, e.g. default learning_rate=0.0003 "
        "(several KEY=VALUE joined by commas)",
    )
    parser.add_argument("--arms", nargs="+", default=["guided", "random"])
    parser.add_argument("--no-ranking", action="store_true", help="the loop only")
    parser.add_argument("--output", type=Path, default=RESULTS / "review.json")
    args = parser.parse_args()
    checkpoint = load_checkpoint(default_checkpoint_path())
    if args.fit:
        print(json.dumps(fit(checkpoint), indent=1))
        return
    report = {"cpu": cpu_flags(), "python": platform.python_version()}
    if not args.no_ranking:
        held_out = datasets.held_out_sets()
        objects, misses = collect(held_out, checkpoint)
        report["ranking"] = rank_report(objects, misses)
        print(json.dumps(report["ranking"]["pooled"], indent=1), flush=True)
        some = [pair for pairs in held_out.values() for pair in pairs[:1]]
        report["cost"] = cost(some, checkpoint)
        print(json.dumps(report["cost"]), flush=True)
    report["loop"] = []
    if args.no_loop and args.output.exists():
        # The loop's rows (and side-by-side settings) of an earlier run are kept
        # beside a new ranking.
        earlier = json.loads(args.output.read_text())
        report["loop"] = earlier.get("loop", [])
        report["variant_runs"] = earlier.get("variant_runs", [])
    if not args.no_loop:
        data = loop_sets()
        for seed in args.seeds:
            for name in args.sets:
                for arm, variant in ((a, v) for v in args.variants for a in args.arms):
                    row = loop_run(name, data[name], checkpoint, arm, seed, args.seconds, variant)
                    report["loop"].append(row)
                    print(json.dumps(row), flush=True)
                    args.output.write_text(json.dumps(report, indent=1, default=float))
    args.output.write_text(json.dumps(report, indent=1, default=float))
    plot(report, args.output.with_suffix(".png"))


if __name__ == "__main__":
    main()
