"""Quality of the default nuclei checkpoint on images it never saw, beside a classical baseline.

    .venv/bin/python benchmarks/bench_quality.py

Held-out images (`datasets.held_out_sets`, never trained on): a DSB2018
fluorescence image with 125 hand-annotated nuclei (the StarDist test image:
another lab, microscope and cell line than any training image); and, with
computer-made labels, the parts of the training datasets that training
never sees: HeLa frames 15-19 right 367 columns, scratch-assay frames 7-9,
the right half of cells3d planes 20/30/40, plane 2 of CHO frames 16-19.
Baseline: Gaussian smoothing, Otsu threshold, distance transform, seeded
watershed (scikit-image). Writes results/quality.json.
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

import datasets

RESULTS = Path(__file__).parent / "results"


def otsu_watershed(image: np.ndarray, min_distance: int = 5, min_size: int = 15) -> np.ndarray:
    """The classical pipeline a user would try first."""
    smooth = gaussian(image.astype(np.float32), sigma=1.5, preserve_range=True)
    mask = smooth > threshold_otsu(smooth)
    distance = ndimage.distance_transform_edt(mask)
    peaks = peak_local_max(distance, min_distance=min_distance, labels=ndimage.label(mask)[0])
    markers = np.zeros(image.shape, np.int32)
    markers[tuple(peaks.T)] = np.arange(1, len(peaks) + 1)
    labels = watershed(-distance, markers, mask=mask)
    sizes = np.bincount(labels.ravel())
    labels[sizes[labels] < min_size] = 0
    return labels


def main() -> None:
    checkpoint = load_checkpoint(default_checkpoint_path())
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
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / "quality.json").write_text(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
