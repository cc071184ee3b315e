"""3D objects on Z-stacks: automatic object size and Z step against the fixed settings.

    .venv/bin/python benchmarks/bench_stack.py [--seeds 0 1] [--memory]

Synthetic stacks (`synthetic_stack.touching_nuclei`: touching ellipsoids 8-40
px across, Z steps 1, 2 and 4, an anisotropic PSF, shot noise, uneven
light; exact labels), their middle 7 planes at 15 and 25 px (crowded stacks
too shallow for side views) and the whole cells3d volume (60 x 256 x 256, Z step
1.12, labels computer-made) and CHO (CTC 3D, 5 planes 4.95 pixels apart),
each segmented three ways with the bundled default:

- *fixed*: the settings of a file without a Z step before this round: no
  resizing in 3D, planes taken to be one pixel apart;
- *auto*: the defaults now: object size measured on the stack's fullest
  planes, Z step measured on its nuclei;
- *planes*: every plane on its own at the automatic size (the time reference; its objects are
  numbered apart, so its 3D AP is not comparable).

Reported: 3D AP@0.5 and @0.75, the measured Z step against the true one,
seconds, and the 3D time over the per-plane time. ``--memory`` also runs
the default path on a 60 x 1024 x 1024 stack in a fresh process and reports
its peak resident memory. Writes results/stack.json and results/stack.png.
"""

from __future__ import annotations

import argparse
import json
import platform
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
from bench_review import cpu_flags
from synthetic_stack import middle_planes, touching_nuclei

from napari_unet_tuner import InferenceConfig, load_checkpoint, segment
from napari_unet_tuner.model.checkpoint import default_checkpoint_path

import datasets

RESULTS = Path(__file__).parent / "results"
DIAMETERS = (8, 15, 25, 40)
Z_STEPS = (1, 2, 4)
# Shallow, crowded stacks (the middle SHALLOW_PLANES planes of the synthetic
# ones): less deep than a nucleus or two, so run from their XY planes alone.
SHALLOW_DIAMETERS = (15, 25)
SHALLOW_PLANES = 7


def run(image, truth, checkpoint, config: InferenceConfig) -> dict:
    t0 = time.perf_counter()
    result = segment(image, checkpoint, axes="ZYX", inference=config)
    seconds = time.perf_counter() - t0
    aps = datasets.mean_ap([truth], [result.labels], digits=3)
    return {
        **aps,
        "objects": int(result.labels.max()),
        "seconds": round(seconds, 2),
        "scale": round(result.scale, 2),
        "z_step": None if result.anisotropy is None else round(result.anisotropy, 2),
        "z_step_measured": result.z_step is not None and result.z_step.anisotropy is not None,
    }


def one_stack(name: str, image, truth, true_step: float, checkpoint) -> dict:
    fixed = InferenceConfig(stack="3d", diameter=None, anisotropy=1.0)
    row = {
        "stack": name,
        "shape": list(image.shape),
        "true_objects": int(len(np.unique(truth)) - 1),
        "true_z_step": true_step,
        "auto": run(image, truth, checkpoint, InferenceConfig(stack="3d")),
        "fixed": run(image, truth, checkpoint, fixed),
        # Planes at the same automatic size: the time reference of the same resizing.
        "planes": run(image, truth, checkpoint, InferenceConfig(stack="planes")),
    }
    row["time_ratio"] = round(row["auto"]["seconds"] / row["planes"]["seconds"], 2)
    print(json.dumps(row), flush=True)
    return row


def peak_memory(depth: int = 60, side: int = 1024) -> dict:
    """Peak resident memory of a default 3D run on a ``depth x side x side`` stack (fresh process).

    The stack is synthetic 20-px nuclei, Z step 2, tiled to ``side``; the
    run is the CLI's and the widget's default (no object table).
    """
    code = f"""
import json, resource, sys, time
import numpy as np
sys.path.insert(0, {str(Path(__file__).parent)!r})
from bench_review import cpu_flags
from synthetic_stack import middle_planes, touching_nuclei
from napari_unet_tuner import InferenceConfig, segment
from napari_unet_tuner.model.checkpoint import default_checkpoint_path
tile, _ = touching_nuclei(20, 2, seed=0, side=256)
image = np.tile(tile, ({depth} // tile.shape[0] + 1, {side} // 256, {side} // 256))[:{depth}]
before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
t0 = time.perf_counter()
config = InferenceConfig(stack="3d", object_table=False)
result = segment(image, default_checkpoint_path(), axes="ZYX", inference=config)
print(json.dumps({{
    "shape": list(image.shape),
    "peak_mb_before_run": round(before / 1024),
    "peak_mb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024),
    "seconds": round(time.perf_counter() - t0, 1),
    "objects": int(result.labels.max()),
    "z_step": result.anisotropy,
}}))
"""
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--seeds", type=int, nargs="+", default=[0])
    parser.add_argument(
        "--memory", action="store_true", help="also the 60 x 1024 x 1024 peak memory"
    )
    parser.add_argument("--diameters", type=int, nargs="+", default=list(DIAMETERS))
    parser.add_argument("--no-real", action="store_true", help="synthetic stacks only")
    parser.add_argument("--output", type=Path, default=RESULTS / "stack.json")
    args = parser.parse_args()
    checkpoint = load_checkpoint(default_checkpoint_path())
    report = {
        "cpu": cpu_flags(),
        "machine": platform.machine(),
        "synthetic": [],
        "shallow": [],
        "real": [],
    }
    for diameter in args.diameters:
        for step in Z_STEPS:
            for seed in args.seeds:
                image, truth = touching_nuclei(diameter, step, seed=seed)
                row = one_stack(
                    f"synthetic {diameter} px, Z step {step}", image, truth, step, checkpoint
                )
                row.update(diameter=diameter, seed=seed)
                report["synthetic"].append(row)
                if diameter in SHALLOW_DIAMETERS:
                    image, truth = middle_planes(image, truth, SHALLOW_PLANES)
                    name = f"synthetic {diameter} px, {SHALLOW_PLANES} planes, Z step {step}"
                    row = one_stack(name, image, truth, step, checkpoint)
                    row.update(diameter=diameter, seed=seed)
                    report["shallow"].append(row)
                args.output.write_text(json.dumps(report, indent=1))
    if not args.no_real:
        cells, cells_truth = datasets.cells3d_nuclei()
        report["real"].append(
            one_stack(
                "cells3d nuclei, whole volume",
                cells,
                cells_truth,
                round(0.29 / 0.26, 2),
                checkpoint,
            )
        )
        cho, cho_truth = datasets.cho_nuclei()
        report["real"].append(
            one_stack("CHO (CTC 3D), frame 16", cho[16], cho_truth[16], 4.95, checkpoint)
        )
    args.output.write_text(json.dumps(report, indent=1))
    if args.memory:
        report["memory"] = peak_memory()
        print(json.dumps(report["memory"]), flush=True)
        args.output.write_text(json.dumps(report, indent=1))
    plot(report, args.output.with_suffix(".png"))


def plot(report: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, len(Z_STEPS), figsize=(4 * len(Z_STEPS), 3.4), sharey=True)
    for ax, step in zip(axes, Z_STEPS, strict=True):
        rows = [r for r in report["synthetic"] if r["true_z_step"] == step]
        for kind, style in (("auto", "o-"), ("fixed", "s--")):
            means = [
                np.mean([r[kind]["ap50"] for r in rows if r["diameter"] == d]) for d in DIAMETERS
            ]
            ax.plot(DIAMETERS, means, style, label=kind)
        ax.axhline(0.9, color="grey", lw=0.8, ls=":")
        ax.set_title(f"Z step {step}")
        ax.set_xlabel("nucleus diameter (px)")
        ax.set_ylim(0, 1.02)
        shallow = [r for r in report.get("shallow", []) if r["true_z_step"] == step]
        if shallow:
            sizes = sorted({r["diameter"] for r in shallow})
            means = [
                np.mean([r["auto"]["ap50"] for r in shallow if r["diameter"] == d]) for d in sizes
            ]
            ax.plot(sizes, means, "^:", label=f"auto, {SHALLOW_PLANES} planes")
    axes[0].set_ylabel("3D AP@0.5")
    axes[0].legend()
    fig.tight_layout()
    fig.savefig(path, dpi=110)


if __name__ == "__main__":
    main()
