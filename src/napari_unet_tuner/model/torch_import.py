"""Importing plain PyTorch state dicts (``.pt``/``.pth``) without running their code.

Only ``torch.load(weights_only=True)`` reads them, which rebuilds tensors
and containers and refuses anything else; a zip that would inflate far
beyond its size is refused before it is read.
"""

from __future__ import annotations

import os
import pickle
from collections.abc import Mapping
from pathlib import Path

import torch

from napari_unet_tuner.config import ModelConfig
from napari_unet_tuner.errors import CheckpointError
from napari_unet_tuner.model.checkpoint import (
    Checkpoint,
    as_float32,
    check_state_dict,
    file_sha256,
    new_card,
)

# Bytes a PyTorch zip may declare beyond twice its size (its small records).
_ZIP_SLACK_BYTES = 16 << 20


def import_state_dict(
    path: str | os.PathLike, model_config: ModelConfig | None = None
) -> Checkpoint:
    """Import a plain PyTorch state dict (``.pt``/``.pth``) without running its code.

    The file is read with ``torch.load(weights_only=True)``, which only
    rebuilds tensors and containers; anything else in the pickle is refused.

    Parameters
    ----------
    path : path-like
        The file. A dict with a ``"state_dict"`` or ``"model_state_dict"``
        entry is unwrapped.
    model_config : ModelConfig, optional
        The architecture; inferred from the weights' names and shapes if omitted.

    Raises
    ------
    CheckpointError
        If the file holds pickled objects other than tensors, is corrupt, or
        does not fit the architecture.
    """
    path = Path(path)
    _check_zip_sizes(path)
    try:
        # A file handle, not the path: torch.load dispatches on a .safetensors
        # suffix, and the bytes, not the name, decide how a file is read here.
        with open(path, "rb") as fh:
            obj = torch.load(fh, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as exc:
        raise CheckpointError(
            f"refused {path}: it contains pickled Python objects beyond tensors, which "
            "could run code when loaded. Nothing from it was executed. Save only the "
            "model's state_dict (or a .safetensors file) and try again "
            f"(torch said: {str(exc).splitlines()[0]})"
        ) from None
    except (RuntimeError, EOFError, OSError, ValueError) as exc:
        raise CheckpointError(f"{path} is not a readable PyTorch file: {exc}") from None
    if isinstance(obj, Mapping):
        for key in ("state_dict", "model_state_dict"):
            if isinstance(obj.get(key), Mapping):
                obj = obj[key]
                break
    if not isinstance(obj, Mapping) or not all(
        isinstance(k, str) and isinstance(v, torch.Tensor) for k, v in obj.items()
    ):
        raise CheckpointError(f"{path} does not hold a state dict (a mapping of names to tensors)")
    state_dict = as_float32({k.removeprefix("module."): v for k, v in obj.items()})
    if model_config is None:
        model_config = infer_model_config(state_dict, path)
    check_state_dict(state_dict, model_config, path)
    card = new_card(
        model_config,
        name=path.stem,
        description=f"Imported from the PyTorch state dict {path.name}.",
    )
    return Checkpoint(model_config, card, state_dict, path=path, sha256=file_sha256(path))


def _check_zip_sizes(path: Path) -> None:
    """Refuse a zip whose members declare far more bytes than the file holds.

    ``torch.save`` stores its members uncompressed; a small file that
    inflates to gigabytes is not one, and reading it would fill the memory.
    """
    import zipfile

    if not zipfile.is_zipfile(path):
        return
    size = path.stat().st_size
    try:
        with zipfile.ZipFile(path) as archive:
            declared = sum(info.file_size for info in archive.infolist())
    except (zipfile.BadZipFile, OSError, ValueError) as exc:
        raise CheckpointError(f"{path} is not a readable PyTorch file: {exc}") from None
    if declared > 2 * size + _ZIP_SLACK_BYTES:
        raise CheckpointError(
            f"refused {path}: it would inflate from {size} to {declared} bytes, which a "
            "file written by torch.save never does; nothing was loaded"
        )


def infer_model_config(
    state_dict: Mapping[str, torch.Tensor], path: Path | str = ""
) -> ModelConfig:
    """Infer a `ModelConfig` from the names and shapes of a `UNet` state dict.

    Raises
    ------
    CheckpointError
        If the weights are not those of a `UNet`.
    """
    try:
        first = state_dict["down.0.0.weight"]
        final = state_dict["final_conv.weight"]
    except KeyError:
        raise CheckpointError(
            f"{path}: cannot infer the architecture (no 'down.0.0.weight' and "
            "'final_conv.weight'); these are not napari-unet-tuner UNet weights"
        ) from None
    depth = len({k.split(".")[1] for k in state_dict if k.startswith("down.")})
    try:
        return ModelConfig(
            spatial_dims=final.ndim - 2,
            in_channels=int(first.shape[1]),
            out_channels=int(final.shape[0]),
            features=int(first.shape[0]),
            depth=depth,
            batch_norm="down.0.1.running_mean" in state_dict,
        )
    except ValueError as exc:
        raise CheckpointError(f"{path}: cannot infer the architecture: {exc}") from None
