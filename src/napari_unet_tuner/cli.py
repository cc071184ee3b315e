"""The ``unet-tuner`` command: segment images and inspect checkpoints from a shell."""

from __future__ import annotations

import argparse
import json
import logging
import sys
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from napari_unet_tuner._generators import run_to_completion
from napari_unet_tuner.config import InferenceConfig, InstanceConfig, TrainingConfig
from napari_unet_tuner.errors import UnetTunerError

log = logging.getLogger("napari_unet_tuner")


def _build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="unet-tuner",
        description="Segment microscopy images with a U-Net and inspect checkpoints.",
    )
    commands = parser.add_subparsers(dest="command", required=True)

    seg = commands.add_parser(
        "segment",
        help="segment images into instance labels",
        description="Segment images (TIFF, .npy, .zarr) and write int32 label TIFFs.",
    )
    seg.add_argument("inputs", nargs="+", type=Path, metavar="INPUT", help="image file(s)")
    seg.add_argument(
        "-o",
        "--output",
        type=Path,
        required=True,
        help="output .tif for a single input, otherwise a folder (INPUT_labels.tif inside)",
    )
    seg.add_argument("--checkpoint", type=Path, help="model checkpoint (default: the bundled one)")
    seg.add_argument("--axes", help="axes of the input, letters from TZCYX (default: inferred)")
    seg.add_argument("--tile-shape", type=int, nargs="+", help="tile size, e.g. 512 512")
    seg.add_argument(
        "--overlap", type=float, default=InferenceConfig.overlap, help="tile overlap fraction"
    )
    seg.add_argument(
        "--batch-size", type=int, default=InferenceConfig.batch_size, help="tiles per forward pass"
    )
    seg.add_argument("--device", default="auto", help="auto, cpu, cuda, cuda:1 or mps")
    seg.add_argument("--threshold", type=float, help="foreground probability threshold")
    seg.add_argument("--seed-threshold", type=float, help="interior probability for seeds")
    seg.add_argument("--min-size", type=int, help="smallest object kept, in pixels")
    seg.add_argument(
        "--probabilities", action="store_true", help="also write INPUT_probabilities.tif"
    )
    seg.add_argument("--overwrite", action="store_true", help="replace existing outputs")

    tune = commands.add_parser(
        "finetune",
        help="fine-tune a model on painted annotations",
        description=(
            "Fine-tune on (IMAGE, ANNOTATION) pairs and write a new checkpoint. corrections: "
            "instance labels, 0 = background. scribbles: 0 = not annotated, 1 = background, "
            "2, 3, ... = objects."
        ),
    )
    tune.add_argument("files", nargs="+", type=Path, metavar="IMAGE ANNOTATION")
    tune.add_argument("-o", "--output", type=Path, required=True, help="new checkpoint file")
    tune.add_argument("--checkpoint", type=Path, help="starting model (default: the bundled one)")
    tune.add_argument("--from-scratch", action="store_true", help="start from random weights")
    tune.add_argument("--mode", choices=["corrections", "scribbles"], default="corrections")
    tune.add_argument(
        "--seconds", type=float, default=TrainingConfig.max_seconds, help="time budget"
    )
    tune.add_argument("--seed", type=int, default=0)
    tune.add_argument("--axes", help="axes of the images, letters from TZCYX (default: inferred)")
    tune.add_argument("--device", default="auto", help="auto, cpu, cuda or mps")
    tune.add_argument("--name", help="name for the new model card")

    info = commands.add_parser("info", help="show a checkpoint's model card and architecture")
    info.add_argument("checkpoint", type=Path, metavar="CHECKPOINT")
    info.add_argument("--json", action="store_true", help="print machine-readable JSON")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Run the command line; return the exit status (0 on success)."""
    args = _build_parser().parse_args(argv)
    logging.basicConfig(format="%(message)s", stream=sys.stderr)
    log.setLevel(logging.INFO)
    try:
        if args.command == "info":
            return _info(args)
        if args.command == "finetune":
            return _finetune(args)
        return _segment(args)
    except (UnetTunerError, OSError) as exc:
        log.error("error: %s", exc)
        return 1
    except KeyboardInterrupt:
        log.error("interrupted; no partial output was written")
        return 130


def _info(args: argparse.Namespace) -> int:
    from napari_unet_tuner.model.checkpoint import load_checkpoint

    ckpt = load_checkpoint(args.checkpoint)
    report = {
        "file": str(args.checkpoint),
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
    for run in card.training:
        lines.append(f"  - {json.dumps(run)}")
    sys.stdout.write("\n".join(lines) + "\n")
    return 0


def _output_paths(args: argparse.Namespace) -> list[tuple[Path, Path, Path]]:
    """(input, labels path, probabilities path) per input."""
    single_file = len(args.inputs) == 1 and args.output.suffix.lower() in (".tif", ".tiff")
    if not single_file and args.output.suffix.lower() in (".tif", ".tiff"):
        raise UnetTunerError(
            f"{len(args.inputs)} inputs need an output folder, not the file {args.output}"
        )
    paths = []
    for image in args.inputs:
        stem = image.name.split(".")[0]
        labels = args.output if single_file else args.output / f"{stem}_labels.tif"
        probs = labels.with_name(labels.stem.removesuffix("_labels") + "_probabilities.tif")
        paths.append((image, labels, probs))
    return paths


def _segment(args: argparse.Namespace) -> int:
    from tqdm import tqdm

    from napari_unet_tuner.inference.pipeline import iter_segment
    from napari_unet_tuner.io import open_image, write_tiff_atomic
    from napari_unet_tuner.model.checkpoint import default_checkpoint_path, load_checkpoint

    ckpt = load_checkpoint(args.checkpoint or default_checkpoint_path())
    inference = InferenceConfig(
        tile_shape=tuple(args.tile_shape) if args.tile_shape else None,
        overlap=args.overlap,
        batch_size=args.batch_size,
        device=args.device,
    )
    overrides = {
        k: v
        for k, v in (
            ("threshold", args.threshold),
            ("seed_threshold", args.seed_threshold),
            ("min_size", args.min_size),
        )
        if v is not None
    }
    instances = InstanceConfig.from_dict({**ckpt.card.instances, **overrides})
    failures = []
    for image_path, labels_path, probs_path in _output_paths(args):
        try:
            if labels_path.exists() and not args.overwrite:
                raise FileExistsError(f"{labels_path} exists; pass --overwrite to replace it")
            image = open_image(image_path)
            run = iter_segment(
                image,
                ckpt,
                axes=args.axes,
                inference=inference,
                instances=instances,
                return_probabilities=args.probabilities,
            )
            with tqdm(desc=image_path.name, unit="tile", file=sys.stderr) as bar:

                def show(progress, bar=bar):
                    bar.total = progress.tiles_total
                    bar.update(progress.tiles_done - bar.n)

                result = run_to_completion(run, show)
            meta = {"axes": result.axes}
            write_tiff_atomic(labels_path, result.labels, overwrite=args.overwrite, metadata=meta)
            if result.probabilities is not None:
                write_tiff_atomic(
                    probs_path,
                    result.probabilities,
                    overwrite=args.overwrite,
                    metadata={"axes": "C" + result.axes},
                )
            # Labels are numbered 1..n over the whole image, so the largest is the count.
            count = int(result.labels.max(initial=0))
            log.info("%s: %d objects -> %s", image_path, count, labels_path)
        except (UnetTunerError, OSError) as exc:
            log.error("error: %s: %s", image_path, exc)
            failures.append(image_path)
    if failures:
        log.error(
            "%d of %d input(s) failed: %s",
            len(failures),
            len(args.inputs),
            ", ".join(map(str, failures)),
        )
        return 1
    return 0


def _finetune(args: argparse.Namespace) -> int:
    from tqdm import tqdm

    from napari_unet_tuner.io import open_image
    from napari_unet_tuner.model.checkpoint import default_checkpoint_path, load_checkpoint
    from napari_unet_tuner.training.trainer import iter_fine_tune

    if len(args.files) % 2:
        raise UnetTunerError("give files in pairs: IMAGE ANNOTATION [IMAGE ANNOTATION ...]")
    if args.output.exists():
        raise FileExistsError(f"{args.output} exists; choose a new file for the fine-tuned model")
    pairs = [
        (open_image(image), np.asarray(open_image(annotation)))
        for image, annotation in zip(args.files[::2], args.files[1::2], strict=True)
    ]
    start = (
        None
        if args.from_scratch
        else load_checkpoint(args.checkpoint or default_checkpoint_path())
    )
    config = TrainingConfig(
        mode=args.mode, max_seconds=args.seconds, seed=args.seed, device=args.device
    )
    run = iter_fine_tune(
        pairs, start, config, axes=[args.axes] * len(pairs), output=args.output, name=args.name
    )
    with tqdm(total=round(args.seconds), unit="s", file=sys.stderr, desc="fine-tuning") as bar:

        def show(progress):
            bar.n = min(round(args.seconds - progress.eta), bar.total)
            postfix = {"step": progress.step, "loss": f"{progress.loss or float('nan'):.3f}"}
            if progress.scores:
                postfix["val AP50"] = f"{progress.scores['ap50']:.3f}"
            bar.set_postfix(postfix)

        result = run_to_completion(run, show)
    where = (
        "held-out regions"
        if result.held_out
        else "the training annotation (too little to hold out)"
    )
    before, after = result.scores_before, result.scores_after
    log.info("validation on %s:", where)
    for key in ("ap50", "dice", "loss"):
        log.info("  %-5s before %.3f  after %.3f", key, before[key], after[key])
    log.info("stopped by %s; wrote %s", result.stop_reason, result.path)
    return 0


if __name__ == "__main__":
    sys.exit(main())
