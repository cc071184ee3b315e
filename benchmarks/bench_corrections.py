"""Does fine-tuning learn what the user corrected? A simulated user on real images.

    .venv/bin/python benchmarks/bench_corrections.py [--seeds 0 1 2] [--sets dsb hela ...]

For each set, the bundled default segments the image to correct. The
simulated user (`painting.correct_worst`) fixes the K worst true objects
(erases the wrong predicted objects, paints the true ones) and deletes up to
K false objects, then fine-tunes the default on that one annotation, with
the prediction it was edited from, and segments again. Reported, per set,
K, time budget, precision and seed:

- corrected objects right (IoU >= 0.5) and deleted objects gone (less than
  half of them foreground, and no predicted object mostly on them) on the
  corrected image;
- AP@0.5 of the whole corrected image, and of the rest of it (outside the
  corrected and deleted objects), before and after;
- AP@0.5 on other images of the same kind (never trained on), before and after;
- wall time of the run (the budget covers everything), steps, stop reason.

Sets: DSB2018 (hand-annotated; left half corrected, right half the other
image), HeLa (CTC; frame 15 of the right third corrected, frames 17-19
other), BBBC007 (first held-out field corrected, the other two other),
bacteria (trpL phase contrast, far from the default's training data; frame
12 corrected, 17-19 other). Junk sets (`junk.add_junk`: textured faint
blobs beside nuclei dimmed to the same brightness, on HeLa frames 15 / 17-19
and on the DSB2018 halves, a different junk layout per image): the simulated
user deletes min(K, 15) junk objects and fixes max(2, K // 4) nuclei; what
matters there is the junk gone *and* the unchanged nuclei kept. Writes
results/corrections.json and .png.
"""

from __future__ import annotations

import argparse
import json
import platform
import time
from pathlib import Path

import numpy as np
import torch
from junk import add_junk, delete_junk
from painting import correct_worst

from napari_unet_tuner import (
    AnnotatedImage,
    TrainingConfig,
    fine_tune,
    load_checkpoint,
    segment,
)
from napari_unet_tuner.inference.device import cpu_computes_bf16
from napari_unet_tuner.model.checkpoint import default_checkpoint_path
from napari_unet_tuner.training.counting import deleted_is_gone
from napari_unet_tuner.training.metrics import average_precision, matched_ious

import datasets

RESULTS = Path(__file__).parent / "results"


def sets() -> dict[str, tuple[tuple[np.ndarray, np.ndarray], list[tuple[np.ndarray, np.ndarray]]]]:
    """``{name: ((image, truth) to correct, [(image, truth) of the same kind])}``."""
    dsb, dsb_truth = datasets.stardist_nuclei_2d()
    hela, hela_truth = datasets.hela()
    x = datasets.HELA_SPLIT_X
    bbbc = datasets.bbbc007_nuclei()[1]
    bacteria, bacteria_truth = datasets.bacteria()
    return {
        "dsb": ((dsb[:, :256], dsb_truth[:, :256]), [(dsb[:, 256:], dsb_truth[:, 256:])]),
        "hela": (
            (hela[15][:, x:], hela_truth[15][:, x:]),
            [(hela[t][:, x:], hela_truth[t][:, x:]) for t in (17, 18, 19)],
        ),
        "bbbc007": (bbbc[0], bbbc[1:]),
        "bacteria": (
            (bacteria[12], bacteria_truth[12]),
            [(bacteria[t], bacteria_truth[t]) for t in (17, 18, 19)],
        ),
        "hela_junk": (
            with_junk(hela[15][:, x:], hela_truth[15][:, x:], 15),
            [with_junk(hela[t][:, x:], hela_truth[t][:, x:], t) for t in (17, 18, 19)],
        ),
        "dsb_junk": (
            with_junk(dsb[:, :256], dsb_truth[:, :256], 0),
            [with_junk(dsb[:, 256:], dsb_truth[:, 256:], 1)],
        ),
    }


JUNK: dict[int, np.ndarray] = {}


def with_junk(image, truth, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """The image with junk (`junk.add_junk`); its junk labels are kept in `JUNK` by image id."""
    image, junk = add_junk(image, truth, seed)
    JUNK[id(image)] = junk
    return image, truth


def edits(name: str, k: int) -> tuple[int, int]:
    """(objects fixed, junk blobs or objects deleted) of the simulated user for K."""
    return (max(2, k // 4), min(k, 15)) if name.endswith("junk") else (k, k)


def simulated_user(name, image, before, truth, k):
    """The annotation, the corrected true ids and the deleted predicted ids.

    On junk sets: the worst nuclei fixed, then whole junk blobs deleted
    (every piece the model cut one into), the largest first.
    """
    fixes, deletions = edits(name, k)
    if not name.endswith("junk"):
        return correct_worst(before, truth, fixes, deletions)
    annotation, corrected, _ = correct_worst(before, truth, fixes, 0)
    untouched = np.where(annotation == before, before, 0)
    _, _, deleted = delete_junk(untouched, JUNK[id(image)], deletions)
    annotation[np.isin(before, deleted)] = 0
    return annotation, corrected, deleted


def ap(truth, labels, known=None) -> float:
    return average_precision(truth, labels, 0.5, known)


def share_right(truth, labels, ids) -> float:
    if not ids:
        return float("nan")
    ious = matched_ious(np.where(np.isin(truth, ids), truth, 0), labels)
    return float(np.mean(ious.max(axis=1) >= 0.5)) if ious.shape[1] else 0.0


def share_kept(truth, before, after, corrected) -> float:
    """Share of the true objects the user left alone, right before, still right after."""
    ious_before = matched_ious(truth, before)
    ids = np.unique(truth[truth > 0])
    right = ids[ious_before.max(axis=1) >= 0.5] if ious_before.shape[1] else ids[:0]
    unchanged = [int(i) for i in right if i not in set(corrected)]
    return share_right(truth, after, unchanged)


def share_gone(prediction, labels, ids) -> float:
    """Share of the deleted objects now gone (`deleted_is_gone`: no remnant either)."""
    if not ids:
        return float("nan")
    return float(
        np.mean(deleted_is_gone(np.where(np.isin(prediction, ids), prediction, 0), labels))
    )


def one_run(name, data, start, k, budget, precision, seed, **overrides) -> dict:
    (image, truth), others = data
    before = segment(image, start).labels
    annotation, corrected, deleted = simulated_user(name, image, before, truth, k)
    settings = {"max_seconds": budget, "seed": seed, "device": "cpu"}
    settings["mixed_precision"] = precision == "bf16"
    config = TrainingConfig(**{**settings, **overrides})
    t0 = time.perf_counter()
    result = fine_tune([AnnotatedImage(image, annotation, prediction=before)], start, config)
    wall = time.perf_counter() - t0
    model = result.checkpoint
    after = segment(image, model).labels
    touched = np.isin(truth, corrected) | np.isin(before, deleted)
    rest = ~touched
    other_before = [ap(t, segment(i, start).labels) for i, t in others]
    other_after = [ap(t, segment(i, model).labels) for i, t in others]
    return {
        "set": name,
        "k": k,
        "budget": budget,
        "precision": precision,
        "seed": seed,
        "corrected": len(corrected),
        "deleted": len(deleted),
        "corrected_right": share_right(truth, after, corrected),
        "deleted_gone": share_gone(before, after, deleted),
        "unchanged_kept": share_kept(truth, before, after, corrected),
        "ap_image_before": ap(truth, before),
        "ap_image_after": ap(truth, after),
        "ap_rest_before": ap(truth, before, rest),
        "ap_rest_after": ap(truth, after, rest),
        "ap_other_before": float(np.mean(other_before)),
        "ap_other_after": float(np.mean(other_after)),
        "learned": result.learned,
        "message": result.message,
        "offered": getattr(result, "candidate", None) is not None,
        "offered_counts": None
        if getattr(result, "candidate_corrections", None) is None
        else result.candidate_corrections.to_dict(),
        "counts_before": None
        if result.corrections_before is None
        else result.corrections_before.to_dict(),
        "counts_after": None
        if result.corrections_after is None
        else result.corrections_after.to_dict(),
        "wall_seconds": round(wall, 1),
        "steps": result.history[-1].step if result.history else 0,
        **offered_scores(result, image, truth, before, corrected, deleted, others),
        "stop_reason": result.stop_reason,
    }


def offered_scores(result, image, truth, before, corrected, deleted, others) -> dict:
    """What the model a run offered to keep anyway does (when nothing was learned)."""
    offered = getattr(result, "candidate", None)
    if offered is None:
        return {}
    after = segment(image, offered).labels
    return {
        "offered_corrected_right": share_right(truth, after, corrected),
        "offered_deleted_gone": share_gone(before, after, deleted),
        "offered_unchanged_kept": share_kept(truth, before, after, corrected),
        "offered_ap_other": float(np.mean([ap(t, segment(i, offered).labels) for i, t in others])),
    }


def loop_on_a_full_frame(start, seed: int) -> dict:
    """Time the whole loop on a full 727 x 1026 bacteria frame: segment, correct, tune, segment.

    A natural frame of 0.75 megapixels (a 2 x 2 tiling of DSB2018 would be 1 MP
    but cuts nuclei at the seams, and those cut halves are what the simulated
    user would correct first).
    """
    images, truths = datasets.bacteria()
    image, truth = images[12], truths[12]
    t0 = time.perf_counter()
    before = segment(image, start).labels
    t1 = time.perf_counter()
    annotation, corrected, deleted = correct_worst(before, truth, 10)
    result = fine_tune(
        [AnnotatedImage(image, annotation, prediction=before)],
        start,
        TrainingConfig(max_seconds=60, seed=seed, device="cpu"),
    )
    t2 = time.perf_counter()
    after = segment(image, result.checkpoint).labels
    t3 = time.perf_counter()
    return {
        "seed": seed,
        "megapixels": round(image.size / 1e6, 2),
        "segment_seconds": round(t1 - t0, 1),
        "finetune_seconds": round(t2 - t1, 1),
        "segment_again_seconds": round(t3 - t2, 1),
        "loop_seconds": round(t3 - t0, 1),
        "corrected_right": share_right(truth, after, corrected),
        "message": result.message,
    }


def deleted_crops(name: str, data, start, path: Path) -> None:
    """Save each object the simulated user deletes on set ``name``, with the true labels.

    Red: the deleted predicted object; cyan: the true labels. Shows whether
    what the reference lacks is really not a nucleus.
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from scipy import ndimage
    from skimage.segmentation import find_boundaries

    (image, truth), _ = data
    before = segment(image, start).labels
    _, _, deleted = correct_worst(before, truth, 20)
    if not deleted:
        return
    lo, hi = np.percentile(image, (1, 99.8))
    boxes = ndimage.find_objects(before)
    fig, axes = plt.subplots(1, len(deleted), figsize=(2.6 * len(deleted), 2.9), dpi=90)
    for ax, label in zip(np.atleast_1d(axes), deleted, strict=True):
        box = tuple(slice(max(s.start - 30, 0), s.stop + 30) for s in boxes[label - 1])
        overlay = np.zeros((*image[box].shape, 4))
        overlay[find_boundaries(truth[box])] = (0, 1, 1, 1)
        overlay[find_boundaries(before[box] == label)] = (1, 0, 0, 1)
        ax.imshow(image[box], cmap="gray", vmin=lo, vmax=hi)
        ax.imshow(overlay)
        mean = image[before == label].mean()
        ax.set_title(f"object {label}: mean {mean:.0f}", fontsize=8)
        ax.axis("off")
    fig.tight_layout()
    fig.savefig(path)


def plan(args) -> list[tuple[int, float, str]]:
    if args.k:
        return [(k, 60.0, "auto") for k in args.k]
    if args.quick:
        return [(10, 60.0, "auto")]
    runs = [(k, 60.0, "auto") for k in (5, 10, 20)]
    runs += [(10, budget, "auto") for budget in (15.0, 30.0)]
    if args.precision_sets:
        runs.append((10, 60.0, "fp32"))
    return runs


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--sets", nargs="+", default=["dsb", "hela", "bbbc007", "bacteria"])
    parser.add_argument(
        "--precision-sets",
        nargs="*",
        default=["dsb", "bacteria"],
        help="sets also run in float32 (K=10, 60 s) beside the default precision",
    )
    parser.add_argument("--output", type=Path, default=RESULTS / "corrections.json")
    parser.add_argument(
        "--quick",
        action="store_true",
        help="only K = 10 at 60 s, and no full-frame loop (a check after a change)",
    )
    parser.add_argument("--no-loop", action="store_true", help="skip the full-frame loop timing")
    parser.add_argument(
        "--k", type=int, nargs="+", help="only these K, at 60 s (no budget or precision runs)"
    )
    parser.add_argument(
        "--compare",
        metavar="KEY=VALUE",
        help="also run every case with this TrainingConfig setting (e.g. trusted_background=1), "
        "side by side with the default; rows say which in 'variant'",
    )
    parser.add_argument(
        "--merge",
        action="store_true",
        help="keep the other sets' rows (and the loop, with --no-loop) of an existing --output",
    )
    parser.add_argument(
        "--deleted-crops",
        action="store_true",
        help="only save results/hela_deleted.png: what the simulated user deletes on HeLa",
    )
    args = parser.parse_args()
    start = load_checkpoint(default_checkpoint_path())
    data = sets()
    if args.deleted_crops:
        deleted_crops("hela", data["hela"], start, RESULTS / "hela_deleted.png")
        return
    auto = "bf16" if cpu_computes_bf16() else "fp32"
    report = {
        "machine": f"{platform.machine()}, {torch.get_num_threads()} torch threads",
        "auto_precision": auto,
        "runs": [],
    }
    if args.merge and args.output.exists():
        kept = json.loads(args.output.read_text())
        report["runs"] = [r for r in kept["runs"] if r["set"] not in args.sets]
        report["loop"] = kept.get("loop", [])
    for name in args.sets:
        for k, budget, precision in plan(args):
            if precision == "fp32" and name not in args.precision_sets:
                continue
            for seed in args.seeds:
                chosen = auto if precision == "auto" else precision
                for variant, overrides in variants(args.compare):
                    row = one_run(name, data[name], start, k, budget, chosen, seed, **overrides)
                    row["variant"] = variant
                    report["runs"].append(row)
                    print(json.dumps(row), flush=True)
                    args.output.parent.mkdir(exist_ok=True)
                    args.output.write_text(json.dumps(report, indent=1))
    if args.quick or args.no_loop or args.k:
        report.setdefault("loop", [])
        plot(report, args.output.with_suffix(".png"))
        return
    report["loop"] = []
    for seed in args.seeds:
        report["loop"].append(loop_on_a_full_frame(start, seed))
        print(json.dumps(report["loop"][-1]), flush=True)
        args.output.write_text(json.dumps(report, indent=1))
    plot(report, args.output.with_suffix(".png"))


def variants(compare: str | None) -> list[tuple[str, dict]]:
    """The default settings, and with ``--compare KEY=VALUE`` that setting too."""
    if not compare:
        return [("default", {})]
    key, value = compare.split("=", 1)
    kind = type(getattr(TrainingConfig(), key))
    return [("default", {}), (compare, {key: kind(float(value)) if kind is not str else value})]


def summary(rows: list[dict], key: str) -> tuple[float, float]:
    values = np.array([r[key] for r in rows], float)
    values = values[np.isfinite(values)]
    return (float(values.mean()), float(values.std())) if len(values) else (np.nan, np.nan)


def plot(report: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = [
        r
        for r in report["runs"]
        if r["precision"] == report["auto_precision"] and r.get("variant", "default") == "default"
    ]
    fig, axes = plt.subplots(1, 3, figsize=(12, 3.6), dpi=110)
    panels = (
        (axes[0], "k", 60, "corrected_right", "corrected objects right (60 s)", "K corrections"),
        (axes[1], "k", 60, "deleted_gone", "deleted objects gone (60 s)", "K corrections"),
        (
            axes[2],
            "budget",
            10,
            "corrected_right",
            "corrected objects right (K = 10)",
            "time budget (s)",
        ),
    )
    for ax, across, fixed, key, title, xlabel in panels:
        other = "budget" if across == "k" else "k"
        for name in dict.fromkeys(r["set"] for r in rows):
            mine = [r for r in rows if r["set"] == name and r[other] == fixed]
            xs = sorted({r[across] for r in mine})
            stats = [summary([r for r in mine if r[across] == x], key) for x in xs]
            ax.errorbar(xs, *zip(*stats, strict=True), marker="o", label=name, capsize=3)
        ax.set_title(title)
        ax.set_xlabel(xlabel)
        ax.set_ylim(0, 1.05)
        ax.axhline(0.9, color="grey", ls=":", lw=1)
    axes[0].legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path)


if __name__ == "__main__":
    main()
