"""bench_stack.py's table for BENCHMARKS.md: 3D objects, automatic size and Z step (issue 37)."""

from __future__ import annotations

import numpy as np


def _ap(rows: list[dict], arm: str, key: str) -> str:
    values = [r[arm][key] for r in rows]
    if len(values) == 1:
        return f"{values[0]:.3f}"
    return f"{np.mean(values):.3f} ± {np.std(values):.3f}"


def _step(rows: list[dict]) -> str:
    measured = [r["auto"]["z_step"] for r in rows if r["auto"]["z_step_measured"]]
    told = "; ".join(f"{s:.2f}" for s in measured)
    missing = len(rows) - len(measured)
    if missing:
        told = (told + "; " if told else "") + f"not told ({missing}x, 1 used)"
    return f"{told} ({rows[0]['true_z_step']:g})"


def stack_table_lines(report: dict | None) -> list[str]:
    """One row per stack (synthetic ones: mean ± sd over seeds), auto against fixed."""
    if not report:
        return []
    seeds = sorted({r["seed"] for r in report["synthetic"]})
    lines = [
        "#### Object size and Z step measured on the stack, memory bounded "
        "(`benchmarks/bench_stack.py`, issue 37)",
        "",
        f"`bench_stack.py --seeds {' '.join(map(str, seeds))}` ({report['cpu']}; 2 cores). "
        "Synthetic stacks (`benchmarks/synthetic_stack.py`): touching ellipsoids 8-40 px "
        "across, as tall as wide on average, an anisotropic PSF (sigma 2 in Z, 1 in XY), "
        "shot and read noise, uneven light; exact labels; mean ± sd over "
        f"{len(seeds)} layouts. *7 planes*: their middle 7 planes (crowded stacks shallower "
        "than a nucleus or two). cells3d's whole volume (labels computer-made, Z step 0.29 / "
        "0.26 um) and CHO frame 16 (5 planes). *auto*: the defaults (object size measured on "
        "the stack's fullest planes, Z step measured on its nuclei when the file does not say "
        "it); *fixed*: no resizing and the Z step taken as 1 (what a file without a Z step "
        "got before issue 37), with this round's labelling. Time: the automatic 3D run over "
        "the per-plane run of the same stack at the same size.",
        "",
        "| stack | nuclei | auto: scale | Z step measured (true) | AP@0.5 | AP@0.75 | "
        "fixed: AP@0.5 | AP@0.75 | 3D / per-plane time |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    groups: dict[str, list[dict]] = {}
    for row in report["synthetic"] + report.get("shallow", []) + report["real"]:
        groups.setdefault(row["stack"], []).append(row)
    for name, rows in groups.items():
        scales = sorted({r["auto"]["scale"] for r in rows})
        scale = f"x{scales[0]:g}" if len(scales) == 1 else f"x{scales[0]:g}-{scales[-1]:g}"
        counts = sorted({r["true_objects"] for r in rows})
        nuclei = str(counts[0]) if len(counts) == 1 else f"{counts[0]}-{counts[-1]}"
        ratios = sorted(r["time_ratio"] for r in rows)
        ratio = f"{ratios[0]:.2f}x" if len(ratios) == 1 else f"{ratios[0]:.2f}-{ratios[-1]:.2f}x"
        lines.append(
            f"| {name} | {nuclei} | {scale} | {_step(rows)} | "
            f"{_ap(rows, 'auto', 'ap50')} | {_ap(rows, 'auto', 'ap75')} | "
            f"{_ap(rows, 'fixed', 'ap50')} | {_ap(rows, 'fixed', 'ap75')} | {ratio} |"
        )
    memory = report.get("memory")
    if memory:
        lines += [
            "",
            f"Peak memory, default path (no object table), a fresh process: "
            f"{' x '.join(map(str, memory['shape']))} synthetic 20-px nuclei, Z step 2: "
            f"**{memory['peak_mb']} MB** resident ({memory['peak_mb_before_run']} MB before "
            f"the run), {memory['seconds']} s, {memory['objects']} objects, Z step measured "
            f"{memory['z_step']}.",
        ]
    return [*lines, "", "![3D AP by nucleus size and Z step](benchmarks/results/stack.png)", ""]
