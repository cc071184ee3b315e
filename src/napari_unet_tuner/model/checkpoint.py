"""Self-describing checkpoint files: weights, the config that rebuilds the model, a card.

A checkpoint is one safetensors file. Its tensors are the model's state dict;
its string metadata holds the format name and version, the `ModelConfig`
(JSON) and the `ModelCard` (JSON). Reading it parses a JSON header and raw
tensor bytes, so loading never executes code from the file.

Plain PyTorch state dicts (``.pt``/``.pth``) are imported only through
``torch.load(weights_only=True)``; a file that needs anything beyond tensors
and containers is refused, never retried unsafely.
"""

from __future__ import annotations

import datetime
import hashlib
import json
import os
import struct
from collections.abc import Mapping
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import torch

from napari_unet_tuner.config import OUTPUT_DESCRIPTIONS, ModelCard, ModelConfig
from napari_unet_tuner.errors import CheckpointError, ConfigError
from napari_unet_tuner.model.unet import UNet

FORMAT_NAME = "napari-unet-tuner"
FORMAT_VERSION = 1
SUFFIX = ".safetensors"

_MAX_HEADER_BYTES = 100_000_000


@dataclass(frozen=True)
class Checkpoint:
    """Weights plus everything needed to rebuild and use the model.

    Parameters
    ----------
    model_config : ModelConfig
        Architecture; ``UNet(model_config)`` accepts ``state_dict``.
    card : ModelCard
        Description, normalization, instance defaults, training history.
    state_dict : mapping of str to torch.Tensor
        The model's weights (on the CPU).
    path : Path or None
        File it was read from, if any.
    sha256 : str or None
        SHA-256 of that file, used to name it as a parent.
    """

    model_config: ModelConfig
    card: ModelCard
    state_dict: Mapping[str, torch.Tensor]
    path: Path | None = None
    sha256: str | None = None

    @classmethod
    def from_model(cls, model: UNet, card: ModelCard) -> Checkpoint:
        """Snapshot a model's weights (copied to the CPU) with a card."""
        # Contiguous: a model trained in channels-last layout has strided weights.
        state = {
            k: v.detach().to("cpu", copy=True, memory_format=torch.contiguous_format)
            for k, v in model.state_dict().items()
        }
        return cls(model_config=model.config, card=card, state_dict=state)

    def build_model(self, device: str | torch.device = "cpu") -> UNet:
        """Return the model in eval mode with these weights, on ``device``."""
        with torch.device("meta"):
            model = UNet(self.model_config)
        # Clones, so that training the model never alters this checkpoint's tensors.
        weights = {k: v.clone() for k, v in self.state_dict.items()}
        model.load_state_dict(weights, strict=True, assign=True)
        return model.to(device).eval()

    def weights_sha256(self) -> str:
        """Return the SHA-256 of the file, or of the weights themselves for an unsaved model.

        Identifies the model a run used also for a version that was never
        written (the widget's fine-tuned ones have no file).
        """
        if self.sha256 is not None:
            return self.sha256
        return state_dict_sha256(self.state_dict, self.model_config)

    def as_parent(self) -> dict[str, Any]:
        """Identify this checkpoint for the card of one derived from it."""
        return {"name": self.card.name, "sha256": self.sha256, "path": str(self.path or "")}


def state_dict_sha256(state_dict: dict[str, torch.Tensor], model_config: ModelConfig) -> str:
    """SHA-256 of an architecture and its weights: names, types and values, by name.

    The same for a model loaded from a file and for an unsaved version held
    in memory with the same weights.
    """
    digest = hashlib.sha256(json.dumps(model_config.to_dict(), sort_keys=True).encode())
    for name in sorted(state_dict):
        tensor = state_dict[name].detach().to("cpu").contiguous()
        digest.update(name.encode())
        digest.update(str(tensor.dtype).encode())
        digest.update(tensor.reshape(-1).view(torch.uint8).numpy().tobytes())
    return digest.hexdigest()


def new_card(model_config: ModelConfig, **fields: Any) -> ModelCard:
    """Return a `ModelCard` stamped with the time and package version.

    Parameters
    ----------
    model_config : ModelConfig
        Fills the input axes, channel names and output description.
    **fields
        Any other `ModelCard` field.
    """
    from napari_unet_tuner import __version__

    spatial = "YX" if model_config.spatial_dims == 2 else "ZYX"
    defaults: dict[str, Any] = {
        "input_axes": "C" + spatial,
        "channel_names": tuple(f"channel {i}" for i in range(model_config.in_channels)),
        "outputs": OUTPUT_DESCRIPTIONS[model_config.output_kind],
        "created": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
        "package_version": __version__,
    }
    defaults.update(fields)
    return ModelCard(**defaults)


def file_sha256(path: str | os.PathLike) -> str:
    """Return the hex SHA-256 of a file's bytes."""
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def _read_safetensors_header(path: Path) -> dict[str, Any]:
    size = path.stat().st_size
    with open(path, "rb") as fh:
        head = fh.read(8)
        if len(head) < 8:
            raise CheckpointError(f"{path} is too short to be a checkpoint ({size} bytes)")
        (header_len,) = struct.unpack("<Q", head)
        if header_len > min(_MAX_HEADER_BYTES, size - 8):
            raise CheckpointError(
                f"{path} is not a napari-unet-tuner checkpoint (no safetensors header); "
                "expected a .safetensors file written by napari-unet-tuner"
            )
        raw = fh.read(header_len)
    try:
        header = json.loads(raw)
    except (UnicodeDecodeError, json.JSONDecodeError, RecursionError) as exc:
        raise CheckpointError(f"{path} has a corrupt safetensors header: {exc}") from None
    if not isinstance(header, dict) or not all(
        _valid_header_entry(key, entry) for key, entry in header.items()
    ):
        raise CheckpointError(
            f"{path} has a corrupt safetensors header (an entry of the wrong form); "
            "copy the file again or export it anew"
        )
    data_len = size - 8 - header_len
    ends = [entry["data_offsets"][1] for key, entry in header.items() if key != "__metadata__"]
    if ends and max(ends) > data_len:
        raise CheckpointError(
            f"{path} is truncated: its header describes {max(ends)} bytes of weights "
            f"but only {data_len} are there. Copy the file again."
        )
    return header


def _valid_header_entry(key: str, entry: Any) -> bool:
    """Whether a safetensors header entry has the form the format defines."""
    if key == "__metadata__":
        return isinstance(entry, dict) and all(
            isinstance(k, str) and isinstance(v, str) for k, v in entry.items()
        )
    if not isinstance(entry, dict):
        return False
    offsets, shape = entry.get("data_offsets"), entry.get("shape")
    return (
        isinstance(entry.get("dtype"), str)
        and isinstance(shape, list)
        and all(isinstance(n, int) and n >= 0 for n in shape)
        and isinstance(offsets, list)
        and len(offsets) == 2
        and all(isinstance(n, int) and n >= 0 for n in offsets)
        and offsets[0] <= offsets[1]
    )


def read_safetensors_checkpoint(path: str | os.PathLike) -> Checkpoint:
    """Read a napari-unet-tuner ``.safetensors`` checkpoint, and nothing else.

    Raises
    ------
    CheckpointError
        If the file is truncated, of another format or version, or its
        config, card or weights do not make a usable model.
    """
    path = Path(path)
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    header = _read_safetensors_header(path)
    meta = header.get("__metadata__") or {}
    if meta.get("format") != FORMAT_NAME:
        raise CheckpointError(
            f"{path} is a safetensors file but not a napari-unet-tuner checkpoint "
            f"(format {meta.get('format')!r}); import bare weights with import_state_dict"
        )
    try:
        version = int(meta.get("format_version", ""))
    except ValueError:
        raise CheckpointError(f"{path} has no valid format_version") from None
    if version < 1:
        raise CheckpointError(f"{path} has an invalid format_version {version}")
    if version > FORMAT_VERSION:
        raise CheckpointError(
            f"{path} was written in checkpoint format {version}; this napari-unet-tuner "
            f"reads up to format {FORMAT_VERSION}. Upgrade napari-unet-tuner."
        )
    try:
        model_config = ModelConfig.from_dict(json.loads(meta["model_config"]))
        card = ModelCard.from_dict(json.loads(meta["card"]))
    except (
        KeyError,
        json.JSONDecodeError,
        ConfigError,
        TypeError,
        AttributeError,
        RecursionError,
    ) as exc:
        # Fields of the wrong type (a list where a dict belongs) are as invalid as bad JSON.
        raise CheckpointError(f"{path} has an invalid model config or card: {exc}") from exc
    try:
        state_dict = load_file(str(path), device="cpu")
    except (SafetensorError, OSError) as exc:
        raise CheckpointError(f"{path} cannot be read: {exc}") from exc
    state_dict = as_float32(state_dict)
    check_state_dict(state_dict, model_config, path)
    return Checkpoint(model_config, card, state_dict, path=path, sha256=file_sha256(path))


def as_float32(state_dict: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Return the weights with every floating-point tensor in float32.

    Weights stored in half or double precision compute like any other.
    """
    return {k: v.float() if v.is_floating_point() else v for k, v in state_dict.items()}


def check_state_dict(
    state_dict: Mapping[str, torch.Tensor], model_config: ModelConfig, path: Path | str
) -> None:
    """Raise a `CheckpointError` naming every key or shape that does not fit, or bad values."""
    try:
        with torch.device("meta"):
            expected = UNet(model_config).state_dict()
    except (RuntimeError, ValueError) as exc:
        raise CheckpointError(f"{path}: its architecture cannot be built ({exc})") from None
    missing = sorted(set(expected) - set(state_dict))
    unexpected = sorted(set(state_dict) - set(expected))
    wrong = [
        f"{k}: file {tuple(state_dict[k].shape)}, config {tuple(v.shape)}"
        for k, v in expected.items()
        if k in state_dict and state_dict[k].shape != v.shape
    ]
    problems = []
    if missing:
        problems.append(f"missing weights {_short(missing)}")
    if unexpected:
        problems.append(f"unexpected weights {_short(unexpected)}")
    if wrong:
        problems.append(f"shapes that do not match the config ({_short(wrong)})")
    if problems:
        raise CheckpointError(
            f"{path} does not fit its architecture {model_config}: " + "; ".join(problems)
        )
    # Integer weights cannot be trained or mean what their config says.
    wrong_type = [
        f"{k} ({v.dtype})"
        for k, v in state_dict.items()
        if v.dtype != expected[k].dtype
        and not (v.is_floating_point() and expected[k].is_floating_point())
    ]
    if wrong_type:
        raise CheckpointError(
            f"{path} has weights of the wrong type ({_short(wrong_type)}): the model's "
            "weights are floating point; use another checkpoint"
        )
    # NaN or infinite weights segment every image to nothing, without a word.
    broken = [
        k for k, v in state_dict.items() if v.is_floating_point() and not torch.isfinite(v).all()
    ]
    if broken:
        raise CheckpointError(
            f"{path} has NaN or infinite weights ({_short(broken)}): the model is broken "
            "(training diverged or the file was damaged); use another checkpoint"
        )
    # A negative variance makes batch norm divide by the square root of a negative.
    negative = [k for k, v in state_dict.items() if k.endswith("running_var") and (v < 0).any()]
    if negative:
        raise CheckpointError(
            f"{path} has negative batch-norm variances ({_short(negative)}), which no "
            "trained model has: the file was damaged; use another checkpoint"
        )


def _short(items: list[str], n: int = 4) -> str:
    more = f" and {len(items) - n} more" if len(items) > n else ""
    return ", ".join(items[:n]) + more


def with_card(checkpoint: Checkpoint, **fields: Any) -> Checkpoint:
    """Return a copy of ``checkpoint`` whose card has ``fields`` replaced."""
    return replace(checkpoint, card=replace(checkpoint.card, **fields), path=None, sha256=None)


DEFAULT_CHECKPOINT_NAME = "nuclei_default.safetensors"


def default_checkpoint_path() -> Path:
    """Return the path of the checkpoint that ships with the package.

    Raises
    ------
    CheckpointError
        If this installation carries no default checkpoint.
    """
    from importlib.resources import files

    path = Path(str(files("napari_unet_tuner") / "resources" / DEFAULT_CHECKPOINT_NAME))
    if not path.is_file():
        raise CheckpointError(
            "this installation of napari-unet-tuner has no bundled default checkpoint; "
            "pass one explicitly (e.g. --checkpoint my_model.safetensors)"
        )
    return path
