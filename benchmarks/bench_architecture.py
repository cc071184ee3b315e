"""Width and depth of the default U-Net: held-out quality against CPU segmentation speed.

    .venv/bin/python benchmarks/bench_architecture.py [--configs 8x4 16x3 16x4 32x4]
        [--seconds 600] [--parallel 2] [--reuse]

Each ``FEATURESxDEPTH`` is trained by ``scripts/train_default.py`` (same
data, augmentation and seed as the shipped default) for ``--seconds`` of
wall time on one CPU thread, ``--parallel`` runs at a time, so every
configuration gets the same compute. Then, one after another with all
threads, each is timed segmenting the 2048 x 2048 HeLa mosaic of
bench_segmentation (whole pipeline, best of 2). Quality is AP@0.5 on the
held-out sets of `datasets.held_out_sets` (the hand-annotated DSB2018 image
reported on its own). Writes results/architecture.json and .png.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
from bench_segmentation import mosaic

from napari_unet_tuner import InferenceConfig, load_checkpoint, segment

ROOT = Path(__file__).resolve().parents[1]
RESULTS = Path(__file__).parent / "results"
WORK = Path(__file__).parent / "_work" / "architecture"


def train(config: str, seconds: float) -> dict:
    features, depth = config.split("x")
    out = WORK / f"{config}.safetensors"
    report = WORK / f"{config}.json"
    with open(WORK / f"{config}.log", "w") as log:
        subprocess.run(
            [
                sys.executable,
                str(ROOT / "scripts/train_default.py"),
                # Equal time, not equal steps: the comparison is of quality per compute.
                "--steps",
                "0",
                "--seconds",
                str(seconds),
                "--features",
                features,
                "--depth",
                depth,
                "--threads",
                "1",
                "--output",
                str(out),
                "--report",
                str(report),
            ],
            check=True,
            stdout=log,
            stderr=subprocess.STDOUT,
        )
    return {"checkpoint": out, **json.loads(report.read_text())}


def speed(checkpoint_path: Path, image: np.ndarray) -> float:
    checkpoint = load_checkpoint(checkpoint_path)
    config = InferenceConfig(device="cpu")
    best = np.inf
    for _ in range(2):
        t0 = time.perf_counter()
        segment(image, checkpoint, inference=config)
        best = min(best, time.perf_counter() - t0)
    return image.size / 1e6 / best


def plot(report: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 4))
    for name, row in report["configs"].items():
        ax.scatter(row["mp_per_s"], row["dsb_ap50"], color="C0")
        ax.scatter(row["mp_per_s"], row["computer_ap50"], color="C1", marker="s")
        ax.annotate(name, (row["mp_per_s"], row["dsb_ap50"]), fontsize=8)
    ax.scatter([], [], color="C0", label="DSB2018, hand-annotated")
    ax.scatter([], [], color="C1", marker="s", label="held-out regions, computer labels")
    ax.set_xlabel("CPU segmentation speed (megapixels/s, 2 cores)")
    ax.set_ylabel("held-out AP@0.5")
    ax.set_title(f"U-Net width x depth, each trained {report['seconds']:g} s on 1 thread")
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=100)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--configs", nargs="+", default=["8x4", "16x3", "16x4", "32x4"])
    parser.add_argument("--seconds", type=float, default=600)
    parser.add_argument("--parallel", type=int, default=2)
    parser.add_argument(
        "--reuse", action="store_true", help="time and report the models of an earlier run"
    )
    args = parser.parse_args()
    WORK.mkdir(parents=True, exist_ok=True)
    if args.reuse:
        trained = {
            c: {
                "checkpoint": WORK / f"{c}.safetensors",
                **json.loads((WORK / f"{c}.json").read_text()),
            }
            for c in args.configs
        }
    else:
        with ThreadPoolExecutor(args.parallel) as pool:
            runs = pool.map(lambda c: train(c, args.seconds), args.configs)
            trained = dict(zip(args.configs, runs, strict=True))
    image = mosaic(2048)
    report: dict = {"seconds": args.seconds, "inference_copy": True, "configs": {}}
    for name, run in trained.items():
        scores = run["scores"]
        hand = next(iter(scores))
        report["configs"][name] = {
            "parameters": int(
                sum(v.numel() for v in load_checkpoint(run["checkpoint"]).state_dict.values())
            ),
            "steps": run["steps"],
            "dsb_ap50": scores[hand]["ap50"],
            "dsb_ap75": scores[hand]["ap75"],
            "computer_ap50": round(
                float(np.mean([s["ap50"] for k, s in scores.items() if k != hand])), 4
            ),
            "mp_per_s": round(speed(run["checkpoint"], image), 3),
            "scores": scores,
        }
        print(
            name, {k: v for k, v in report["configs"][name].items() if k != "scores"}, flush=True
        )
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / "architecture.json").write_text(json.dumps(report, indent=2))
    plot(report, RESULTS / "architecture.png")


if __name__ == "__main__":
    main()
