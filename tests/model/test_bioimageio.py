"""Models travel as bioimage.io packages: exported, tested by bioimageio.core, opened again."""

import zipfile

import numpy as np
import pytest

from napari_unet_tuner import (
    AnnotatedImage,
    CheckpointError,
    TrainingConfig,
    fine_tune,
    load_checkpoint,
    segment,
)
from napari_unet_tuner._sample_data import nuclei_sample
from napari_unet_tuner.cli import main
from napari_unet_tuner.model.bioimageio_export import check_package, export_bioimageio
from napari_unet_tuner.model.checkpoint import default_checkpoint_path

from conftest import dim_disc_scene, peak_memory

pytest.importorskip("bioimageio.core")


@pytest.fixture(scope="module")
def default_package(tmp_path_factory):
    path = tmp_path_factory.mktemp("package") / "nuclei.zip"
    sample = nuclei_sample()[0][0]
    return export_bioimageio(load_checkpoint(default_checkpoint_path()), path, sample)


def test_the_default_passes_bioimageio_cores_test_and_opens_as_itself(default_package):
    passed, words = check_package(default_package)
    assert passed, words
    with zipfile.ZipFile(default_package) as archive:
        names = set(archive.namelist())
    assert {"rdf.yaml", "weights.pt", "weights_torchscript.pt", "unet.py", "cover.png"} <= names
    image = nuclei_sample()[0][0]
    opened = load_checkpoint(default_package)
    assert opened.path == default_package and opened.card.name == "nuclei default"
    np.testing.assert_array_equal(
        segment(image, opened).labels, segment(image, default_checkpoint_path()).labels
    )


def test_a_fine_tuned_child_passes_too_and_keeps_its_history(disc_model, tmp_path):
    image, truth, _ = dim_disc_scene(0)
    parent = segment(image, disc_model).labels
    config = TrainingConfig(max_seconds=20, steps_per_epoch=10, device="cpu")
    child = fine_tune([AnnotatedImage(image, truth, prediction=parent)], disc_model, config)
    assert child.learned
    package = export_bioimageio(child.checkpoint, tmp_path / "child", image)
    assert package.name == "child.zip"
    passed, words = check_package(package)
    assert passed, words
    opened = load_checkpoint(package)
    assert opened.card.parent == child.checkpoint.card.parent
    assert len(opened.card.training) == len(child.checkpoint.card.training) == 2
    np.testing.assert_array_equal(
        segment(image, opened).labels, segment(image, child.checkpoint).labels
    )


def test_a_package_from_elsewhere_is_refused_in_words(default_package, tmp_path):
    # The same package without what this plugin wrote in its config: another model.
    foreign = tmp_path / "foreign.zip"
    with zipfile.ZipFile(default_package) as source, zipfile.ZipFile(foreign, "w") as out:
        for name in source.namelist():
            data = source.read(name)
            if name == "rdf.yaml":
                text = data.decode()
                data = text[: text.index("config:")].encode()
            out.writestr(name, data)
    with pytest.raises(CheckpointError, match="did not export.*not this plugin's U-Net"):
        load_checkpoint(foreign)
    broken = tmp_path / "broken.zip"
    with zipfile.ZipFile(broken, "w") as out:
        out.writestr("rdf.yaml", "type: model\nname: [unclosed\n")
    with pytest.raises(CheckpointError, match="not a valid bioimage.io package"):
        load_checkpoint(broken)


def test_the_cli_exports_tests_and_never_overwrites(default_package, tmp_path, caplog):
    out = tmp_path / "cli.zip"
    assert main(["export", "-o", str(out), "--no-test", "--author", "A. Biologist"]) == 0
    with zipfile.ZipFile(out) as archive:
        assert "A. Biologist" in archive.read("rdf.yaml").decode()
    before = out.stat().st_mtime_ns
    assert main(["export", "-o", str(out), "--no-test"]) == 1
    assert "exists" in caplog.text and out.stat().st_mtime_ns == before


def test_what_the_spec_refuses_is_one_line_and_no_file(tmp_path, caplog):
    out = tmp_path / "bad.zip"
    assert main(["export", "-o", str(out), "--license", "NOT-A-LICENCE", "--no-test"]) == 1
    assert "not be valid bioimage.io" in caplog.text and "NOT-A-LICENCE" in caplog.text
    assert "Traceback" not in caplog.text and len(caplog.text) < 600
    assert not out.exists()


def _repackage(source, target, replace=None):
    """Copy a package, replacing members' bytes."""
    replace = replace or {}
    with zipfile.ZipFile(source) as inp, zipfile.ZipFile(target, "w") as out:
        for info in inp.infolist():
            data = inp.read(info)
            if info.filename in replace:
                data = replace[info.filename](data)
            member = zipfile.ZipInfo(info.filename, info.date_time)
            member.compress_type = zipfile.ZIP_DEFLATED
            out.writestr(member, data)
    return target


def _patch_headers(path, member, field, value):
    """Write ``value`` into a field of both headers of ``member`` (as damage would)."""
    import struct

    raw = bytearray(path.read_bytes())
    with zipfile.ZipFile(path) as archive:
        local = archive.getinfo(member).header_offset
    local_at, central_at = {"flags": (6, 8), "compression": (8, 10)}[field]
    struct.pack_into("<H", raw, local + local_at, value)
    central = raw.find(b"PK\x01\x02")
    while central >= 0:
        (name_len,) = struct.unpack_from("<H", raw, central + 28)
        if raw[central + 46 : central + 46 + name_len] == member.encode():
            struct.pack_into("<H", raw, central + central_at, value)
        central = raw.find(b"PK\x01\x02", central + 4)
    path.write_bytes(bytes(raw))


def _rdf_with(text_edit):
    return lambda data: text_edit(data.decode()).encode()


def test_a_package_without_its_digest_or_with_another_file_inside_is_refused(
    default_package, tmp_path
):
    import hashlib
    import io
    import re

    import torch

    undigested = _repackage(
        default_package,
        tmp_path / "undigested.zip",
        {"rdf.yaml": _rdf_with(lambda t: re.sub(r"\n\s*sha256: \w+", "", t))},
    )
    with pytest.raises(CheckpointError, match="does not give its checkpoint's digest"):
        load_checkpoint(undigested)
    # A pickle in the checkpoint's place, its digest updated to match: the
    # safetensors reader alone reads it, and the message names the package.
    buffer = io.BytesIO()
    torch.save({"w": torch.zeros(2)}, buffer)
    pickled = buffer.getvalue()
    digest = hashlib.sha256(pickled).hexdigest()
    swapped = _repackage(
        default_package,
        tmp_path / "swapped.zip",
        {
            "checkpoint.safetensors": lambda _: pickled,
            "rdf.yaml": _rdf_with(lambda t: re.sub(r"sha256: \w+", f"sha256: {digest}", t)),
        },
    )
    with pytest.raises(CheckpointError, match=r"swapped\.zip's checkpoint") as error:
        load_checkpoint(swapped)
    assert "/tmp" not in str(error.value).replace(str(tmp_path), "")


def test_a_checkpoint_member_that_would_inflate_far_beyond_its_size_is_refused_unread(
    default_package, tmp_path
):
    bomb = _repackage(
        default_package,
        tmp_path / "bomb.zip",
        {"checkpoint.safetensors": lambda _: b"\0" * (256 << 20)},
    )
    assert bomb.stat().st_size < 20 << 20
    with peak_memory() as peak, pytest.raises(CheckpointError, match="would inflate"):
        load_checkpoint(bomb)
    assert peak[0] < 64 << 20


def test_a_yaml_alias_bomb_is_refused_before_it_is_expanded(default_package, tmp_path):
    import time

    levels = ["a0: &a0 [lol, lol, lol, lol, lol, lol, lol, lol, lol]"]
    levels += [f"a{i}: &a{i} [" + ", ".join([f"*a{i - 1}"] * 9) + "]" for i in range(1, 9)]
    laughs = "\n".join(levels) + "\n"
    bomb = _repackage(
        default_package, tmp_path / "laughs.zip", {"rdf.yaml": lambda d: d + laughs.encode()}
    )
    started = time.perf_counter()
    with pytest.raises(CheckpointError, match="YAML aliases"):
        load_checkpoint(bomb)
    assert time.perf_counter() - started < 10


@pytest.mark.parametrize("damage", ["flipped byte", "encrypted flag", "compression 99"])
def test_a_damaged_package_is_one_error_naming_it(default_package, tmp_path, damage, caplog):
    path = tmp_path / "damaged.zip"
    _repackage(default_package, path)
    if damage == "encrypted flag":
        _patch_headers(path, "checkpoint.safetensors", "flags", 0x1)
    if damage == "compression 99":
        _patch_headers(path, "checkpoint.safetensors", "compression", 99)
    if damage == "flipped byte":
        with zipfile.ZipFile(path) as archive:
            info = archive.getinfo("checkpoint.safetensors")
        raw = bytearray(path.read_bytes())
        middle = info.header_offset + 30 + len(info.filename) + info.compress_size // 2
        raw[middle] ^= 0xFF
        path.write_bytes(bytes(raw))
    with pytest.raises(CheckpointError, match="damaged.zip"):
        load_checkpoint(path)
    assert main(["info", str(path)]) == 1
    assert "damaged.zip" in caplog.text and "Traceback" not in caplog.text


def test_export_never_replaces_the_package_it_reads_nor_packs_a_blank_or_nan_sample(
    default_package, tmp_path, caplog
):
    import shutil

    package = shutil.copy(default_package, tmp_path / "pkg.zip")
    before = (tmp_path / "pkg.zip").read_bytes()
    args = ["export", str(package), "-o", str(package), "--overwrite", "--no-test"]
    assert main(args) == 1
    assert "pkg.zip" in caplog.text and (tmp_path / "pkg.zip").read_bytes() == before
    import tifffile

    blank, holey = np.zeros((128, 128), np.float32), nuclei_sample()[0][0].astype(np.float32)
    y, x = (s // 2 for s in holey.shape)
    holey[y - 20 : y + 20, x - 20 : x + 20] = np.nan  # in the tile the package's test uses
    for name, sample, words in (("blank", blank, "blank"), ("holey", holey, "NaN")):
        tifffile.imwrite(tmp_path / f"{name}.tif", sample)
        caplog.clear()
        out = tmp_path / f"{name}.zip"
        assert main(["export", "--sample", str(tmp_path / f"{name}.tif"), "-o", str(out)]) == 1
        assert words in caplog.text and "--sample" in caplog.text and not out.exists()
        assert len(caplog.text.splitlines()) == 1
