"""``unet-tuner segment``: images in, labels (and tables of their objects) out."""

from __future__ import annotations

import argparse
import contextlib
import logging
import os
import sys
from dataclasses import replace
from pathlib import Path
from typing import Any

from napari_unet_tuner._generators import run_to_completion
from napari_unet_tuner.config import (
    ChunkedConfig,
    InferenceConfig,
    InstanceConfig,
)
from napari_unet_tuner.errors import EXPECTED_ERRORS, UnetTunerError
from napari_unet_tuner.io import PICTURE_SUFFIXES, TIFF_SUFFIXES
from napari_unet_tuner.outputs import check_outputs

log = logging.getLogger("napari_unet_tuner")


def _output_paths(args: argparse.Namespace) -> list[tuple[Path, Path, Path]]:
    """(input, labels path, probabilities path) per input; checks the table paths too."""
    # A folder typed with a trailing slash, or one that exists, is a folder
    # whatever dots its name has (results/run1.5/); a .zarr is an output.
    output = Path(args.output)
    folder = args.output.endswith(("/", os.sep)) or (
        output.is_dir() and output.suffix.lower() != ".zarr"
    )
    suffix = "" if folder else output.suffix.lower()
    if suffix and suffix not in (".tif", ".tiff", ".zarr"):
        raise UnetTunerError(
            f"cannot write labels as {output.name}: name a .tif or .zarr output, "
            "or a folder (without a suffix) for several inputs"
        )
    single_file = len(args.inputs) == 1 and suffix in (".tif", ".tiff", ".zarr")
    if not single_file and suffix in (".tif", ".tiff", ".zarr"):
        raise UnetTunerError(
            f"{len(args.inputs)} inputs need an output folder, not the file {args.output}"
        )
    paths = []
    for image in args.inputs:
        stem = _image_stem(image)
        if single_file:
            labels = output
        else:
            is_zarr = ".zarr" in image.name.lower() or image.suffix == ""
            extension = args.format or ("zarr" if is_zarr else "tif")
            labels = output / f"{stem}_labels.{extension}"
        probs = labels.with_name(labels.stem.removesuffix("_labels") + "_probabilities.tif")
        paths.append((image, labels, probs))
    written = [labels for _, labels, _ in paths]
    if args.probabilities:
        written += [probs for _, _, probs in paths]
    if args.table:
        written += [p for _, labels, _ in paths for p in _table_paths(args, labels)]
    check_outputs(written, args.inputs)
    return paths


# Image suffixes dropped from an input's name to name its outputs; any other
# dot is part of the name (``plate1.A01.tif`` -> ``plate1.A01_labels.tif``),
# so inputs that differ after a dot keep outputs apart.
_IMAGE_SUFFIXES = (
    ".ome.tiff",
    ".ome.tif",
    ".ome.zarr",
    *TIFF_SUFFIXES,
    ".zarr",
    ".npy",
    *PICTURE_SUFFIXES,
)


def _image_stem(image: Path) -> str:
    name = image.name.rstrip("/")
    for suffix in _IMAGE_SUFFIXES:
        if name.lower().endswith(suffix):
            return name[: -len(suffix)]
    return name


def _table_paths(args: argparse.Namespace, labels_path: Path) -> tuple[Path, Path]:
    """Where ``--table`` writes the objects and the possible misses of one input."""
    if isinstance(args.table, str) and len(args.inputs) == 1:
        objects = Path(args.table)
        if objects.suffix.lower() != ".csv":
            raise UnetTunerError(f"--table writes CSV: name a .csv file, not {objects.name}")
    else:
        if isinstance(args.table, str):
            raise UnetTunerError(
                f"{len(args.inputs)} inputs write one table each beside their labels: "
                "pass --table without a file name"
            )
        objects = labels_path.with_name(labels_path.stem.removesuffix("_labels") + "_objects.csv")
    return objects, objects.with_name(objects.stem + "_possible_misses.csv")


def _chunked_config(args: argparse.Namespace) -> ChunkedConfig:
    return ChunkedConfig(
        chunk_shape=tuple(args.chunk_shape) if args.chunk_shape else None,
        threads_per_worker=args.threads_per_worker,
        scheduler=args.scheduler,
        memory_limit=args.memory_limit,
        workers=args.workers if args.scheduler is None else None,
    )


def run_segment(args: argparse.Namespace) -> int:
    """Run ``unet-tuner segment``; return the exit status."""
    from tqdm import tqdm

    from napari_unet_tuner.inference.dask_run import local_cluster
    from napari_unet_tuner.model.checkpoint import default_checkpoint_path
    from napari_unet_tuner.model.loading import load_checkpoint

    ckpt = load_checkpoint(args.checkpoint or default_checkpoint_path())
    inference = InferenceConfig(
        tile_shape=tuple(args.tile_shape) if args.tile_shape else None,
        overlap=args.overlap,
        batch_size=args.batch_size,
        device=args.device,
        precision=args.precision,
        runtime=args.runtime,
        diameter=args.diameter,
        scale=args.scale,
        stack=args.stack,
        anisotropy=args.anisotropy,
    )
    overrides = {
        k: v
        for k, v in (
            ("threshold", args.threshold),
            ("seed_threshold", args.seed_threshold),
            ("min_size", args.min_size),
            ("split_solidity", args.split_solidity),
        )
        if v is not None
    }
    # None: the model's own settings, as the API and the widget use them
    # (3D objects with their own seed threshold, `stack_instances`); with
    # overrides, 3D objects still split touching nuclei (`run_instances`).
    instances = (
        InstanceConfig.from_dict({**ckpt.card.instances, **overrides}) if overrides else None
    )
    jobs = _output_paths(args)
    if (args.workers or args.scheduler) and not any(p.suffix == ".zarr" for _, p, _ in jobs):
        raise UnetTunerError("--workers and --scheduler need a .zarr output (or --format zarr)")
    failures = []
    with (
        # One LocalCluster for the whole batch.
        local_cluster(_chunked_config(args)) as chunked,
        tqdm(jobs, desc="images", unit="image", file=sys.stderr, disable=len(jobs) < 2) as files,
    ):
        for image_path, labels_path, probs_path in files:
            try:
                if labels_path.suffix == ".zarr":
                    _segment_to_zarr(
                        args, image_path, labels_path, ckpt, inference, instances, chunked
                    )
                else:
                    _segment_to_tiff(
                        args, image_path, labels_path, probs_path, ckpt, inference, instances
                    )
            except EXPECTED_ERRORS as exc:
                log.error("error: %s: %s", image_path, exc)
                failures.append((image_path, exc))
    if failures:
        # A batch ends with the list of what failed; one input said it already.
        if len(jobs) > 1:
            log.error("%d of %d input(s) failed:", len(failures), len(jobs))
            for image_path, exc in failures:
                log.error("  %s: %s", image_path, exc)
        return 1
    return 0


@contextlib.contextmanager
def _bar(desc: str, unit: str):
    """Show a progress bar; what is logged meanwhile is printed above it, not into its line."""
    from tqdm import tqdm
    from tqdm.contrib.logging import logging_redirect_tqdm

    with logging_redirect_tqdm(), tqdm(desc=desc, unit=unit, file=sys.stderr, leave=False) as bar:
        yield bar


def open_input(args: argparse.Namespace, image_path: Path, ckpt) -> tuple[Any, str | None]:
    """Open an input file with its axes, taking ``--channel`` and warning of RGB pictures."""
    from napari_unet_tuner.inference.image import infer_axes
    from napari_unet_tuner.io import FileImage, OneChannel

    image = FileImage(image_path)
    axes = args.axes or image.axes
    if args.channel is not None:
        if axes is None and image.ndim == 3 and image.shape[-1] in (3, 4):
            axes = "YXC"
        image = OneChannel(image, axes or "", args.channel)
        log.info("%s: channel %d of %s", image_path.name, args.channel, axes)
        return image, image.axes
    cfg = ckpt.model_config
    guessed = axes or infer_axes(image.shape, cfg.spatial_dims, cfg.in_channels)
    if cfg.in_channels == 1 and guessed.endswith("C") and image.shape[-1] in (3, 4):
        log.warning("%s", rgb_warning(image, image_path.name))
    return image, axes


def rgb_warning(image: Any, name: str) -> str:
    """Say what an RGB picture is to a model of fluorescent nuclei, and what to do."""
    import numpy as np

    sample = np.asarray(image[(slice(None, None, 8), slice(None, None, 8))])[..., :3]
    bright_background = np.median(sample) > 0.5 * float(np.iinfo(np.uint8).max)
    if sample.dtype == np.uint8 and bright_background:
        what = (
            "it looks like a brightfield or histology picture (bright background, e.g. "
            "H&E): the model was made for fluorescent nuclei, bright on dark, and its "
            "labels here will be nonsense"
        )
    else:
        what = "the model reads one channel, so red, green and blue are averaged to grey"
    return (
        f"{name} is an RGB image (3 colour channels) and {what}. If one channel holds the "
        "nuclear stain, segment that one: --channel N (0 red, 1 green, 2 blue)"
    )


def _for_file(
    inference: InferenceConfig,
    image,
    axes: str | None,
    args: argparse.Namespace,
    spatial_dims: int,
) -> InferenceConfig:
    """Return the settings for one file (stack mode, Z step) and say what was decided."""
    from napari_unet_tuner.config import resolve_stack

    resolved = resolve_stack(inference, axes, image.anisotropy)
    if spatial_dims == 3:
        return resolved
    if resolved.stack != "3d":
        guessed = not axes
        stack_like = len(image.shape) >= 3 and image.shape[-1] not in (3, 4)
        if inference.stack == "auto" and guessed and stack_like:
            log.info(
                "%s: axes not in the file's metadata: planes segmented one by one "
                "(--stack 3d for 3D objects in a Z-stack)",
                image.path.name,
            )
        return resolved
    if resolved.anisotropy is None:
        # Measured in the run; the note after it says what was found.
        log.info("%s: 3D objects, Z step not in the file: measured on its nuclei", image.path.name)
        return resolved
    where = "given" if args.anisotropy else "from the file"
    log.info(
        "%s: 3D objects, Z step %.2fx the pixel size (%s)",
        image.path.name,
        resolved.anisotropy,
        where,
    )
    return resolved


def _segment_to_tiff(
    args, image_path, labels_path, probs_path, ckpt, inference, instances
) -> None:
    from napari_unet_tuner.inference.pipeline import iter_segment
    from napari_unet_tuner.inference.z_step import z_step_note
    from napari_unet_tuner.io import write_bytes_atomic, write_tiff_atomic
    from napari_unet_tuner.labels_files import SEGMENTED_SCALE_KEY

    tables = _table_paths(args, labels_path) if args.table else ()
    for path in (labels_path, *tables):
        if path.exists() and not args.overwrite:
            raise FileExistsError(f"{path} exists; pass --overwrite to replace it")
    image, axes = open_input(args, image_path, ckpt)
    run = iter_segment(
        image,
        ckpt,
        axes=axes,
        inference=_for_file(inference, image, axes, args, ckpt.model_config.spatial_dims),
        instances=instances,
        return_probabilities=args.probabilities,
    )
    with _bar(image_path.name, "tile") as bar:

        def show(progress):
            bar.total = progress.tiles_total
            bar.update(progress.tiles_done - bar.n)

        result = run_to_completion(run, show)
    # The scale goes with the labels: fine-tuning on them learns at that size.
    meta = {"axes": result.axes, SEGMENTED_SCALE_KEY: result.scale}
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
    size = result.object_size
    how = "" if result.scale == 1.0 else f", resized x{result.scale:.2f} for the model"
    if size is not None and size.diameter is not None:
        how = f" (about {size.diameter:.0f} px across{how})"
    elif how:
        how = f" ({how[2:]})"
    log.info("%s: %d objects%s -> %s", image_path, count, how, labels_path)
    if size is not None and size.diameter is None:
        log.warning(
            "%s: the object size could not be measured (too few objects, or their size "
            "changed with every scale tried, as objects far larger than the model's do): "
            "segmented as it is; if objects come out cut into pieces or merged, give their "
            "size with --diameter PIXELS",
            image_path,
        )
    if result.z_step is not None:
        log.info("%s: %s", image_path, z_step_note(result.z_step))
    if tables:
        objects_path, misses_path = tables
        write_bytes_atomic(objects_path, result.objects.to_csv(index=False).encode())
        write_bytes_atomic(misses_path, result.possible_misses.to_csv(index=False).encode())
        log.info(
            "%s: objects table -> %s (%d possible misses -> %s)",
            image_path,
            objects_path,
            len(result.possible_misses),
            misses_path,
        )


def _segment_to_zarr(args, image_path, labels_path, ckpt, inference, instances, chunked) -> None:
    from napari_unet_tuner.inference.chunked import iter_segment_to_zarr

    if args.probabilities:
        log.warning("%s: --probabilities is only written for .tif outputs", image_path)
    wanted = _table_paths(args, labels_path) if args.table else ()
    for path in wanted:
        if path.exists() and not args.overwrite:
            raise FileExistsError(f"{path} exists; pass --overwrite to replace it")
    image, axes = open_input(args, image_path, ckpt)
    # The table costs the chunks a measurement each: only when asked for.
    inference = replace(inference, object_table=bool(args.table))
    run = iter_segment_to_zarr(
        image,
        labels_path,
        ckpt,
        axes=axes,
        inference=_for_file(inference, image, axes, args, ckpt.model_config.spatial_dims),
        instances=instances,
        chunked=chunked,
        overwrite=args.overwrite,
    )
    with _bar(image_path.name, "chunk") as bar:

        def show(progress):
            bar.set_description(f"{image_path.name} ({progress.stage})")
            bar.total = progress.total
            bar.n = progress.done
            bar.refresh()

        result = run_to_completion(run, show)
    resumed = f" (resumed: {result.resumed} chunks were done)" if result.resumed else ""
    log.info(
        "%s: %d objects in %d chunks, %.1f s -> %s%s",
        image_path,
        result.objects,
        result.chunks,
        result.seconds,
        labels_path,
        resumed,
    )
    for written, path in zip(result.tables, wanted, strict=False):
        if written != path:
            os.replace(written, path)
    if wanted:
        log.info("%s: objects table -> %s (possible misses -> %s)", image_path, *wanted)
