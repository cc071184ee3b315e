"""Which per-object signals would rank the default's errors better? (issue 35)

The shipped confidence combines three signals (`inference.objects.FEATURES`).
This script measures eleven more, each cheap enough for the object table,
and fits the confidence's logistic regression with each set of signals on
several choices of fitting data, then scores the ranking on the held-out
sets exactly as ``bench_review.py`` does (recall@10, precision@5).

It also sorts the wrong objects by kind: IoU 0 with the reference (the
reference has nothing there) or 0 < IoU < 0.5 (outline, merge or split), and
draws the most confident wrong objects of three sets beside the reference,
to show what "wrong" means on these references.

    python benchmarks/bench_review_signals.py     # about 2 minutes on 2 cores
"""

from __future__ import annotations

import json

import matplotlib
import numpy as np
import pandas as pd
from bench_review import RESULTS, cpu_flags, fit_logistic, ranking
from scipy import ndimage
from scipy.special import expit
from skimage.measure import regionprops_table
from skimage.segmentation import find_boundaries

from napari_unet_tuner import segment
from napari_unet_tuner.inference.instances import BACKGROUND, BOUNDARY, INTERIOR
from napari_unet_tuner.inference.objects import FEATURES, label_means
from napari_unet_tuner.model.checkpoint import default_checkpoint_path
from napari_unet_tuner.model.loading import load_checkpoint
from napari_unet_tuner.training.metrics import iou_table

import datasets

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

SIGNALS = {
    "solidity": "area over convex hull area (merges are not convex)",
    "roundness": "4 pi area / perimeter^2",
    "eccentricity": "of the fitted ellipse",
    "contact": "share of the outline touching another object (splits)",
    "boundary_core": "mean boundary probability inside, outline excluded (merges hold one)",
    "interior_min": "lowest interior probability over the object",
    "rim_foreground": "mean foreground probability on the object's outline",
    "outer_foreground": "mean foreground probability just outside (an outline drawn too tight)",
    "intensity_deviation": "log intensity above background, from the image's median, in MADs",
    "border": "touches the image's edge",
    "small": "how far the log area lies below the image's median",
}
SIGNAL_SETS = {
    "shipped (3 signals)": [],
    "+ solidity": ["solidity"],
    "+ solidity, boundary inside": ["solidity", "boundary_core"],
    "+ solidity, boundary inside, outside foreground": [
        "solidity",
        "boundary_core",
        "outer_foreground",
    ],
    "+ solidity, border": ["solidity", "border"],
    "+ intensity": ["intensity_deviation"],
    "+ all eleven": list(SIGNALS),
}


def signals(labels: np.ndarray, probabilities: np.ndarray, image: np.ndarray) -> pd.DataFrame:
    """The candidate signals of `SIGNALS` for every object of one 2D image."""
    ids = np.unique(labels)
    ids = ids[ids > 0]
    n = int(labels.max()) + 1
    p = probabilities.astype(np.float32)
    foreground = 1 - p[BACKGROUND]
    outline = find_boundaries(labels, mode="inner") & (labels > 0)
    touching = np.zeros(labels.shape, bool)
    for axis in range(labels.ndim):
        for shift in (1, -1):
            other = np.roll(labels, shift, axis=axis)
            touching |= (other > 0) & (other != labels) & (labels > 0)
    grown = ndimage.grey_dilation(labels, size=(3,) * labels.ndim)
    outside = np.where((labels == 0) & (grown > 0), grown, 0)
    props = pd.DataFrame(
        regionprops_table(
            labels, properties=["label", "area", "perimeter", "solidity", "eccentricity", "bbox"]
        )
    )
    border = np.zeros(len(props), bool)
    for axis in range(labels.ndim):
        low, high = props[f"bbox-{axis}"], props[f"bbox-{axis + labels.ndim}"]
        border |= (low == 0) | (high == labels.shape[axis])
    plane = image.astype(np.float32)
    plane = plane.mean(-1) if plane.ndim > labels.ndim else plane
    above = label_means(plane, labels, ids) - np.median(plane[labels == 0])
    log_intensity = np.log(np.maximum(above, 1e-3))
    log_area = np.log(props["area"].to_numpy(float))
    return pd.DataFrame(
        {
            "label": ids,
            "solidity": props["solidity"].to_numpy(),
            "roundness": (4 * np.pi * props["area"] / np.maximum(props["perimeter"], 1) ** 2),
            "eccentricity": props["eccentricity"].to_numpy(),
            "contact": np.bincount(labels[touching], minlength=n)[ids]
            / np.maximum(np.bincount(labels[outline], minlength=n)[ids], 1),
            "boundary_core": label_means(p[BOUNDARY], np.where(outline, 0, labels), ids),
            "interior_min": ndimage.minimum(p[INTERIOR], labels, ids),
            "rim_foreground": label_means(foreground, np.where(outline, labels, 0), ids),
            "outer_foreground": label_means(foreground, outside, ids),
            "intensity_deviation": (log_intensity - np.median(log_intensity))
            / (np.median(np.abs(log_intensity - np.median(log_intensity))) + 0.05),
            "border": border.astype(float),
            "small": np.maximum(np.median(log_area) - log_area, 0),
        }
    )


def collect(sets: dict, checkpoint, examples: dict | None = None) -> pd.DataFrame:
    """Objects of the default on every image, with all signals and right/wrong."""
    rows = []
    for name, pairs in sets.items():
        for i, (image, truth) in enumerate(pairs):
            result = segment(image, checkpoint, return_probabilities=True)
            labels = result.labels
            if not labels.any():
                continue
            ious, _, predicted_ids = iou_table(truth, labels)
            best = np.zeros(int(labels.max()) + 1)
            if ious.size:
                best[predicted_ids] = ious.max(axis=0)
            objects = result.objects.assign(iou=lambda t, b=best: b[t["label"].to_numpy()])
            objects = objects.merge(signals(labels, result.probabilities, np.asarray(image)))
            if examples is not None:
                examples[(name, i)] = (np.asarray(image), truth, labels)
            rows.append(objects.assign(set=name, image=f"{name}#{i}"))
    table = pd.concat(rows, ignore_index=True).fillna({"stability": 0.0})
    return table.assign(wrong=table["iou"] < 0.5)


def scored(fitting: pd.DataFrame, held: pd.DataFrame, columns: list[str]) -> dict:
    """Fit the confidence on ``fitting``, rank ``held`` by it: pooled and per set recall@10."""
    model = fit_logistic(fitting[columns].to_numpy(float), (~fitting["wrong"]).to_numpy(float))
    z = (held[columns].to_numpy(float) - model["mean"]) / np.asarray(model["scale"])
    doubt = 1 - expit(model["bias"] + z @ np.asarray(model["weights"]))
    report = {k: round(float(v), 3) for k, v in ranking(held, doubt).items()}
    report["per set recall@10"] = {
        name: round(float(ranking(part, doubt[part.index])["recall@10"]), 2)
        for name, part in held.groupby("set")
    }
    return report


def kinds(held: pd.DataFrame) -> dict:
    """Wrong objects per set: none (IoU 0), and outline/merge/split (0 < IoU < 0.5)."""
    wrong = held[held["wrong"]]
    return {
        name: {
            "wrong": len(part),
            "nothing in the reference": int((part["iou"] == 0).sum()),
            "of which at the edge": int(((part["iou"] == 0) & (part["border"] > 0)).sum()),
            "outline, merge or split": int((part["iou"] > 0).sum()),
            "median confidence": round(float(part["confidence"].median()), 2),
        }
        for name, part in wrong.groupby("set")
    }


def draw_examples(held: pd.DataFrame, examples: dict, path, per_set: int = 4) -> None:
    """The most confident wrong objects of three sets: red the prediction, green the reference."""
    names = [n for n in held["set"].unique() if n.split()[0] in ("Hoechst", "BBBC007", "DSB2018")]
    fig, axes = plt.subplots(len(names), per_set, figsize=(2.4 * per_set, 2.6 * len(names)))
    for row, name in zip(axes, names, strict=True):
        worst = held[(held["set"] == name) & held["wrong"]]
        worst = worst.sort_values("confidence", ascending=False).head(per_set)
        for ax, (_, obj) in zip(row, worst.iterrows(), strict=False):
            image, truth, labels = examples[(name, int(obj["image"].split("#")[1]))]
            y, x = int(obj["centroid-0"]), int(obj["centroid-1"])
            crop = (slice(max(y - 40, 0), y + 40), slice(max(x - 40, 0), x + 40))
            plane = image[crop].astype(float)
            plane = (plane - plane.min()) / (np.ptp(plane) + 1e-9)
            rgb = np.dstack([plane] * 3)
            rgb[find_boundaries(truth[crop])] = (0, 1, 0)
            rgb[find_boundaries(labels[crop] == obj["label"])] = (1, 0, 0)
            ax.imshow(rgb)
            ax.set_title(f"conf {obj['confidence']:.2f} IoU {obj['iou']:.2f}", fontsize=8)
        for ax in row:
            ax.axis("off")
        row[0].text(-8, 40, name.split(",")[0], rotation=90, va="center", ha="right", fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=80)


def main() -> None:
    checkpoint = load_checkpoint(default_checkpoint_path())
    examples: dict = {}
    train = collect(datasets.training_sets(), checkpoint)
    bbbc007 = collect({"BBBC007 training fields": datasets.bbbc007_nuclei()[0]}, checkpoint)
    held = collect(datasets.held_out_sets(), checkpoint, examples)
    fittings = {
        "default's training images": train,
        "the same, objects with nothing in the reference left out": train[train["iou"] > 0],
        "the same plus BBBC007's training fields": pd.concat([train, bbbc007], ignore_index=True),
        "BBBC007's training fields only": bbbc007,
    }
    report = {
        "cpu": cpu_flags(),
        "signals": SIGNALS,
        "held out": {"objects": len(held), "wrong": int(held["wrong"].sum())},
        "kinds of wrong objects": kinds(held),
        "fits": {
            fitting_name: {
                set_name: scored(fitting, held, [*FEATURES, *extra])
                for set_name, extra in SIGNAL_SETS.items()
            }
            for fitting_name, fitting in fittings.items()
        },
    }
    (RESULTS / "review_signals.json").write_text(json.dumps(report, indent=1))
    draw_examples(held, examples, RESULTS / "review_wrong_examples.png")
    for fitting_name, rows in report["fits"].items():
        for set_name, r in rows.items():
            print(f"{fitting_name[:40]:40s} {set_name:50s} {r['recall@10']} {r['precision@5']}")


if __name__ == "__main__":
    main()
