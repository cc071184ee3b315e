"""Where results may be written: never onto, into or around what they are made from.

Paths are compared as the files they name (resolved, and by file identity
where both exist), not as spelled: ``in.tif``, ``./in.tif`` and a link to
it are one file.
"""

from __future__ import annotations

import datetime
import json
import os
import socket
from collections.abc import Iterable
from pathlib import Path

from napari_unet_tuner.errors import InputError


def _resolved(path: str | os.PathLike) -> Path:
    return Path(path).expanduser().resolve()


def check_outputs(
    outputs: Iterable[str | os.PathLike], sources: Iterable[str | os.PathLike]
) -> None:
    """Refuse any of ``outputs`` that is, contains, or lies inside one of ``sources``.

    Writing (or replacing) it would destroy an input: a labels TIFF over
    its image, or a zarr output whose removal takes its input folder with it.
    Each path is resolved once (links followed); a hard link to an input is
    recognised by file identity.

    Raises
    ------
    InputError
        Naming the input and what to do instead.
    """
    by_path = {_resolved(source): source for source in sources}
    by_file = {_file_id(path): by_path[path] for path in by_path if path.exists()}
    folders = {path for path in by_path if path.is_dir()}
    above = {parent: path for path in by_path for parent in path.parents}
    for output in outputs:
        out = _resolved(output)
        source, problem = by_path.get(out), "is the input"
        if source is None and out.exists():
            source = by_file.get(_file_id(out))
        if source is None:
            inside = [p for p in out.parents if p in folders]
            if inside:
                source, problem = by_path[inside[0]], "lies inside the input folder"
            elif out in above:
                source, problem = by_path[above[out]], "contains the input"
        if source is not None:
            raise InputError(
                f"the output {output} {problem} {source}: writing it would destroy the input; "
                "choose an output elsewhere"
            )


def _file_id(path: Path) -> tuple[int, int]:
    """Return the file itself (device, inode): a hard link is the same file."""
    stat = path.stat()
    return stat.st_dev, stat.st_ino


def check_output(output: str | os.PathLike, sources: Iterable[str | os.PathLike]) -> None:
    """`check_outputs` for one output."""
    check_outputs([output], sources)


class OutputLock:
    """A lock file beside an output while a run writes it: one writer at a time.

    ``<output>.lock`` is created exclusively and holds the owner's pid, host
    and start time. A lock whose process is gone (same host; a run killed
    with ``kill -9``) is stale and taken over; a live one is refused with a
    message naming its owner. Use as a context manager.

    Parameters
    ----------
    output : path-like
        The file or folder the run writes.
    """

    def __init__(self, output: str | os.PathLike) -> None:
        output = Path(output)
        self.output = output
        self.path = output.with_name(output.name + ".lock")
        self._held = False

    def __enter__(self) -> OutputLock:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        for _ in range(2):  # a second try after removing a stale lock
            try:
                fd = os.open(self.path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
            except FileExistsError:
                owner = _read_owner(self.path)
                if owner is not None and _is_alive(owner):
                    raise InputError(
                        f"{self.output} is being written by another run (process "
                        f"{owner['pid']} on {owner['host']}, since {owner['started']}); wait "
                        f"for it to finish, or delete {self.path} if that run is gone"
                    ) from None
                self.path.unlink(missing_ok=True)
                continue
            with os.fdopen(fd, "w") as fh:
                json.dump(
                    {
                        "pid": os.getpid(),
                        "host": socket.gethostname(),
                        "started": datetime.datetime.now().isoformat(timespec="seconds"),
                    },
                    fh,
                )
            self._held = True
            return self
        raise InputError(f"could not lock {self.output}: {self.path} keeps coming back")

    def __exit__(self, *exc_info: object) -> None:
        if self._held:
            self.path.unlink(missing_ok=True)
            self._held = False


def _read_owner(path: Path) -> dict | None:
    """Return the owner recorded in a lock file, or None if unreadable (its writer died)."""
    try:
        owner = json.loads(path.read_text())
    except (OSError, ValueError):
        return None
    if not isinstance(owner, dict) or not isinstance(owner.get("pid"), int):
        return None
    owner.setdefault("host", "?")
    owner.setdefault("started", "?")
    return owner


def _is_alive(owner: dict) -> bool:
    """Whether the lock's owner may still run: another host's process is assumed alive."""
    if owner["host"] != socket.gethostname():
        return True
    try:
        os.kill(owner["pid"], 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True  # someone else's process
    return True
