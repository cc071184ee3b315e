"""The output folder of a chunked run: created, resumed only by the same run, marked complete."""

from __future__ import annotations

import json
import os
import shutil
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from napari_unet_tuner.inference.chunk_tasks import RunSpec
from napari_unet_tuner.io import write_json_atomic
from napari_unet_tuner.labels_files import open_labels_zarr

WORK_DIR = ".unet_tuner_run"
"""The run's work folder inside the output, removed when the run is complete."""
ATTRS_KEY = "napari_unet_tuner"


def fingerprint(
    spec: RunSpec, source_name: str, digest: str, chunk_shape: tuple[int, ...]
) -> dict:
    """Return what identifies a run: its input, and every setting that changes the labels."""
    return {
        "input": source_name,
        "input_sample_sha256": digest,
        # What a resume checks beyond the sample: every finished part's input
        # against its CRC-32 (chunk_tasks.changed_input).
        "resume_check": "crc32 of each finished part's input",
        "input_shape": [int(s) for s in spec.source.shape],
        "input_dtype": str(np.dtype(spec.source.dtype)),
        "axes": spec.axes,
        # An unsaved model (no file, no sha256) is known by its weights.
        "checkpoint_sha256": spec.checkpoint.weights_sha256(),
        "instances": spec.instances.to_dict(),
        "normalization": spec.normalization.to_dict(),
        # Every setting that changes the labels: batch size and precision change
        # the last bits of the probabilities, so a seed at a threshold may move.
        "inference": {
            k: v
            for k, v in spec.inference.to_dict().items()
            if k not in ("num_threads", "object_table")
        },
        "tile_shape": list(spec.tile_shape),
        "chunk_shape": list(chunk_shape),
    }


def prepare_output(
    path: Path,
    fingerprint: dict,
    create: Callable[[], Any],
    overwrite: bool,
) -> Path:
    """Create the output and its work folder, or find an interrupted run to resume."""
    work_dir = path / WORK_DIR
    if path.exists():
        manifest = work_dir / "manifest.json"
        resumable = manifest.exists() and _read_json(manifest) == fingerprint
        if overwrite:
            shutil.rmtree(path)
        elif not resumable:
            state = (
                "is a finished result"
                if not work_dir.exists()
                else "is an interrupted run with other settings or input"
            )
            raise FileExistsError(
                f"{path} exists and {state}; choose another output or allow "
                "overwriting (--overwrite, overwrite=True)"
            )
        else:
            return work_dir
    create()
    write_json_atomic(work_dir / "manifest.json", fingerprint)
    return work_dir


def _read_json(path: Path) -> Any:
    try:
        return json.loads(path.read_text())
    except ValueError:
        return None


def is_complete(path: str | os.PathLike) -> bool:
    """Whether a chunked output on disk was finished."""
    try:
        labels = open_labels_zarr(path)
    except Exception:  # noqa: BLE001 - anything unreadable is not a finished result
        return False
    return bool(dict(labels.attrs).get(ATTRS_KEY, {}).get("complete"))
