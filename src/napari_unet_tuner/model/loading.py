"""Reading any model file: the format is decided by the file's first bytes, not its name.

A napari-unet-tuner ``.safetensors`` checkpoint, a bioimage.io package it
exported, or a plain PyTorch state dict, each through its own safe reader.
"""

from __future__ import annotations

import os
from pathlib import Path

from napari_unet_tuner.config import ModelConfig
from napari_unet_tuner.errors import CheckpointError
from napari_unet_tuner.model.bioimageio_open import is_bioimageio_package, open_bioimageio
from napari_unet_tuner.model.checkpoint import Checkpoint, read_safetensors_checkpoint
from napari_unet_tuner.model.torch_import import import_state_dict

_ZIP_MAGIC = b"PK\x03\x04"
_PICKLE_PROTO = 0x80


def load_checkpoint(
    path: str | os.PathLike, model_config: ModelConfig | None = None
) -> Checkpoint:
    """Read a checkpoint, validating everything before any weights are used.

    Parameters
    ----------
    path : path-like
        A napari-unet-tuner ``.safetensors`` file, a bioimage.io package
        (``.zip``) it exported (`open_bioimageio`), or a plain PyTorch state
        dict (``.pt``/``.pth``), which is imported safely (see `import_state_dict`).
    model_config : ModelConfig, optional
        Only for PyTorch state dicts: the architecture, if it cannot be inferred.

    Raises
    ------
    FileNotFoundError
        If there is no such file.
    CheckpointError
        If the file is truncated, of another format, carries pickled code,
        lacks or has extra weights, has shapes that do not fit its config, or
        was written by a newer format version. The message says which.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"checkpoint not found: {path}")
    with open(path, "rb") as fh:
        head = fh.read(9)
    # A safetensors file starts with its header's length, then "{": checked
    # first, because a header length whose low byte is 0x80 looks like pickle.
    is_safetensors = len(head) == 9 and head[8:] == b"{"
    if head.startswith(_ZIP_MAGIC):
        if is_bioimageio_package(path):
            return open_bioimageio(path)
    if not is_safetensors and (
        head.startswith(_ZIP_MAGIC) or (head[:1] and head[0] == _PICKLE_PROTO)
    ):
        return import_state_dict(path, model_config)
    if not is_safetensors and path.suffix.lower() in (".pt", ".pth"):
        raise CheckpointError(f"{path} is not a PyTorch file (no zip or pickle header)")
    return read_safetensors_checkpoint(path)
