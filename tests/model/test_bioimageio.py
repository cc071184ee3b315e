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

from conftest import dim_disc_scene

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
