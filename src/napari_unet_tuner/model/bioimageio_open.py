"""Open a bioimage.io model package that napari-unet-tuner exported, as the checkpoint it was.

`napari_unet_tuner.model.bioimageio_export` puts the checkpoint itself in
the package and names it in the rdf's ``config``; opening validates the
package with bioimageio.spec, checks that file's digest, and reads it with
the same safe loader as any checkpoint. Packages from elsewhere are other
architectures: they are refused with a message that says where to run them.
"""

from __future__ import annotations

import dataclasses
import os
import tempfile
import zipfile
from pathlib import Path

from napari_unet_tuner.errors import CheckpointError
from napari_unet_tuner.model.bioimageio_export import CONFIG_KEY, require_bioimageio
from napari_unet_tuner.model.checkpoint import Checkpoint, file_sha256

_RDF_NAMES = ("rdf.yaml", "bioimageio.yaml")


def is_bioimageio_package(path: str | os.PathLike) -> bool:
    """Whether ``path`` is a zip with a bioimage.io description at its root."""
    if not zipfile.is_zipfile(path):
        return False
    with zipfile.ZipFile(path) as archive:
        names = archive.namelist()
    return any(n in _RDF_NAMES or n.endswith(".bioimageio.yaml") for n in names)


def open_bioimageio(path: str | os.PathLike) -> Checkpoint:
    """Return the checkpoint a napari-unet-tuner bioimage.io package carries.

    Raises
    ------
    CheckpointError
        If the package is not a valid bioimage.io model, was not exported by
        napari-unet-tuner, or its checkpoint does not match its digest.
    """
    require_bioimageio()
    from bioimageio.spec import InvalidDescr, load_description

    path = Path(path)
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
    from napari_unet_tuner.model.checkpoint import load_checkpoint

    with zipfile.ZipFile(path) as archive, tempfile.TemporaryDirectory() as folder:
        inner = Path(folder) / "checkpoint.safetensors"
        try:
            inner.write_bytes(archive.read(str(entry["checkpoint"])))
        except KeyError as error:
            raise CheckpointError(f"{path.name} lacks its checkpoint file") from error
        if entry.get("sha256") and file_sha256(inner) != entry["sha256"]:
            raise CheckpointError(f"{path.name}: its checkpoint does not match its digest")
        checkpoint = load_checkpoint(inner)
    return dataclasses.replace(checkpoint, path=path)
