"""Model versions of a session and recently used checkpoint files (Qt-free)."""

from __future__ import annotations

import json
import os
import uuid
from dataclasses import dataclass, field
from pathlib import Path

from napari_unet_tuner.io import user_folder
from napari_unet_tuner.model.checkpoint import Checkpoint

_RECENT_MAX = 8


@dataclass
class ModelVersions:
    """The checkpoints of one session, oldest first, and which one is active.

    Loading a file starts a new lineage entry; every fine-tuning run appends
    its result and makes it active. Rolling back only changes ``active``:
    nothing is deleted, so the user can go forward again.
    """

    versions: list[Checkpoint] = field(default_factory=list)
    active_index: int = -1

    @property
    def active(self) -> Checkpoint | None:
        """The checkpoint used for segmentation and as the next fine-tuning start."""
        return self.versions[self.active_index] if self.versions else None

    def add(self, checkpoint: Checkpoint) -> int:
        """Append a checkpoint, make it active and return its index."""
        self.versions.append(checkpoint)
        self.active_index = len(self.versions) - 1
        return self.active_index

    def replace(self, index: int, checkpoint: Checkpoint) -> None:
        """Put a better model in place of version ``index`` and make it active.

        For learning while correcting, whose one version keeps improving.
        """
        if not 0 <= index < len(self.versions):
            raise IndexError(f"no version {index}; there are {len(self.versions)}")
        self.versions[index] = checkpoint
        self.active_index = index

    def activate(self, index: int) -> Checkpoint:
        """Make an earlier (or later) version active."""
        if not 0 <= index < len(self.versions):
            raise IndexError(f"no version {index}; there are {len(self.versions)}")
        self.active_index = index
        return self.versions[index]

    def describe(self, index: int) -> str:
        """One line for a version list: number, name and its last validation score."""
        ckpt = self.versions[index]
        text = f"v{index}: {ckpt.card.name}"
        if ckpt.card.training:
            after = ckpt.card.training[-1].get("scores_after", {}).get("ap50")
            if after is not None:
                text += f" (val AP50 {after:.2f})"
        return text


def config_dir() -> Path:
    """Folder for the plugin's own files (``$UNET_TUNER_CONFIG_DIR`` overrides it)."""
    return user_folder("config")


def recent_checkpoints() -> list[Path]:
    """Checkpoint files used lately, most recent first, those that still exist."""
    path = config_dir() / "recent.json"
    try:
        entries = json.loads(path.read_text())
    except (OSError, ValueError):
        return []
    return [Path(p) for p in entries if isinstance(p, str) and Path(p).is_file()]


def remember_checkpoint(checkpoint_path: str | os.PathLike) -> None:
    """Put a file at the top of the recent list (written atomically)."""
    entry = str(Path(checkpoint_path).resolve())
    entries = [entry] + [str(p) for p in recent_checkpoints() if str(p) != entry]
    folder = config_dir()
    folder.mkdir(parents=True, exist_ok=True)
    tmp = folder / f".recent.{uuid.uuid4().hex}.tmp"
    tmp.write_text(json.dumps(entries[:_RECENT_MAX]))
    os.replace(tmp, folder / "recent.json")
