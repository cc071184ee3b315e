"""Quality of the default nuclei checkpoint on images it never saw, beside a classical baseline.

    .venv/bin/python benchmarks/bench_quality.py

Held-out images (`datasets.held_out_sets`, never trained on): a DSB2018
fluorescence image with 125 hand-annotated nuclei (the StarDist test image:
another lab, microscope and cell line than any training image); and, with
computer-made labels, the parts of the training datasets that training
never sees: HeLa frames 15-19 right 367 columns, scratch-assay frames 7-9,
the right half of cells3d planes 20/30/40, plane 2 of CHO frames 16-19.
Baseline: Gaussian smoothing, Otsu threshold, distance transform, seeded
watershed (scikit-image). Z-stacks (cells3d's held-out right half, CHO
frames 16-19) are also scored in 3D: plane by plane, and as 3D objects
(``stack="3d"``), with their times. Writes results/quality.json.
"""

from __future__ import annotations

import json
import time
from pathlib import Path

import numpy as np
from scipy import ndimage
from skimage.feature import peak_local_max
from skimage.filters import gaussian, threshold_otsu
from skimage.segmentation import watershed

from napari_unet_tuner import load_checkpoint, segment
from napari_unet_tuner.model.checkpoint import default_checkpoint_path
from napari_unet_tuner.training.metrics import average_precision

import datasets

RESULTS = Path(__file__).parent / "results"


def otsu_watershed(
    image: np.ndarray, min_distance: int = 5, min_size: int = 15, sigma: float = 1.5
) -> np.ndarray:
    """The classical pipeline a user would try first."""
    smooth = gaussian(image.astype(np.float32), sigma=sigma, preserve_range=True)
    mask = smooth > threshold_otsu(smooth)
    distance = ndimage.distance_transform_edt(mask)
    peaks = peak_local_max(distance, min_distance=min_distance, labels=ndimage.label(mask)[0])
    markers = np.zeros(image.shape, np.int32)
    markers[tuple(peaks.T)] = np.arange(1, len(peaks) + 1)
    labels = watershed(-distance, markers, mask=mask)
    sizes = np.bincount(labels.ravel())
    labels[sizes[labels] < min_size] = 0
    return labels


def sized_otsu_watershed(image: np.ndarray, diameter: float) -> np.ndarray:
    """`otsu_watershed` with parameters scaled to the nuclei's diameter (defaults: 25 px)."""
    ratio = diameter / 25.0
    return otsu_watershed(
        image,
        min_distance=max(1, round(5 * ratio)),
        min_size=max(1, round(15 * ratio**2)),
        sigma=1.5 * ratio,
    )


def true_diameter(labels: np.ndarray) -> float:
    """Median equivalent diameter of every labelled object (those cut by the border too)."""
    areas = np.bincount(labels.ravel())[1:]
    areas = areas[areas > 0]
    return float(np.median(2 * np.sqrt(areas / np.pi))) if len(areas) else float("nan")


ZOOMS = (0.5, 1.0, 2.0, 3.0)


def magnification(checkpoint) -> dict:
    """AP@0.5 of every held-out 2D set zoomed 0.5x-3x: automatic object size, fixed scale, Otsu.

    The fixed-scale model is the same checkpoint with ``diameter=None``.
    The Otsu + watershed baseline is told the true median diameter, and
    scores the better of its parameters scaled to it and its defaults (per
    set and zoom): a generous baseline.
    """
    from napari_unet_tuner import InferenceConfig

    methods = {
        "automatic size": lambda image, d: segment(image, checkpoint),
        "fixed scale": lambda image, d: segment(
            image, checkpoint, inference=InferenceConfig(diameter=None)
        ),
        "Otsu sized": lambda image, d: sized_otsu_watershed(image, d),
        "Otsu default": lambda image, d: otsu_watershed(image),
    }
    report = {}
    for name, pairs in datasets.held_out_sets().items():
        rows = {}
        for zoom in ZOOMS:
            scores: dict[str, list[float]] = {m: [] for m in methods}
            estimates, diameters = [], []
            for image, truth in (datasets.zoomed(*pair, zoom) for pair in pairs):
                diameter = true_diameter(truth)
                diameters.append(diameter)
                for method, run in methods.items():
                    out = run(image, diameter)
                    labels = out if isinstance(out, np.ndarray) else out.labels
                    if method == "automatic size" and out.object_size is not None:
                        estimates.append(out.object_size.diameter or float("nan"))
                    scores[method].append(average_precision(truth, labels, 0.5))
            means = {m: round(float(np.mean(v)), 3) for m, v in scores.items()}
            otsu = max(means.pop("Otsu sized"), means.pop("Otsu default"))
            rows[str(zoom)] = {
                "true_diameter": round(float(np.nanmedian(diameters)), 1),
                "estimated_diameter": round(float(np.nanmedian(estimates)), 1)
                if estimates
                else None,
                **means,
                "Otsu + watershed, told the size": otsu,
            }
            print(name, zoom, rows[str(zoom)], flush=True)
        report[name] = rows
    return report


# Voxel sizes (Z over XY pixel size): cells3d 0.29 / 0.26 um (skimage's cells3d),
# Fluo-N3DH-CHO 1.0 / 0.202 um (Cell Tracking Challenge).
STACKS = {
    "confocal cells3d nuclei, right half (60 x 256 x 128)": ("cells3d", 0.29 / 0.26),
    "CHO (CTC 3D), frames 16-19 (5 planes each)": ("cho", 1.0 / 0.202),
}


def stacks(checkpoint) -> dict:
    """3D AP of Z-stacks: each plane on its own against 3D objects (stack='3d'), and times."""
    from napari_unet_tuner import InferenceConfig

    cells, cells_labels = datasets.cells3d_nuclei()
    cho, cho_labels = datasets.cho_nuclei()
    volumes = {
        "cells3d": [
            (
                cells[:, :, datasets.CELLS3D_SPLIT_X :],
                cells_labels[:, :, datasets.CELLS3D_SPLIT_X :],
            )
        ],
        "cho": [(cho[t], cho_labels[t]) for t in range(16, 20)],
    }
    report = {}
    for name, (key, anisotropy) in STACKS.items():
        rows = {}
        for mode in ("planes", "3d"):
            # At scale 1 both ways (3D objects do not resize): the times compare.
            config = InferenceConfig(stack=mode, anisotropy=anisotropy, diameter=None)
            scores, seconds = [], 0.0
            for volume, truth in volumes[key]:
                t0 = time.perf_counter()
                labels = segment(volume, checkpoint, axes="ZYX", inference=config).labels
                seconds += time.perf_counter() - t0
                scores.append(
                    [average_precision(truth, labels, threshold) for threshold in (0.5, 0.75)]
                )
            ap50, ap75 = np.mean(scores, axis=0)
            rows[mode] = {
                "ap50": round(float(ap50), 3),
                "ap75": round(float(ap75), 3),
                "seconds": round(seconds, 1),
            }
        rows["anisotropy"] = round(anisotropy, 2)
        rows["time_ratio"] = round(rows["3d"]["seconds"] / rows["planes"]["seconds"], 2)
        report[name] = rows
        print(name, rows, flush=True)
    return report


def main() -> None:
    import argparse

    parser = argparse.ArgumentParser()
    parser.add_argument(
        "--stacks-only",
        action="store_true",
        help="rerun only the Z-stacks and keep the rest of results/quality.json",
    )
    args = parser.parse_args()
    checkpoint = load_checkpoint(default_checkpoint_path())
    if args.stacks_only:
        report = json.loads((RESULTS / "quality.json").read_text())
        report["stacks"] = stacks(checkpoint)
        (RESULTS / "quality.json").write_text(json.dumps(report, indent=2))
        return
    report: dict = {"checkpoint": checkpoint.card.name, "sets": {}}
    for name, pairs in datasets.held_out_sets().items():
        scores: dict[str, dict[str, float]] = {}
        for method, run in (
            ("default U-Net", lambda img: segment(img, checkpoint).labels),
            ("Otsu + watershed", otsu_watershed),
        ):
            predictions, seconds = [], 0.0
            for image, _ in pairs:
                t0 = time.perf_counter()
                predictions.append(run(image))
                seconds += time.perf_counter() - t0
            scores[method] = {
                **datasets.mean_ap([truth for _, truth in pairs], predictions, digits=3),
                "seconds_per_image": round(seconds / len(pairs), 2),
            }
        report["sets"][name] = {"images": len(pairs), **scores}
        print(name, scores, flush=True)
    report["magnification"] = magnification(checkpoint)
    report["stacks"] = stacks(checkpoint)
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / "quality.json").write_text(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
