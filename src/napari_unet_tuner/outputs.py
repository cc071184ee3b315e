"""Where results may be written: never onto, into or around what they are made from.

Paths are compared as the files they name (resolved, and by file identity
where both exist), not as spelled: ``in.tif``, ``./in.tif`` and a link to
it are one file.
"""

from __future__ import annotations

import contextlib
import datetime
import errno
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

    ``<output>.lock`` (beside the output's resolved path, so a link to it is
    the same output) is held with the operating system's file lock, which
    the kernel releases when its process ends in any way (``kill -9``
    included): a lock left by a dead run is free, a live one is refused with
    a message naming its owner, and two runs can never both take it. The
    file records the owner's pid, host and start time for that message. Use
    as a context manager.

    Parameters
    ----------
    output : path-like
        The file or folder the run writes.
    """

    def __init__(self, output: str | os.PathLike) -> None:
        self.output = Path(output)
        resolved = _resolved(output)
        self.path = resolved.with_name(resolved.name + ".lock")
        self._fd: int | None = None

    def __enter__(self) -> OutputLock:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        for _ in range(100):  # retried only while other runs remove the file under us
            fd = os.open(self.path, os.O_CREAT | os.O_RDWR, 0o644)
            try:
                locked = _try_lock(fd)
            except InputError:
                os.close(fd)
                raise
            if not locked:
                os.close(fd)
                raise InputError(_held_message(self.output, self.path))
            # The holder before us may have removed the file after we opened
            # it: then we hold a lock on a name nobody else sees; try again.
            try:
                same = os.path.samestat(os.fstat(fd), os.stat(self.path))
            except FileNotFoundError:
                same = False
            if same:
                owner = {
                    "pid": os.getpid(),
                    "host": socket.gethostname(),
                    "started": datetime.datetime.now().isoformat(timespec="seconds"),
                }
                os.ftruncate(fd, 0)
                os.write(fd, json.dumps(owner).encode())
                self._fd = fd
                return self
            os.close(fd)
        raise InputError(f"could not lock {self.output}: {self.path} keeps changing")

    def __exit__(self, *exc_info: object) -> None:
        if self._fd is not None:
            # Removed while still locked, so no other run can take the old
            # file (Windows cannot remove an open file; it is simply reused).
            with contextlib.suppress(OSError):
                self.path.unlink()
            os.close(self._fd)
            self._fd = None


def _try_lock(fd: int) -> bool:
    """Take the operating system's exclusive lock on ``fd`` without waiting."""
    try:
        import fcntl
    except ImportError:  # Windows
        import msvcrt

        try:
            msvcrt.locking(fd, msvcrt.LK_NBLCK, 1)
        except OSError:
            return False
        return True
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError as error:
        if error.errno in (errno.EWOULDBLOCK, errno.EAGAIN, errno.EACCES):
            return False  # held by another run
        raise InputError(
            f"cannot lock the output here ({error.strerror}): this file system does not "
            "support locks; write the output to a local disk"
        ) from None
    return True


def _held_message(output: Path, lock: Path) -> str:
    owner = _read_owner(lock)
    who = (
        f"process {owner['pid']} on {owner['host']}, since {owner['started']}"
        if owner
        else "a run that is starting"
    )
    return (
        f"{output} is being written by another run ({who}); wait for it to finish "
        "(its lock is released when it ends, however it ends)"
    )


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
