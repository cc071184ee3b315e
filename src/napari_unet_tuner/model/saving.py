"""Writing checkpoints: atomically, never over a parent, and never losing a trained model."""

from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path

from napari_unet_tuner.io import remove_stale_temporaries, temporary_beside
from napari_unet_tuner.model.checkpoint import (
    FORMAT_NAME,
    FORMAT_VERSION,
    SUFFIX,
    Checkpoint,
    file_sha256,
)

# Free names tried beside a destination that cannot be written.
_FREE_NAME_TRIES = 100


def checkpoint_path(path: str | os.PathLike) -> Path:
    """Return the file a checkpoint saved to ``path`` is written to (``.safetensors`` added)."""
    path = Path(path)
    return path if path.suffix else path.with_suffix(SUFFIX)


def check_checkpoint_path(
    path: str | os.PathLike, parent: Checkpoint | None = None, overwrite: bool = False
) -> Path:
    """Refuse a destination that may not be written, before any work is done for it.

    Parameters
    ----------
    path : path-like
        Destination (as `save_checkpoint` takes it).
    parent : Checkpoint, optional
        The model the new one derives from: its file is never replaced,
        however it is named (compared by content).
    overwrite : bool
        Allow replacing another existing file.

    Returns
    -------
    pathlib.Path
        The file that will be written.

    Raises
    ------
    FileExistsError
        If the file exists and may not be replaced.
    """
    return _check_destination(checkpoint_path(path), parent.sha256 if parent else None, overwrite)


def _check_destination(path: Path, parent_sha: str | None, overwrite: bool) -> Path:
    """Refuse an existing ``path``: always the parent (by content), others unless ``overwrite``."""
    if not path.exists():
        return path
    if parent_sha and file_sha256(path) == parent_sha:
        raise FileExistsError(
            f"{path} is the parent of this model; choose another file name "
            "(a parent checkpoint is never overwritten)"
        )
    if not overwrite:
        raise FileExistsError(
            f"{path} exists; choose another file name for the model (or allow overwriting)"
        )
    return path


def save_checkpoint(
    checkpoint: Checkpoint,
    path: str | os.PathLike,
    *,
    overwrite: bool = False,
    half: bool = False,
) -> Path:
    """Write a checkpoint atomically and return the path written.

    The file is written beside its destination under a temporary name and
    renamed into place, so a crash or a full disk never leaves a half-written
    checkpoint under ``path``.

    Parameters
    ----------
    checkpoint : Checkpoint
        What to write.
    path : path-like
        Destination; ``.safetensors`` is appended if it has no suffix.
    overwrite : bool
        Replace an existing file. A file that is this checkpoint's parent is
        never replaced, whatever ``overwrite`` says.
    half : bool
        Store floating-point weights as float16: half the file size (the
        shipped default uses it). They are read back as float32.

    Raises
    ------
    FileExistsError
        If ``path`` exists and may not be replaced.
    OSError
        If the file cannot be written (a full disk, no permission); nothing
        is left under ``path`` or beside it.
    """
    from safetensors import SafetensorError
    from safetensors.torch import save_file

    parent_sha = (checkpoint.card.parent or {}).get("sha256")
    path = _check_destination(checkpoint_path(path), parent_sha, overwrite)
    tensors = {k: v.detach().to("cpu").contiguous() for k, v in checkpoint.state_dict.items()}
    if half:
        tensors = {k: v.half() if v.is_floating_point() else v for k, v in tensors.items()}
    metadata = {
        "format": FORMAT_NAME,
        "format_version": str(FORMAT_VERSION),
        "model_config": json.dumps(checkpoint.model_config.to_dict()),
        "card": json.dumps(checkpoint.card.to_dict()),
    }
    path.parent.mkdir(parents=True, exist_ok=True)
    remove_stale_temporaries(path)
    tmp = temporary_beside(path)
    try:
        # Created here first to learn the permissions the user's umask gives
        # a new file: safetensors writes its files private (0600), unlike
        # every other output.
        with open(tmp, "xb"):
            pass
        mode = tmp.stat().st_mode & 0o777
        save_file(tensors, str(tmp), metadata=metadata)
        os.chmod(tmp, mode)
        with open(tmp, "rb+") as fh:
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except SafetensorError as exc:
        # safetensors reports a full disk as its own error type.
        raise OSError(f"could not write {path}: {exc}") from exc
    finally:
        tmp.unlink(missing_ok=True)
    return path


def save_checkpoint_somewhere(
    checkpoint: Checkpoint, path: str | os.PathLike
) -> tuple[Path | None, str]:
    """Save a new model to ``path``, or, if that fails, under a free name it can be found by.

    For a model that took minutes to train: a destination that became
    unwritable (taken meanwhile, a full disk, no permission) must not lose
    it. Tries ``path``, then free names beside it (``name-1.safetensors``,
    ...), then the same in the system's temporary folder.

    Returns
    -------
    path : pathlib.Path or None
        Where it was written; None if nowhere could be.
    note : str
        Empty when written to ``path``; otherwise what happened, in words.
    """
    wanted = checkpoint_path(path)
    try:
        return save_checkpoint(checkpoint, wanted), ""
    except OSError as exc:
        first_error = exc
    for folder in (wanted.parent, Path(tempfile.gettempdir())):
        for i in range(1, _FREE_NAME_TRIES + 1):
            candidate = folder / f"{wanted.stem}-{i}{SUFFIX}"
            if candidate.exists():
                continue
            try:
                written = save_checkpoint(checkpoint, candidate)
            except OSError:
                break  # this folder cannot take it either
            return written, f"could not write {wanted} ({first_error}); saved it as {written}"
    return None, (
        f"could not write {wanted} ({first_error}) nor anywhere beside it or in "
        f"{tempfile.gettempdir()}; free some disk space and save the model again"
    )
