"""``unet-tuner info``: what a checkpoint segments, how it was made, in words or JSON."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path


def add_info_parser(commands, formatter_class=argparse.HelpFormatter) -> None:
    """Add the ``info`` subcommand to the ``unet-tuner`` parser's subcommands."""
    info = commands.add_parser(
        "info",
        help="show a checkpoint's model card and architecture",
        formatter_class=formatter_class,
    )
    info.add_argument(
        "checkpoint",
        type=Path,
        metavar="CHECKPOINT",
        nargs="?",
        help="a .safetensors checkpoint (default: the bundled nuclei model)",
    )
    info.add_argument("--json", action="store_true", help="print machine-readable JSON")


def run_info(args: argparse.Namespace) -> int:
    """Run ``unet-tuner info``; return the exit status."""
    from napari_unet_tuner.model.checkpoint import default_checkpoint_path
    from napari_unet_tuner.model.history import describe_training_run
    from napari_unet_tuner.model.loading import load_checkpoint

    path = args.checkpoint or default_checkpoint_path()
    ckpt = load_checkpoint(path)
    report = {
        "file": str(path),
        "sha256": ckpt.sha256,
        "model_config": ckpt.model_config.to_dict(),
        "card": ckpt.card.to_dict(),
    }
    if args.json:
        sys.stdout.write(json.dumps(report, indent=2) + "\n")
        return 0
    card = ckpt.card
    lines = [
        f"name:         {card.name}",
        f"description:  {card.description}",
        f"input:        axes {card.input_axes}, channels {', '.join(card.channel_names)}",
        f"pixel size:   {card.pixel_size or 'unknown'}",
        f"outputs:      {card.outputs}",
        f"architecture: {ckpt.model_config}",
        f"normalize:    {card.normalization}",
        f"instances:    {card.instances}",
        f"parent:       {card.parent or 'none'}",
        f"training:     {len(card.training)} run(s)",
        f"created:      {card.created} by napari-unet-tuner {card.package_version}",
        f"sha256:       {ckpt.sha256}",
    ]
    lines += [f"  - {describe_training_run(run)}" for run in card.training]
    sys.stdout.write("\n".join(lines) + "\n")
    return 0
