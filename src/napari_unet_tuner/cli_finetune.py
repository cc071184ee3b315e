"""``unet-tuner finetune``: fine-tune a checkpoint on painted annotations from a shell."""

from __future__ import annotations

import argparse
import contextlib
import logging
import signal
import sys
import threading
from pathlib import Path

import numpy as np

from napari_unet_tuner._generators import run_to_completion
from napari_unet_tuner.config import STACK_MODES, TrainingConfig, parse_diameter
from napari_unet_tuner.errors import UnetTunerError
from napari_unet_tuner.labels_files import segmented_scale
from napari_unet_tuner.outputs import check_output

log = logging.getLogger("napari_unet_tuner")


def _stack_of(args: argparse.Namespace, file, start) -> tuple[str, float]:
    """(stack mode, Z step) of one image: as given, or as segment decides (``auto``)."""
    from napari_unet_tuner.config import InferenceConfig, resolve_stack

    two_d = start is None or start.model_config.spatial_dims == 2
    wanted = args.stack if two_d else "planes"  # a 3D model reads volumes itself
    resolved = resolve_stack(
        InferenceConfig(stack=wanted, anisotropy=args.anisotropy, diameter=args.diameter),
        args.axes or file.axes,
        file.anisotropy,
    )
    # Not in the file nor given: planes one pixel apart (segment measures it;
    # fine-tuning does not yet), and the message says how to give it.
    anisotropy = 1.0 if resolved.anisotropy is None else resolved.anisotropy
    if args.stack == "auto" and resolved.stack == "3d":
        log.info(
            "%s: learned as 3D objects (axes %s), Z step %.2fx the pixel size%s; "
            "--stack planes for objects drawn plane by plane",
            file.path.name,
            args.axes or file.axes,
            anisotropy,
            " (not in the file: give --anisotropy, as segment measured it)"
            if resolved.anisotropy is None
            else "",
        )
    return resolved.stack, anisotropy


@contextlib.contextmanager
def _first_interrupt_stops(stop: threading.Event):
    """Make the first Ctrl-C end training and keep the best model so far, as the widget's Stop.

    A second Ctrl-C interrupts at once (nothing is written). Outside the
    main thread (no signals there) nothing changes.
    """
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def handler(signum, frame):
        if stop.is_set():
            raise KeyboardInterrupt
        stop.set()
        log.warning(
            "\nstopping after this step: the best model so far is kept and written if it "
            "learned (Ctrl-C again to stop at once, writing nothing)"
        )

    previous = signal.signal(signal.SIGINT, handler)
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, previous)


def add_finetune_parser(commands, formatter_class=argparse.HelpFormatter) -> None:
    """Add the ``finetune`` subcommand to the ``unet-tuner`` parser's subcommands."""
    tune = commands.add_parser(
        "finetune",
        formatter_class=formatter_class,
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
    tune.add_argument(
        "--mode",
        choices=["corrections", "scribbles"],
        default="corrections",
        help="how the annotations are read (see above)",
    )
    tune.add_argument(
        "--seconds", type=float, default=TrainingConfig.max_seconds, help="time budget"
    )
    tune.add_argument(
        "--max-epochs",
        type=int,
        default=TrainingConfig.max_epochs,
        help=f"stop after this many epochs (of {TrainingConfig.steps_per_epoch} steps or more) "
        "even with time left: with a long --seconds, a run that does the same steps on a "
        "busy machine as on a free one",
    )
    tune.add_argument(
        "--prediction",
        type=Path,
        action="append",
        metavar="LABELS",
        help="corrections: the predicted labels an ANNOTATION was edited from (once per pair, "
        "in order); without it the starting model's own prediction is compared",
    )
    tune.add_argument(
        "--diameter",
        type=diameter_argument,
        default="auto",
        help="object diameter in pixels, 'auto' or 'none': the images are learned at the "
        "scale segmentation runs them at (see segment --diameter); auto (default): the "
        "scale written in labels from unet-tuner segment, else estimated",
    )
    tune.add_argument(
        "--stack",
        choices=("auto", *STACK_MODES),
        default="auto",
        help="Z-stacks: 3d when the annotations are 3D objects (as segment gives on a stack "
        "whose axes say Z): the model also learns their XZ and YZ planes. auto: as segment "
        "decides, 3d when the image's axes (--axes or the file's) hold Z",
    )
    tune.add_argument(
        "--anisotropy",
        type=float,
        help="Z step over XY pixel size, for --stack 3d (default: the file's, else 1)",
    )
    tune.add_argument(
        "--keep-anyway",
        action="store_true",
        help="when nothing was learned but a model got more corrections right at the cost of "
        "other objects (the message says which), write that model anyway",
    )
    tune.add_argument("--seed", type=int, default=0, help="random seed of the run")
    tune.add_argument("--axes", help="axes of the images, letters from TZCYX (default: inferred)")
    tune.add_argument("--device", default="auto", help="auto, cpu, cuda or mps")
    tune.add_argument("--name", help="name for the new model card")


def _learning_scale(args, annotation, predicted, start) -> float | str:
    """Return a pair's scale: as ``--diameter`` says; for auto, as its labels were segmented.

    Labels written by ``unet-tuner segment`` carry the scale the image was
    resized by. Estimating the object size again can give another (the
    estimate is a measurement), and learning there would compare the
    user's labels with a prediction made at another size and take the
    differences for corrections.
    """
    from napari_unet_tuner.inference.object_size import annotation_scale

    if args.diameter != "auto":
        return annotation_scale(args.diameter, start)
    for labels in (predicted, annotation):
        scale = None if labels is None else segmented_scale(labels)
        if scale is not None:
            log.info("%s: learned at x%.2f, the scale its labels were segmented at", labels, scale)
            return scale
    return annotation_scale("auto", start)


def diameter_argument(text: str) -> float | str | None:
    """Read ``--diameter`` (auto, none or pixels), with argparse's kind of error."""
    try:
        return parse_diameter(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(f"{text!r}: {exc}; give auto, none or pixels") from None


def run_finetune(args: argparse.Namespace) -> int:
    """Run ``unet-tuner finetune``; return the exit status (1 when nothing was learned)."""
    from tqdm import tqdm

    from napari_unet_tuner.io import FileImage, open_image
    from napari_unet_tuner.model.checkpoint import default_checkpoint_path
    from napari_unet_tuner.model.loading import load_checkpoint
    from napari_unet_tuner.model.saving import check_checkpoint_path
    from napari_unet_tuner.training.data import AnnotatedImage
    from napari_unet_tuner.training.trainer import iter_fine_tune

    if len(args.files) % 2:
        raise UnetTunerError("give files in pairs: IMAGE ANNOTATION [IMAGE ANNOTATION ...]")
    start = (
        None
        if args.from_scratch
        else load_checkpoint(args.checkpoint or default_checkpoint_path())
    )
    suffix = Path(args.output).suffix.lower()
    if suffix and suffix != ".safetensors":
        stem = Path(args.output).with_suffix(".safetensors").name
        raise UnetTunerError(
            f"a model is written as a .safetensors file, not {suffix}: name it {stem} "
            "(`unet-tuner export` then makes a bioimage.io .zip of it)"
        )
    try:
        check_checkpoint_path(args.output, start)
    except FileExistsError as exc:
        if "parent" in str(exc):
            raise
        # finetune never replaces a file: no option to allow it.
        raise FileExistsError(f"{args.output} exists; choose another file name") from None
    check_output(args.output, args.files)
    predictions = args.prediction or [None] * (len(args.files) // 2)
    if len(predictions) != len(args.files) // 2:
        raise UnetTunerError(
            f"give one --prediction per IMAGE ANNOTATION pair ({len(args.files) // 2}), "
            f"not {len(predictions)}"
        )
    pairs = []
    for image, annotation, predicted in zip(
        args.files[::2], args.files[1::2], predictions, strict=True
    ):
        file = FileImage(image)
        stack, anisotropy = _stack_of(args, file, start)
        scale = 1.0 if stack == "3d" else _learning_scale(args, annotation, predicted, start)
        pairs.append(
            AnnotatedImage(
                file.array,
                np.asarray(open_image(annotation)[...]),
                prediction=None if predicted is None else np.asarray(open_image(predicted)[...]),
                scale=scale,
                stack=stack,
                anisotropy=anisotropy,
                name=Path(image).name,
            )
        )
    config = TrainingConfig(
        mode=args.mode,
        max_seconds=args.seconds,
        max_epochs=args.max_epochs,
        seed=args.seed,
        device=args.device,
    )
    stop = threading.Event()
    run = iter_fine_tune(
        pairs,
        start,
        config,
        axes=[args.axes] * len(pairs),
        output=args.output,
        name=args.name,
        stop=stop,
    )
    # Seconds of the budget, not a rate: no "s/s" in the bar.
    bar_format = "{desc}: {percentage:3.0f}%|{bar}| {n}/{total} s{postfix}"
    with tqdm(
        total=round(args.seconds), file=sys.stderr, desc="fine-tuning", bar_format=bar_format
    ) as bar:

        def show(progress):
            bar.n = min(round(args.seconds - progress.eta), bar.total)
            postfix = {"step": progress.step, "steps/s": f"{progress.steps_per_second:.1f}"}
            counts = progress.corrections
            if counts is not None and counts.to_fix:
                # The same counts and words as the verdict; the last record is
                # the model kept.
                postfix["kept model" if progress.kind == "final" else "model"] = counts.short()
            bar.set_postfix(postfix)

        with _first_interrupt_stops(stop):
            result = run_to_completion(run, show)
    log.info("%s", result.message)
    if result.corrections_after is not None:
        log.info("on the annotation: %s", result.corrections_after.describe())
    if result.held_out:
        before, after = result.scores_before, result.scores_after
        log.info("held-out objects (never trained on):")
        for key in ("ap50", "dice", "loss"):
            log.info("  %-5s before %.3f  after %.3f", key, before[key], after[key])
    if args.keep_anyway and result.candidate is not None:
        # Offered only when nothing was learned: the verdict above says why.
        from napari_unet_tuner.model.saving import save_checkpoint_somewhere

        written, note = save_checkpoint_somewhere(result.candidate, args.output)
        if note:
            log.info("%s", note)
        if written is None:
            log.error("error: the model was not written (see above)")
            return 1
        log.info(
            "kept anyway (--keep-anyway): %s; wrote %s",
            result.candidate_corrections.describe(),
            written,
        )
        return 0
    if not result.learned:
        hint = " (run again with --keep-anyway to write it)" if result.candidate else ""
        log.error("no model written: %s%s", result.message, hint)
        return 1
    if result.path is None:
        log.error("error: the model was not written (see above)")
        return 1
    log.info("stopped by %s; wrote %s", result.stop_reason, result.path)
    return 0
