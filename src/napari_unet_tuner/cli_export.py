"""``unet-tuner export``: a checkpoint as a bioimage.io model package, then its test."""

from __future__ import annotations

import argparse
import logging
from pathlib import Path

log = logging.getLogger("napari_unet_tuner")


def add_export_parser(commands, formatter_class=argparse.HelpFormatter) -> None:
    """Add the ``export`` subcommand to the ``unet-tuner`` parser's subcommands."""
    export = commands.add_parser(
        "export",
        help="write a checkpoint as a bioimage.io model package (.zip)",
        formatter_class=formatter_class,
        description=(
            "Write a checkpoint as a bioimage.io model package for deepImageJ, ilastik, "
            "QuPath, BiaPy or bioimageio.core, and test it with bioimageio.core. "
            "napari-unet-tuner opens the package again as the same model (--checkpoint)."
        ),
    )
    export.add_argument(
        "checkpoint",
        type=Path,
        metavar="CHECKPOINT",
        nargs="?",
        help="a .safetensors checkpoint (default: the bundled nuclei model)",
    )
    export.add_argument("-o", "--output", type=Path, required=True, help="the package, .zip")
    export.add_argument(
        "--sample",
        type=Path,
        help="an image the model segments, for the package's test and cover "
        "(default: the bundled nuclei sample)",
    )
    export.add_argument(
        "--author", action="append", help="who made the model (repeat for several)"
    )
    export.add_argument("--license", default="CC-BY-4.0", help="SPDX licence of the weights")
    export.add_argument("--overwrite", action="store_true", help="replace an existing package")
    export.add_argument(
        "--no-test", action="store_true", help="skip bioimageio.core's test of the package"
    )


def run_export(args: argparse.Namespace) -> int:
    """Run ``unet-tuner export``; return the exit status (1 if the package fails its test)."""
    import numpy as np

    from napari_unet_tuner._sample_data import nuclei_sample
    from napari_unet_tuner.io import open_image
    from napari_unet_tuner.model.bioimageio_export import export_and_check, export_bioimageio
    from napari_unet_tuner.model.checkpoint import default_checkpoint_path
    from napari_unet_tuner.model.loading import load_checkpoint
    from napari_unet_tuner.outputs import check_output

    checkpoint = load_checkpoint(args.checkpoint or default_checkpoint_path())
    if args.sample:
        check_output(args.output, [args.sample])
    sample = np.asarray(open_image(args.sample)) if args.sample else nuclei_sample()[0][0]
    options = {
        "authors": args.author or ("napari-unet-tuner user",),
        "license": args.license,
        "overwrite": args.overwrite,
    }
    if args.no_test:
        log.info("wrote %s", export_bioimageio(checkpoint, args.output, sample, **options))
        return 0
    written, passed, report = export_and_check(checkpoint, args.output, sample, **options)
    log.info("wrote %s\nbioimageio.core test: %s", written, report)
    return 0 if passed else 1
