"""Headless demo of the whole loop on real microscopy, through the `unet-tuner` CLI.

1. Segment a HeLa nuclei frame with the bundled default checkpoint.
2. Paint (simulated) scribbles on phase-contrast bacteria, where the nuclei
   model is weak: about 20 whole objects plus background strokes.
3. Fine-tune for 60 s on the CPU, and segment a held-out bacteria frame with
   the model before and after.

Writes everything to demo/ and prints AP@0.5 before and after.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import tifffile

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "benchmarks"))

from painting import paint_scribbles  # noqa: E402

from napari_unet_tuner.training.metrics import average_precision  # noqa: E402

import datasets  # noqa: E402

CLI = [sys.executable, "-m", "napari_unet_tuner.cli"]


def run(*args: str) -> None:
    print("$ unet-tuner", " ".join(args), flush=True)
    subprocess.run([*CLI, *args], check=True)


def main() -> None:
    out = ROOT / "demo"
    out.mkdir(exist_ok=True)
    hela, _ = datasets.hela()
    tifffile.imwrite(out / "hela.tif", hela[19])
    run("segment", str(out / "hela.tif"), "-o", str(out / "hela_labels.tif"), "--overwrite")

    bacteria, masks = datasets.bacteria()
    train_frames, test_frame = (12, 15), 19
    scribbles = paint_scribbles([masks[t] for t in train_frames], n_objects=20, seed=0)
    files = []
    for t, ann in zip(train_frames, scribbles, strict=True):
        tifffile.imwrite(out / f"bacteria_t{t}.tif", bacteria[t])
        tifffile.imwrite(out / f"bacteria_t{t}_scribbles.tif", ann)
        files += [str(out / f"bacteria_t{t}.tif"), str(out / f"bacteria_t{t}_scribbles.tif")]
    tifffile.imwrite(out / "bacteria_test.tif", bacteria[test_frame])
    tuned = out / "bacteria_tuned.safetensors"
    tuned.unlink(missing_ok=True)
    run(
        "segment",
        str(out / "bacteria_test.tif"),
        "-o",
        str(out / "bacteria_before.tif"),
        "--overwrite",
    )
    run("finetune", *files, "--mode", "scribbles", "--seconds", "60", "-o", str(tuned))
    run(
        "segment",
        str(out / "bacteria_test.tif"),
        "-o",
        str(out / "bacteria_after.tif"),
        "--checkpoint",
        str(tuned),
        "--overwrite",
    )
    truth = masks[test_frame]
    before = average_precision(truth, tifffile.imread(out / "bacteria_before.tif"))
    after = average_precision(truth, tifffile.imread(out / "bacteria_after.tif"))
    print(f"held-out bacteria frame {test_frame}: AP@0.5 before {before:.3f}, after {after:.3f}")
    print(f"outputs in {out}")


if __name__ == "__main__":
    main()
