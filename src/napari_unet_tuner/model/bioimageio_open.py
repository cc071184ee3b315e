"""Open a bioimage.io model package that napari-unet-tuner exported, as the checkpoint it was.

`napari_unet_tuner.model.bioimageio_export` puts the checkpoint itself in
the package and names it and its digest in the rdf's ``config``; opening
checks the archive and its description (sizes, YAML aliases) before anything
is inflated or parsed, validates the package with bioimageio.spec, checks
the checkpoint's digest, and reads it with the safetensors loader only.
Packages from elsewhere are other architectures: they are refused with a
message that says where to run them.
"""

from __future__ import annotations

import dataclasses
import os
import shutil
import tempfile
import zipfile
import zlib
from pathlib import Path

from napari_unet_tuner.errors import CheckpointError, InputError
from napari_unet_tuner.model.checkpoint import Checkpoint, file_sha256, read_safetensors_checkpoint

_RDF_NAMES = ("rdf.yaml", "bioimageio.yaml")
# Where opening a package finds what export wrote in the rdf's ``config``.
CONFIG_KEY = "napari_unet_tuner"
# A description is a few KB; a larger one is not a model description.
_MAX_RDF_BYTES = 1 << 20
# YAML anchors and aliases let 8 KB expand to gigabytes in a loader; the
# descriptions this plugin writes have none.
_MAX_YAML_ALIASES = 50
# The checkpoint of the largest U-Net a config may describe is far below this.
_MAX_CHECKPOINT_BYTES = 2 << 30
# Members inflating beyond this many times their compressed size are a bomb
# (float weights compress about 1.1x; a package's text files about 5x).
_MAX_INFLATION = 20


def require_bioimageio() -> None:
    """Raise a clear error if the optional bioimage.io libraries are missing."""
    try:
        import bioimageio.core  # noqa: F401
        import bioimageio.spec  # noqa: F401
    except ImportError as error:
        raise InputError(
            "exporting and opening bioimage.io packages needs the bioimageio libraries: "
            "pip install 'napari-unet-tuner[bioimageio]'"
        ) from error


def is_bioimageio_package(path: str | os.PathLike) -> bool:
    """Whether ``path`` is a zip with a bioimage.io description at its root."""
    try:
        with zipfile.ZipFile(path) as archive:
            names = archive.namelist()
    except (zipfile.BadZipFile, OSError, ValueError):
        return False
    return any(n in _RDF_NAMES or n.endswith(".bioimageio.yaml") for n in names)


def open_bioimageio(path: str | os.PathLike) -> Checkpoint:
    """Return the checkpoint a napari-unet-tuner bioimage.io package carries.

    Raises
    ------
    CheckpointError
        If the package is damaged, would inflate far beyond its size, is not
        a valid bioimage.io model, was not exported by napari-unet-tuner, or
        its checkpoint does not match its digest. The message names the package.
    """
    path = Path(path)
    try:
        with zipfile.ZipFile(path) as archive:
            _check_description(archive, path)
            entry = _plugin_entry(path)
            with tempfile.TemporaryDirectory() as folder:
                inner = Path(folder) / "checkpoint.safetensors"
                _extract_capped(archive, str(entry["checkpoint"]), inner, path)
                if file_sha256(inner) != entry["sha256"]:
                    raise CheckpointError(
                        f"{path.name}: its checkpoint does not match its digest "
                        "(the package was altered or damaged); export it again"
                    )
                try:
                    checkpoint = read_safetensors_checkpoint(inner)
                except CheckpointError as error:
                    # Name the package, not the temporary file it was unpacked to.
                    message = str(error).replace(str(inner), f"{path.name}'s checkpoint")
                    raise CheckpointError(message) from None
    except (
        zipfile.BadZipFile,
        zipfile.LargeZipFile,
        zlib.error,
        RuntimeError,
        NotImplementedError,
    ) as error:
        # A damaged archive (bad CRC or stream), an encrypted or unknown-compression member.
        raise CheckpointError(f"{path.name} is a damaged or unreadable zip: {error}") from None
    return dataclasses.replace(checkpoint, path=path)


def _check_description(archive: zipfile.ZipFile, path: Path) -> None:
    """Refuse a description too large, or full of YAML aliases, before a YAML loader sees it."""
    import yaml

    for info in archive.infolist():
        if info.filename in _RDF_NAMES or info.filename.endswith(".bioimageio.yaml"):
            if info.file_size > _MAX_RDF_BYTES:
                raise CheckpointError(
                    f"{path.name}: its description {info.filename} declares {info.file_size} "
                    f"bytes (a model's is a few KB); refused unread"
                )
            text = archive.read(info).decode("utf-8", errors="replace")
            try:
                aliases = sum(isinstance(t, yaml.AliasToken) for t in yaml.scan(text))
            except yaml.YAMLError as error:
                raise CheckpointError(
                    f"{path.name} is not a valid bioimage.io package: {error}"
                ) from None
            if aliases > _MAX_YAML_ALIASES:
                raise CheckpointError(
                    f"{path.name}: its description uses {aliases} YAML aliases, which can "
                    "expand without bound; refused unread"
                )


def _plugin_entry(path: Path) -> dict:
    """Validate the package with bioimageio.spec and return what this plugin wrote in it."""
    require_bioimageio()
    from bioimageio.spec import InvalidDescr, load_description

    try:
        description = load_description(str(path), perform_io_checks=False)
    except Exception as error:  # noqa: BLE001 - YAML, zip and pydantic each raise their own
        message = f"{path.name} is not a valid bioimage.io package: {error}"
        raise CheckpointError(message) from error
    if isinstance(description, InvalidDescr):
        first = description.validation_summary.details[-1].errors[:1]
        reason = f": {first[0].msg}" if first else ""
        raise CheckpointError(f"{path.name} is not a valid bioimage.io package{reason}")
    config = getattr(description, "config", None)
    entry = getattr(config, CONFIG_KEY, None) if config is not None else None
    if description.type != "model" or not isinstance(entry, dict) or "checkpoint" not in entry:
        raise CheckpointError(
            f"{path.name} is a bioimage.io {description.type} that napari-unet-tuner did not "
            f"export ({getattr(description, 'name', '?')}): it is not this plugin's U-Net. "
            "Run it with bioimageio.core, or in the tool it was made for."
        )
    if not isinstance(entry.get("sha256"), str):
        raise CheckpointError(
            f"{path.name} does not give its checkpoint's digest (sha256), so it cannot be "
            "checked; export the model again with napari-unet-tuner"
        )
    return entry


def _extract_capped(archive: zipfile.ZipFile, member: str, target: Path, path: Path) -> None:
    """Copy one member to ``target``, refused by its declared size before it is inflated."""
    try:
        info = archive.getinfo(member)
    except KeyError:
        raise CheckpointError(f"{path.name} lacks its checkpoint file {member}") from None
    cap = min(_MAX_CHECKPOINT_BYTES, max(info.compress_size, 1 << 20) * _MAX_INFLATION)
    if info.file_size > cap:
        raise CheckpointError(
            f"{path.name}: its checkpoint would inflate to {info.file_size} bytes from "
            f"{info.compress_size}; refused unread (damaged or hostile package)"
        )
    # zipfile reads no more than the declared size (a lie is a CRC error).
    with archive.open(info) as source, open(target, "wb") as out:
        shutil.copyfileobj(source, out)
