"""The BENCHMARKS.md section of bench_corrections.py (imported by report.py)."""

from __future__ import annotations

import numpy as np

SET_NAMES = {
    "dsb": "DSB2018, hand-annotated (left half corrected, right half other)",
    "hela": "HeLa (CTC), frame 15 corrected, 17-19 other",
    "bbbc007": "BBBC007, one field corrected, two other",
    "bacteria": "phase-contrast bacteria, frame 12 corrected, 17-19 other",
}


def mean_sd(rows: list[dict], key: str, digits: int = 2) -> str:
    values = np.array([r[key] for r in rows], float)
    values = values[np.isfinite(values)]
    if not len(values):
        return "–"
    return f"{values.mean():.{digits}f} ± {values.std():.{digits}f}"


def before_after(rows: list[dict], key: str) -> str:
    before = np.mean([r[f"{key}_before"] for r in rows])
    return f"{before:.3f} → {mean_sd(rows, f'{key}_after', 3)}"


def corrections_section(report: dict | None) -> list[str]:
    if not report:
        return []
    auto = report["auto_precision"]
    runs = [r for r in report["runs"] if r["precision"] == auto]
    seeds = sorted({r["seed"] for r in runs})
    lines = [
        "## Corrections that stick (`benchmarks/bench_corrections.py`)",
        "",
        "A simulated user corrects the K worst errors of the default model's prediction "
        "(erases the wrong objects and paints the true ones, so a merged pair becomes both "
        "nuclei) and deletes up to K false objects, fine-tunes the default on that one "
        "annotation with the prediction it was edited from, and segments again. "
        f"Seeds {seeds}; mean ± sd over seeds; {report['machine']}, training precision "
        f"{auto} (auto). The budget covers the whole run (preparation, steps, validations).",
        "",
        "| set | K | corrected | deleted | corrected right | deleted gone | "
        "AP@0.5 corrected image | AP@0.5 rest of it | AP@0.5 other images | wall s | steps |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    names = list(dict.fromkeys(r["set"] for r in runs))
    for name in names:
        for k in sorted({r["k"] for r in runs if r["set"] == name}):
            rows = [r for r in runs if r["set"] == name and r["k"] == k and r["budget"] == 60]
            if not rows:
                continue
            corrected = np.mean([r["corrected"] for r in rows])
            deleted = np.mean([r["deleted"] for r in rows])
            lines.append(
                f"| {SET_NAMES.get(name, name)} | {k} | {corrected:.0f} | {deleted:.0f} "
                f"| {mean_sd(rows, 'corrected_right')} | {mean_sd(rows, 'deleted_gone')} "
                f"| {before_after(rows, 'ap_image')} | {before_after(rows, 'ap_rest')} "
                f"| {before_after(rows, 'ap_other')} | {mean_sd(rows, 'wall_seconds', 0)} "
                f"| {mean_sd(rows, 'steps', 0)} |"
            )
    at60 = [r for r in runs if r["budget"] == 60]
    corrected = np.nanmean([r["corrected_right"] for r in at60])
    deleted = np.nanmean([r["deleted_gone"] for r in at60])
    other_delta = np.mean([r["ap_other_after"] - r["ap_other_before"] for r in at60])
    lines += [
        "",
        f"Over every set, K and seed at 60 s: corrected objects right **{corrected:.2f}**, "
        f"deleted objects gone **{deleted:.2f}** (targets: at least 0.9 each); AP@0.5 on "
        f"other images of the same kind changes by **{other_delta:+.3f}** on average "
        "(target: no lower).",
        "",
        "Caveats. The simulated user deletes only what a person would: predicted objects "
        "with no true object under them (at least 90 % on true background, at least 40 "
        "pixels) and not cut by the image frame (HeLa's computer-made reference leaves out "
        "nearly every nucleus the frame cuts; deleting those, as an earlier rule did, gave "
        "0.73 deleted gone). HeLa's labels are computer-made (CTC), and the default is "
        "already right on all of its labelled nuclei there, so its only 'errors' are four "
        "objects missing from the labels; by eye they are a bright nucleus, two dim ones and "
        "a bud ([crops](benchmarks/results/hela_deleted.png), `bench_corrections.py "
        "--deleted-crops`; red: deleted, cyan: labels). The model learns to delete them, and "
        "on the other frames it then drops some labelled nuclei like them: that is the HeLa "
        "row's lower AP on other images (without the bright one, 0.820 -> 0.781 and 0.796, "
        "seeds 0 and 1). BBBC007's labels are computer-made too. On DSB2018 the corrections "
        "that are not learned are mostly slivers at the image border. The "
        "simulated user corrects only the K worst errors: the other errors of the corrected "
        "image stay in the annotation as if right, which the 'rest of it' column measures "
        "against the true labels.",
        "",
        "Time budget (K = 10):",
        "",
        "| set | budget (s) | corrected right | deleted gone | AP@0.5 other images | wall s |",
        "|---|---|---|---|---|---|",
    ]
    for name in names:
        for budget in sorted({r["budget"] for r in runs if r["set"] == name and r["k"] == 10}):
            rows = [r for r in runs if r["set"] == name and r["k"] == 10 and r["budget"] == budget]
            lines.append(
                f"| {name} | {budget:.0f} | {mean_sd(rows, 'corrected_right')} | "
                f"{mean_sd(rows, 'deleted_gone')} | {before_after(rows, 'ap_other')} | "
                f"{mean_sd(rows, 'wall_seconds', 0)} |"
            )
    other = [r for r in report["runs"] if r["precision"] != auto]
    if other:
        lines += [
            "",
            f"Training precision, K = 10, 60 s, side by side ({auto} is what auto chose here):",
            "",
            "| set | precision | steps | corrected right | deleted gone | AP@0.5 other images |",
            "|---|---|---|---|---|---|",
        ]
        for name in dict.fromkeys(r["set"] for r in other):
            for precision in (auto, other[0]["precision"]):
                rows = [
                    r
                    for r in report["runs"]
                    if r["set"] == name
                    and r["k"] == 10
                    and r["budget"] == 60
                    and r["precision"] == precision
                ]
                lines.append(
                    f"| {name} | {precision} | {mean_sd(rows, 'steps', 0)} | "
                    f"{mean_sd(rows, 'corrected_right')} | {mean_sd(rows, 'deleted_gone')} | "
                    f"{before_after(rows, 'ap_other')} |"
                )
    loop = report.get("loop")
    if loop:
        lines += [
            "",
            f"The whole loop on a full {loop[0]['megapixels']}-megapixel frame (phase-contrast "
            "bacteria, K = 10, 60 s budget): "
            f"segment {mean_sd(loop, 'segment_seconds', 1)} s, fine-tune "
            f"{mean_sd(loop, 'finetune_seconds', 1)} s, segment again "
            f"{mean_sd(loop, 'segment_again_seconds', 1)} s: **{mean_sd(loop, 'loop_seconds', 0)} "
            f"s** in all (target: about a minute); corrected right "
            f"{mean_sd(loop, 'corrected_right')}.",
        ]
    lines += ["", "![corrections](benchmarks/results/corrections.png)", ""]
    return lines


def _pm(row: dict, key: str, digits: int = 3) -> str:
    return f"{row[key]:.{digits}f} ± {row.get(key + '_sd', 0.0):.{digits}f}"


def finetune_section(ft: dict | None) -> list[str]:
    """The fine-tuning on a domain shift (``results/finetune.json``), mean ± sd over seeds."""
    if not ft or "seeds" not in ft:
        return []
    seeds = len(ft["seeds"])
    lines = [
        "## Fine-tuning on a domain shift (`benchmarks/bench_finetune.py`)",
        "",
        f"From the default nuclei model to phase-contrast bacteria: about "
        f"{ft['painted_objects']:.0f} objects painted whole plus background strokes "
        f"(~{ft['painted_pixels']:.0f} pixels) on frames 12-15, other objects and strokes for "
        f"each of {seeds} seeds; AP on the later, more crowded frames {list(ft['test_frames'])}, "
        f"never painted; {ft['machine']}. Mean ± sd over the seeds.",
        "",
        "| training | time budget (s) | wall time (s) | steps | AP@0.5 | AP@0.75 |",
        "|---|---|---|---|---|---|",
        f"| none (default model) | 0 | 0 | 0 | {ft['before']['ap50']:.3f} | "
        f"{ft['before']['ap75']:.3f} |",
    ]
    for budget, r in ft["scribbles"].items():
        lines.append(
            f"| painted scribbles | {float(budget):.0f} | {r['wall_seconds']:.0f} | "
            f"{r['steps']:.0f} | {_pm(r, 'ap50')} | {_pm(r, 'ap75')} |"
        )
    full = ft["full_labels"]
    at60 = ft["scribbles"].get("60")
    ratio = at60["ap50"] / full["ap50"] if at60 and full["ap50"] else float("nan")
    lines += [
        f"| fully labelled frames 0-15 (reference) | {full['train_seconds']:.0f} | "
        f"{full['wall_seconds']:.0f} | {full['steps']:.0f} | {_pm(full, 'ap50')} | "
        f"{_pm(full, 'ap75')} |",
        "",
        f"After 60 s on the CPU, scribbles reach **{ratio:.2f}** of the AP@0.5 of training on "
        "the fully labelled frames (target: at least 0.8). The reference is weaker than it "
        "sounds: frames 0-15 hold 63 bacteria in all (the colony is small early on), while "
        "the painted frames 12-15 are closer to the crowded test frames. Both use the "
        "default settings (early stopping included).",
        "",
        "![fine-tuning curve](benchmarks/results/finetune.png)",
        "",
    ]
    return lines


def recheck_section(full: dict | None, quick: dict | None) -> list[str]:
    """K = 10 at 60 s re-run after a change (``--quick``), beside the full run's same rows."""
    if not full or not quick:
        return []
    auto = quick["auto_precision"]

    def rows_of(report: dict, name: str) -> list[dict]:
        return [
            r
            for r in report["runs"]
            if r["set"] == name and r["k"] == 10 and r["budget"] == 60 and r["precision"] == auto
        ]

    lines = [
        "### Re-check after a change (`bench_corrections.py --quick`: K = 10, 60 s)",
        "",
        "The same sets, seeds and simulated user as the table above, re-run after the "
        "default's instance settings were re-chosen (no waist cut, seed threshold 0.4): the "
        "image to correct is segmented differently, so the corrections differ too (DSB2018 "
        "16 instead of 13, HeLa 2 instead of 0). The earlier figures are the rows of the "
        "full run above (run at another time, so machine load may differ).",
        "",
        "| set | corrected right, full run | now | deleted gone, full run | now | "
        "AP@0.5 other images, full run | now |",
        "|---|---|---|---|---|---|---|",
    ]
    names = list(dict.fromkeys(r["set"] for r in quick["runs"]))
    for name in names:
        old, new = rows_of(full, name), rows_of(quick, name)
        lines.append(
            f"| {name} | {mean_sd(old, 'corrected_right')} | {mean_sd(new, 'corrected_right')} "
            f"| {mean_sd(old, 'deleted_gone')} | {mean_sd(new, 'deleted_gone')} "
            f"| {before_after(old, 'ap_other')} | {before_after(new, 'ap_other')} |"
        )
    everything = [r for name in names for r in rows_of(quick, name)]
    lines += [
        "",
        f"Now, over the {len(everything)} runs: corrected objects right "
        f"**{mean_sd(everything, 'corrected_right')}**, deleted objects gone "
        f"**{mean_sd(everything, 'deleted_gone')}** (targets: at least 0.9 each).",
        "",
    ]
    return lines
