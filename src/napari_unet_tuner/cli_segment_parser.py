"""The options of ``unet-tuner segment``, with argparse's kind of errors for bad values."""

from __future__ import annotations

import argparse
from pathlib import Path

from napari_unet_tuner.cli_finetune import diameter_argument
from napari_unet_tuner.config import (
    PRECISIONS,
    RUNTIMES,
    SEGMENT_STACK_MODES,
    ChunkedConfig,
    InferenceConfig,
)


def add_segment_parser(commands, formatter_class=argparse.HelpFormatter) -> None:
    """Add the ``segment`` subcommand to the ``unet-tuner`` parser's subcommands."""
    seg = commands.add_parser(
        "segment",
        formatter_class=formatter_class,
        help="segment images into instance labels",
        description=(
            "Segment images (TIFF, .npy, zarr, OME-Zarr, PNG, JPEG) into int32 labels. A .zarr "
            "output is written chunk by chunk on dask (images larger than memory, --workers, "
            "--scheduler) and an interrupted run resumes where it stopped; a .tif output is "
            "built in memory."
        ),
    )
    seg.add_argument("inputs", nargs="+", type=Path, metavar="INPUT", help="image file(s)")
    seg.add_argument(
        "-o",
        "--output",
        # A string: a trailing slash says "folder", and Path would drop it.
        type=str,
        required=True,
        help=(
            "OUT.tif or OUT.zarr for a single input, otherwise a folder "
            "(INPUT_labels.tif or INPUT_labels.zarr inside, see --format; a folder whose "
            "name has a dot: end it with /)"
        ),
    )
    seg.add_argument(
        "--format",
        choices=["tif", "zarr"],
        help="output format in a folder (default: zarr for zarr inputs, tif otherwise)",
    )
    seg.add_argument("--checkpoint", type=Path, help="model checkpoint (default: the bundled one)")
    seg.add_argument("--axes", help="axes of the input, letters from TZCYX (default: inferred)")
    seg.add_argument(
        "--channel",
        type=int,
        metavar="N",
        help="segment channel N (from 0) of a multichannel image, e.g. the nuclear stain; "
        "the channel axis comes from the file's metadata or --axes",
    )
    seg.add_argument("--tile-shape", type=int, nargs="+", help="tile size, e.g. 512 512")
    seg.add_argument(
        "--overlap", type=float, default=InferenceConfig.overlap, help="tile overlap fraction"
    )
    seg.add_argument(
        "--batch-size", type=int, default=InferenceConfig.batch_size, help="tiles per forward pass"
    )
    seg.add_argument("--device", default="auto", help="auto, cpu, cuda, cuda:1 or mps")
    seg.add_argument(
        "--precision",
        choices=PRECISIONS,
        default=InferenceConfig.precision,
        help="number format of the model: auto is bfloat16 on CPUs that compute it natively "
        "(about 2x faster, the same labels), float32 on other CPUs, float16 on GPUs",
    )
    seg.add_argument(
        "--runtime",
        choices=RUNTIMES,
        default=InferenceConfig.runtime,
        help="what runs the model on the CPU: auto is the fastest of torch and OpenVINO "
        "(if installed) measured once on this machine and remembered; images of under 2 "
        "megapixels take torch",
    )
    seg.add_argument(
        "--diameter",
        type=diameter_argument,
        default="auto",
        help="object diameter in pixels, 'auto' (measured on each image; images of objects "
        "far from the model's size are resized to it) or 'none' (never resize)",
    )
    seg.add_argument(
        "--scale",
        type=_scale,
        default=1.0,
        help="resize the image by this factor before the model instead (0.5 for nuclei twice "
        "as large as the model expects); turns --diameter auto off",
    )
    seg.add_argument(
        "--stack",
        choices=SEGMENT_STACK_MODES,
        default=InferenceConfig.stack,
        help="Z-stacks: each plane on its own, or 3d objects (the 2D model on XY, XZ and YZ "
        "planes, averaged, grown in 3D); auto is 3d when the file's metadata (or --axes) "
        "says the image has a Z axis, planes otherwise",
    )
    seg.add_argument(
        "--anisotropy",
        type=float,
        help="Z step over XY pixel size, for 3d objects (e.g. 2 for 0.5 um planes of 0.25 um "
        "pixels); default: from the file's metadata (OME or ImageJ), else 1",
    )
    # Defaults come from the checkpoint's card (the bundled model: 0.9, 0.4, 15, 0).
    model_default = " (default: the model's own; `unet-tuner info` shows it)"
    seg.add_argument(
        "--threshold",
        type=_fraction(closed=False),
        help="foreground probability threshold, 0-1" + model_default,
    )
    seg.add_argument(
        "--seed-threshold",
        type=_fraction(closed=False),
        help="seed level, 0-1: interior probability, or distance to the edge for distance "
        "models" + model_default,
    )
    seg.add_argument(
        "--min-size", type=_count, help="smallest object kept, in pixels" + model_default
    )
    seg.add_argument(
        "--split-solidity",
        type=_fraction(closed=True),
        help="split seeds less convex than this (0-1) at their waist; 0 turns splitting off"
        + model_default,
    )
    seg.add_argument(
        "--probabilities", action="store_true", help="also write INPUT_probabilities.tif"
    )
    seg.add_argument(
        "--table",
        nargs="?",
        const=True,
        metavar="CSV",
        help="also write a table of the objects (label, area, centroid, intensity, "
        "confidence, review_rank) to CSV (default, and for several inputs: "
        "INPUT_objects.csv beside the labels), and the places the model may have missed "
        "to *_possible_misses.csv; for .zarr outputs too, added up chunk by chunk",
    )
    seg.add_argument("--overwrite", action="store_true", help="replace existing outputs")
    # Last: most users never need them (one machine, a .tif output).
    cluster = seg.add_argument_group("zarr output, images larger than memory, clusters")
    cluster.add_argument(
        "--workers",
        type=int,
        help="zarr output: run on a dask LocalCluster of N worker processes (default: threads)",
    )
    cluster.add_argument(
        "--scheduler", metavar="ADDRESS", help="zarr output: run on this dask.distributed cluster"
    )
    cluster.add_argument(
        "--threads-per-worker",
        type=int,
        default=ChunkedConfig.threads_per_worker,
        help="threads of each --workers process",
    )
    cluster.add_argument("--memory-limit", help="memory cap of each --workers process, e.g. 2GB")
    cluster.add_argument(
        "--chunk-shape", type=int, nargs="+", help="zarr output chunk, e.g. 2048 2048"
    )


def _fraction(closed: bool):
    """Return an argparse type of a number in (0, 1), or [0, 1] when ``closed``."""

    def parse(text: str) -> float:
        value = float(text)
        inside = 0 <= value <= 1 if closed else 0 < value < 1
        if not inside:
            raise argparse.ArgumentTypeError(
                f"{value:g} is outside {'[0, 1]' if closed else '(0, 1)'}"
            )
        return value

    return parse


def _count(text: str) -> int:
    value = int(text)
    if value < 0:
        raise argparse.ArgumentTypeError(f"{value} is negative; give a number of pixels")
    return value


def _scale(text: str) -> float:
    value = float(text)
    if not 0.1 <= value <= 10:
        raise argparse.ArgumentTypeError(f"{value} is outside 0.1-10")
    return value
