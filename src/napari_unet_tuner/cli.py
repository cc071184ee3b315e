"""The ``unet-tuner`` command: segment images and inspect checkpoints from a shell."""

from __future__ import annotations

import argparse
import logging
import sys
from collections.abc import Sequence

from napari_unet_tuner.cli_export import add_export_parser, run_export
from napari_unet_tuner.cli_finetune import add_finetune_parser, run_finetune
from napari_unet_tuner.cli_info import add_info_parser, run_info
from napari_unet_tuner.cli_segment import run_segment
from napari_unet_tuner.cli_segment_parser import add_segment_parser
from napari_unet_tuner.errors import EXPECTED_ERRORS

log = logging.getLogger("napari_unet_tuner")

_INTERRUPTED = {
    "segment": "interrupted: finished outputs are kept and no partial .tif was written; "
    "an unfinished .zarr output resumes when the same command is run again",
    "finetune": "interrupted: no model was written",
}


class HelpFormatter(argparse.ArgumentDefaultsHelpFormatter):
    """Help that shows each option's default, where it has one worth showing."""

    def _get_help_string(self, action: argparse.Action) -> str:
        if action.default in (None, False) or action.default is argparse.SUPPRESS:
            return action.help or ""
        return super()._get_help_string(action) or ""


def _build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="unet-tuner",
        description="Segment microscopy images with a U-Net and inspect checkpoints.",
    )
    commands = parser.add_subparsers(dest="command", required=True)

    add_segment_parser(commands, HelpFormatter)

    add_finetune_parser(commands, HelpFormatter)

    add_info_parser(commands, HelpFormatter)
    add_export_parser(commands, HelpFormatter)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Run the command line; return the exit status (0 on success)."""
    args = _build_parser().parse_args(argv)
    logging.basicConfig(format="%(message)s", stream=sys.stderr)
    log.setLevel(logging.INFO)
    try:
        if args.command == "info":
            return run_info(args)
        if args.command == "finetune":
            return run_finetune(args)
        if args.command == "export":
            return run_export(args)
        return run_segment(args)
    except EXPECTED_ERRORS as exc:
        log.error("error: %s", exc)
        return 1
    except KeyboardInterrupt:
        log.error("%s", _INTERRUPTED.get(args.command, "interrupted"))
        return 130


if __name__ == "__main__":
    sys.exit(main())
