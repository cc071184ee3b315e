import json

import numpy as np
import pytest
import tifffile

from napari_unet_tuner.cli import main


@pytest.fixture
def image_file(tmp_path):
    path = tmp_path / "cells.tif"
    tifffile.imwrite(path, (np.random.default_rng(0).random((48, 40)) * 4000).astype(np.uint16))
    return path


def test_segment_writes_labels_and_probabilities(tmp_path, image_file, tiny_checkpoint_file):
    out = tmp_path / "out.tif"
    code = main(
        [
            "segment",
            str(image_file),
            "-o",
            str(out),
            "--checkpoint",
            str(tiny_checkpoint_file),
            "--probabilities",
            "--tile-shape",
            "32",
            "32",
            "--device",
            "cpu",
        ]
    )
    assert code == 0
    labels = tifffile.imread(out)
    assert labels.shape == (48, 40) and labels.dtype == np.int32
    assert tifffile.imread(tmp_path / "out_probabilities.tif").shape == (3, 48, 40)
    # A second run refuses to overwrite unless asked.
    assert (
        main(
            ["segment", str(image_file), "-o", str(out), "--checkpoint", str(tiny_checkpoint_file)]
        )
        == 1
    )
    assert (
        main(
            [
                "segment",
                str(image_file),
                "-o",
                str(out),
                "--checkpoint",
                str(tiny_checkpoint_file),
                "--overwrite",
                "--scale",
                "0.5",
            ]
        )
        == 0
    )
    assert tifffile.imread(out).shape == (48, 40)


def test_scale_out_of_range_is_a_usage_error(tmp_path, image_file, capsys):
    with pytest.raises(SystemExit):
        main(["segment", str(image_file), "-o", str(tmp_path / "o.tif"), "--scale", "0"])
    assert "outside 0.1-10" in capsys.readouterr().err
    assert not (tmp_path / "o.tif").exists()
    # Instance settings out of range are named as typed, not as a config class.
    for option, value, interval in (
        ("--threshold", "1.5", "(0, 1)"),
        ("--seed-threshold", "0", "(0, 1)"),
        ("--split-solidity", "2", "[0, 1]"),
    ):
        with pytest.raises(SystemExit):
            main(["segment", str(image_file), "-o", str(tmp_path / "o.tif"), option, value])
        err = capsys.readouterr().err
        assert f"argument {option}: {float(value):g} is outside {interval}" in err
        assert "InstanceConfig" not in err
    with pytest.raises(SystemExit):
        main(["segment", "--help"])
    assert " ".join(capsys.readouterr().out.split()).count("default: the model's own") == 4


def test_batch_reports_failures_and_goes_on(tmp_path, image_file, tiny_checkpoint_file, caplog):
    broken = tmp_path / "broken.tif"
    broken.write_bytes(b"II*\0 not really a tiff")
    out = tmp_path / "results"
    code = main(
        [
            "segment",
            str(broken),
            str(image_file),
            "-o",
            str(out),
            "--checkpoint",
            str(tiny_checkpoint_file),
        ]
    )
    assert code == 1
    assert sorted(p.name for p in out.iterdir()) == ["cells_labels.tif"]
    assert "cannot read" in caplog.text and "1 of 2 input(s) failed" in caplog.text


def test_clear_errors_and_nothing_written(tmp_path, image_file, tiny_checkpoint_file, caplog):
    out = tmp_path / "o.tif"
    assert (
        main(
            [
                "segment",
                str(tmp_path / "missing.tif"),
                "-o",
                str(out),
                "--checkpoint",
                str(tiny_checkpoint_file),
            ]
        )
        == 1
    )
    assert "image not found" in caplog.text
    rgb2 = tmp_path / "two.tif"
    tifffile.imwrite(rgb2, np.zeros((2, 32, 32), np.uint8))
    assert (
        main(
            [
                "segment",
                str(rgb2),
                "-o",
                str(out),
                "--checkpoint",
                str(tiny_checkpoint_file),
                "--axes",
                "CYX",
            ]
        )
        == 1
    )
    assert "model reads 1 channel(s) but the image has 2" in caplog.text
    bad_ckpt = tmp_path / "bad.safetensors"
    bad_ckpt.write_bytes(b"garbage!" * 4)
    assert main(["segment", str(image_file), "-o", str(out), "--checkpoint", str(bad_ckpt)]) == 1
    assert "not a napari-unet-tuner checkpoint" in caplog.text
    args = ["segment", str(image_file), "-o", str(out), "--checkpoint", str(tiny_checkpoint_file)]
    with pytest.raises(SystemExit):  # refused as typed, before anything runs
        main([*args, "--split-solidity", "1.5"])
    assert list(tmp_path.glob("o*.tif")) == []
    with pytest.raises(SystemExit) as exc:
        main(["segment", str(image_file)])
    assert exc.value.code == 2


def test_info_shows_the_card(tiny_checkpoint_file, capsys):
    assert main(["info", str(tiny_checkpoint_file)]) == 0
    text = capsys.readouterr().out
    assert "name:         tiny" in text and "interior" in text
    assert main(["info", str(tiny_checkpoint_file), "--json"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["model_config"]["features"] == 4 and len(report["sha256"]) == 64
    # No checkpoint named: the bundled default's card.
    assert main(["info"]) == 0
    assert "name:         nuclei default" in capsys.readouterr().out


def test_finetune_writes_a_new_checkpoint_and_reports_scores(
    tmp_path, tiny_checkpoint_file, caplog
):
    from conftest import disc_labels

    labels = disc_labels((64, 64), [(16, 16), (16, 44), (46, 20), (44, 46)], radius=7)
    image = ((labels > 0) * 1000 + 100).astype(np.uint16)
    tifffile.imwrite(tmp_path / "img.tif", image)
    tifffile.imwrite(tmp_path / "ann.tif", labels)
    out = tmp_path / "tuned.safetensors"
    pair = [str(tmp_path / "img.tif"), str(tmp_path / "ann.tif")]
    budget = ["--seconds", "5", "--device", "cpu"]
    # An annotation equal to the prediction it came from teaches nothing.
    unchanged = ["finetune", *pair, "-o", str(out), "--checkpoint", str(tiny_checkpoint_file)]
    assert main([*unchanged, "--prediction", pair[1], *budget]) == 1
    assert "nothing to learn" in caplog.text and not out.exists()
    assert main([*unchanged, "--prediction", pair[1], "--prediction", pair[1]]) == 1
    assert "one --prediction per IMAGE ANNOTATION pair" in caplog.text
    args = ["finetune", *pair, "-o", str(out), "--from-scratch", *budget]
    assert main(args) == 0
    assert "wrote" in caplog.text and "trained" in caplog.text
    assert main(["info", str(out)]) == 0
    # Never over an existing file, and odd argument counts are refused.
    assert main(args) == 1 and "exists" in caplog.text
    assert (
        main(
            [
                "finetune",
                str(tmp_path / "img.tif"),
                "-o",
                str(tmp_path / "n.safetensors"),
                "--checkpoint",
                str(tiny_checkpoint_file),
            ]
        )
        == 1
    )
    assert "pairs" in caplog.text


def test_finetune_a_2d_model_on_3d_objects_of_a_z_stack(tmp_path, tiny_checkpoint_file, caplog):
    from conftest import touching_spheres

    image, labels = touching_spheres(3)
    tifffile.imwrite(tmp_path / "stack.tif", image)
    tifffile.imwrite(tmp_path / "objects.tif", labels)
    out = tmp_path / "tuned.safetensors"
    pair = [str(tmp_path / "stack.tif"), str(tmp_path / "objects.tif")]
    # Steps, not seconds: the same run on a busy machine.
    budget = ["--seconds", "600", "--max-epochs", "1", "--device", "cpu", "--axes", "ZYX"]
    budget.append("--from-scratch")
    args = ["finetune", *pair, "-o", str(out), *budget, "--stack", "3d", "--anisotropy", "3"]
    assert main(args) == 0 and out.exists()
    flat = tmp_path / "plane.tif"
    tifffile.imwrite(flat, image[8])
    tifffile.imwrite(tmp_path / "plane_objects.tif", labels[8])
    args = [
        "finetune",
        str(flat),
        str(tmp_path / "plane_objects.tif"),
        "-o",
        str(tmp_path / "tuned2.safetensors"),
    ]
    assert main([*args, "--stack", "3d", "--seconds", "5", "--device", "cpu"]) == 1
    assert "stack='3d' is for Z-stacks" in caplog.text
    # A stack whose file says ZYX is learned as 3D objects without --stack, as
    # segment segments it; its Z step comes from the file.
    tagged = tmp_path / "tagged.tif"
    tifffile.imwrite(tagged, image, imagej=True, metadata={"axes": "ZYX", "spacing": 3.0})
    args = [
        "finetune",
        str(tagged),
        str(tmp_path / "objects.tif"),
        "-o",
        str(tmp_path / "tuned3.safetensors"),
    ]
    from_file = [b for b in budget if b not in ("--axes", "ZYX")]  # the file's axes only
    main([*args, *from_file])  # learned or not in one epoch: how it was read is the point
    assert "learned as 3D objects (axes ZYX), Z step 3.00x" in caplog.text


def test_zarr_input_to_zarr_output_chunk_by_chunk(tmp_path, tiny_checkpoint_file, caplog):
    zarr = pytest.importorskip("zarr")
    from napari_unet_tuner.inference.chunked_output import is_complete
    from napari_unet_tuner.labels_files import open_labels_zarr

    image = zarr.create_array(
        store=str(tmp_path / "big.zarr"), shape=(2, 100, 90), chunks=(1, 40, 40), dtype="uint16"
    )
    image[:] = np.random.default_rng(1).integers(0, 4000, image.shape)
    out = tmp_path / "big_labels.zarr"
    args = ["segment", str(tmp_path / "big.zarr"), "-o", str(out), "--checkpoint"]
    args += [str(tiny_checkpoint_file), "--chunk-shape", "48", "48", "--tile-shape", "32", "32"]
    assert main(args) == 0
    labels = open_labels_zarr(out)
    assert labels.shape == (2, 100, 90) and labels.chunks == (1, 48, 48) and is_complete(out)
    assert "objects in 12 chunks" in caplog.text
    assert main(args) == 1 and "finished result" in caplog.text
    assert main([*args, "--overwrite"]) == 0


@pytest.mark.slow
def test_batch_on_a_local_cluster_skips_a_corrupt_file(
    tmp_path, image_file, tiny_checkpoint_file, caplog
):
    broken = tmp_path / "broken.zarr"
    broken.mkdir()
    (broken / "zarr.json").write_text("{not json")
    out = tmp_path / "results"
    args = ["segment", str(image_file), str(broken), str(image_file.with_name("copy.tif"))]
    image_file.with_name("copy.tif").write_bytes(image_file.read_bytes())
    args += ["-o", str(out), "--format", "zarr", "--workers", "2", "--chunk-shape", "32", "32"]
    assert main([*args, "--checkpoint", str(tiny_checkpoint_file)]) == 1
    assert sorted(p.name for p in out.iterdir()) == ["cells_labels.zarr", "copy_labels.zarr"]
    assert "LocalCluster: 2 workers" in caplog.text
    assert "1 of 3 input(s) failed" in caplog.text and "broken.zarr" in caplog.text


def test_an_output_of_another_kind_is_refused_not_made_a_folder(
    tmp_path, image_file, tiny_checkpoint_file, caplog
):
    out = tmp_path / "out.png"
    code = main(
        ["segment", str(image_file), "-o", str(out), "--checkpoint"] + [str(tiny_checkpoint_file)]
    )
    assert code == 1 and "name a .tif or .zarr output" in caplog.text
    assert not out.exists()


def test_help_shows_defaults_and_answers_without_torch(capsys):
    import subprocess
    import sys

    for command in ("segment", "finetune"):
        with pytest.raises(SystemExit):
            main([command, "--help"])
    text = " ".join(capsys.readouterr().out.split())  # as read, not as wrapped
    assert "(default: 60.0)" in text and "(default: corrections)" in text
    assert "(default: 0.25)" in text and "(default: None)" not in text
    # --help imports neither torch nor dask: it answers at once.
    probe = (
        "import sys\nfrom napari_unet_tuner.cli import main\n"
        "try:\n    main(['segment', '--help'])\nexcept SystemExit:\n    pass\n"
        "print(sorted(m for m in ('torch', 'dask', 'skimage') if m in sys.modules))"
    )
    done = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True)
    assert done.stdout.strip().splitlines()[-1] == "[]"


def test_segment_takes_the_object_size_and_says_what_it_used(tmp_path, image_file, caplog, capsys):
    from napari_unet_tuner import save_checkpoint

    from conftest import make_checkpoint

    sized = save_checkpoint(make_checkpoint(object_diameter=10.0), tmp_path / "sized.safetensors")
    out = tmp_path / "out.tif"
    args = ["segment", str(image_file), "-o", str(out), "--checkpoint", str(sized)]
    with caplog.at_level("INFO"):
        assert main([*args, "--diameter", "40"]) == 0
    assert "resized x0.25 for the model" in caplog.text
    assert tifffile.imread(out).shape == (48, 40)
    with pytest.raises(SystemExit):
        main([*args, "--diameter", "big", "--overwrite"])
    assert "give auto, none or pixels" in capsys.readouterr().err
    assert main([*args, "--diameter", "40", "--scale", "0.5", "--overwrite"]) == 1
    assert "either diameter" in caplog.text


def test_segment_writes_the_object_table_beside_each_labels_file(tmp_path, disc_model):
    from napari_unet_tuner.model.saving import save_checkpoint

    from conftest import dim_disc_scene

    checkpoint = save_checkpoint(disc_model, tmp_path / "discs.safetensors")
    images = []
    for seed in (0, 1):
        images.append(tmp_path / f"scene.{seed}.tif")  # a dot in the name: kept whole
        tifffile.imwrite(images[-1], dim_disc_scene(seed)[0])
    single = tmp_path / "one.csv"
    common = ["--checkpoint", str(checkpoint), "--diameter", "none", "--device", "cpu"]
    code = main(
        ["segment", str(images[0]), "-o", str(tmp_path / "a.tif"), "--table", str(single), *common]
    )
    assert code == 0
    import pandas as pd

    table = pd.read_csv(single)
    labels = tifffile.imread(tmp_path / "a.tif")
    assert sorted(table["label"]) == list(range(1, labels.max() + 1))
    assert {
        "area",
        "centroid-0",
        "centroid-1",
        "intensity_mean",
        "confidence",
        "review_rank",
    } <= set(table.columns)
    assert (tmp_path / "one_possible_misses.csv").exists()
    # A batch writes one table per input, beside its labels; a file name is refused.
    out = tmp_path / "batch"
    assert main(["segment", *map(str, images), "-o", str(out), "--table", "x.csv", *common]) == 1
    assert main(["segment", *map(str, images), "-o", str(out), "--table", *common]) == 0
    for image in images:
        stem = image.name.removesuffix(".tif")
        assert (
            len(pd.read_csv(out / f"{stem}_objects.csv"))
            == tifffile.imread(out / f"{stem}_labels.tif").max()
        )
    # An existing table is not overwritten unless asked.
    assert (
        main(
            [
                "segment",
                str(images[0]),
                "-o",
                str(tmp_path / "b.tif"),
                "--table",
                str(single),
                *common,
            ]
        )
        == 1
    )


def test_a_folder_with_a_dot_in_its_name_is_a_folder(tmp_path, image_file, tiny_checkpoint_file):
    second = tmp_path / "cells.B.tif"
    second.write_bytes(image_file.read_bytes())
    common = ["--checkpoint", str(tiny_checkpoint_file), "--device", "cpu", "--diameter", "none"]
    out = tmp_path / "run1.5"
    # Typed with a trailing slash: a folder, made if missing.
    assert main(["segment", str(image_file), str(second), "-o", f"{out}/", *common]) == 0
    assert sorted(p.name for p in out.iterdir()) == ["cells.B_labels.tif", "cells_labels.tif"]
    # An existing folder is a folder without the slash, even for one input.
    assert main(["segment", str(second), "-o", str(out), "--overwrite", *common]) == 0
    assert (out / "cells.B_labels.tif").exists()


def test_one_failed_input_says_so_once(tmp_path, caplog):
    bad = tmp_path / "bad.tif"
    bad.write_bytes(b"garbage")
    assert main(["segment", str(bad), "-o", str(tmp_path / "o.tif")]) == 1
    errors = [r.getMessage() for r in caplog.records if r.levelname == "ERROR"]
    assert len(errors) == 1 and errors[0].startswith(f"error: {bad}: cannot read")


def test_finetune_names_the_model_file_it_can_write(tmp_path, image_file, caplog):
    annotation = tmp_path / "ann.tif"
    tifffile.imwrite(annotation, np.zeros((48, 40), np.uint16))
    pair = [str(image_file), str(annotation)]
    assert main(["finetune", *pair, "-o", str(tmp_path / "m2.zip")]) == 1
    assert "name it m2.safetensors" in caplog.text
    assert not (tmp_path / "m2.zip").exists()
    # Over an existing file: finetune has no option to replace it, so it offers none.
    taken = tmp_path / "taken.safetensors"
    taken.write_bytes(b"x")
    assert main(["finetune", *pair, "-o", str(taken)]) == 1
    assert "exists; choose another file name" in caplog.text
    assert "allow overwriting" not in caplog.text and taken.read_bytes() == b"x"


def test_finetune_without_prediction_refuses_the_models_own_labels_at_any_size(tmp_path, caplog):
    # The labels segment wrote, given back unedited: with the image resized
    # for the model (auto object size: the sample's 11-px nuclei are enlarged
    # about x1.6) the prediction computed again must be the same labels, not
    # "corrections" made of resizing (the issue: "corrected 21/21" at x1.58).
    from napari_unet_tuner._sample_data import nuclei_sample

    tifffile.imwrite(tmp_path / "img.tif", nuclei_sample()[0][0][:192, :192])
    for size in ("auto", "none"):
        labels, out = tmp_path / f"labels_{size}.tif", tmp_path / f"tuned_{size}.safetensors"
        common = ["--device", "cpu", "--diameter", size]
        with caplog.at_level("INFO"):
            assert main(["segment", str(tmp_path / "img.tif"), "-o", str(labels), *common]) == 0
        if size == "auto":
            assert "resized x1.5" in caplog.text
        caplog.clear()
        args = ["finetune", str(tmp_path / "img.tif"), str(labels), "-o", str(out), *common]
        assert main([*args, "--seconds", "20"]) == 1
        assert "nothing to learn" in caplog.text and not out.exists()


def test_rgb_pictures_png_and_jpg_and_one_channel_of_several(tmp_path, caplog):
    import imageio.v3 as iio

    from napari_unet_tuner._sample_data import nuclei_sample

    nuclei = nuclei_sample()[0][0][:128, :128].astype(np.float32)
    grey = (255 * (nuclei - nuclei.min()) / np.ptp(nuclei)).astype(np.uint8)
    # Histology-like: dark objects on a bright background, in colour.
    stained = np.stack([255 - grey, 255 - grey // 2, np.full_like(grey, 230)], axis=-1)
    iio.imwrite(tmp_path / "he.png", stained)
    iio.imwrite(tmp_path / "nuclei.jpg", grey)
    cpu = ["--device", "cpu", "--diameter", "none"]
    with caplog.at_level("INFO"):
        assert (
            main(["segment", str(tmp_path / "he.png"), "-o", str(tmp_path / "he.tif"), *cpu]) == 0
        )
    assert "brightfield or histology" in caplog.text and "--channel N" in caplog.text
    assert tifffile.imread(tmp_path / "he.tif").shape == (128, 128)
    caplog.clear()
    out = tmp_path / "jpg.tif"
    assert main(["segment", str(tmp_path / "nuclei.jpg"), "-o", str(out), *cpu]) == 0
    assert "RGB" not in caplog.text and tifffile.imread(out).max() > 5
    # Two channels in a plain TIFF: without --channel they read as two planes;
    # with it, the nuclear channel alone is segmented, as if it were its own file.
    two = np.stack([np.zeros_like(nuclei), nuclei])
    tifffile.imwrite(tmp_path / "two.tif", two)
    tifffile.imwrite(tmp_path / "alone.tif", nuclei)
    for name in ("two", "alone"):
        extra = ["--channel", "1", "--axes", "CYX"] if name == "two" else []
        code = main(
            [
                "segment",
                str(tmp_path / f"{name}.tif"),
                "-o",
                str(tmp_path / f"{name}_l.tif"),
                *cpu,
                *extra,
            ]
        )
        assert code == 0
    np.testing.assert_array_equal(
        tifffile.imread(tmp_path / "two_l.tif"), tifffile.imread(tmp_path / "alone_l.tif")
    )
    caplog.clear()
    args = ["segment", str(tmp_path / "two.tif"), "-o", str(tmp_path / "x.tif"), *cpu]
    assert main([*args, "--channel", "1"]) == 1
    assert "give its axes with a C, e.g. --axes CYX" in caplog.text
    assert main([*args, "--channel", "2", "--axes", "CYX"]) == 1
    assert "has 2 channels (0 to 1)" in caplog.text


def test_segment_says_when_the_object_size_could_not_be_measured(tmp_path, caplog):
    from conftest import disc_labels

    # Three nuclei 340 px across (the model's are 25): cut into pieces at
    # every scale the estimate tries, so no size can be told.
    truth = disc_labels((768, 768), [(200, 200), (200, 560), (560, 380)], radius=170)
    noise = np.random.default_rng(0).normal(0, 30, truth.shape)
    tifffile.imwrite(tmp_path / "huge.tif", ((truth > 0) * 900 + 300 + noise).astype(np.float32))
    out = tmp_path / "huge_labels.tif"
    with caplog.at_level("INFO"):
        assert (
            main(["segment", str(tmp_path / "huge.tif"), "-o", str(out), "--device", "cpu"]) == 0
        )
    assert "object size could not be measured" in caplog.text
    assert "--diameter PIXELS" in caplog.text
    caplog.clear()
    given = ["--device", "cpu", "--diameter", "340", "--overwrite"]
    assert main(["segment", str(tmp_path / "huge.tif"), "-o", str(out), *given]) == 0
    assert "could not be measured" not in caplog.text
    assert tifffile.imread(out).max() == 3  # at the given size, three whole nuclei


def test_segment_writes_the_object_table_of_a_zarr_output_too(tmp_path, caplog):
    import pandas as pd

    from napari_unet_tuner._sample_data import nuclei_sample
    from napari_unet_tuner.labels_files import open_labels_zarr

    tifffile.imwrite(tmp_path / "cells.tif", nuclei_sample()[0][0][:256, :256])
    out, table = tmp_path / "cells_labels.zarr", tmp_path / "counts.csv"
    args = ["segment", str(tmp_path / "cells.tif"), "-o", str(out), "--chunk-shape", "128", "128"]
    common = ["--device", "cpu", "--diameter", "none"]
    with caplog.at_level("INFO"):
        assert main([*args, *common, "--table", str(table)]) == 0
    objects = pd.read_csv(table)
    labels = open_labels_zarr(out)[:]
    assert sorted(objects["label"]) == list(range(1, labels.max() + 1))
    assert (tmp_path / "counts_possible_misses.csv").exists()
    assert not (tmp_path / "cells_objects.csv").exists()  # moved where it was asked for
    assert "objects table ->" in caplog.text


def test_runtime_option(tmp_path, image_file, tiny_checkpoint_file, caplog, capsys):
    pytest.importorskip("openvino")
    import logging

    base = ["segment", str(image_file), "--checkpoint", str(tiny_checkpoint_file)]
    base += ["--precision", "fp32", "--device", "cpu"]
    labels = {}
    for runtime in ("torch", "openvino"):
        out = tmp_path / f"{runtime}.tif"
        caplog.clear()
        with caplog.at_level(logging.INFO):
            assert main([*base, "-o", str(out), "--runtime", runtime]) == 0
        assert f"model runs on {runtime} fp32 (given)" in caplog.text
        labels[runtime] = tifffile.imread(out)
    assert np.mean((labels["torch"] > 0) == (labels["openvino"] > 0)) > 0.99
    with pytest.raises(SystemExit):
        main([*base, "-o", str(tmp_path / "x.tif"), "--runtime", "onnx"])
    assert "invalid choice: 'onnx'" in capsys.readouterr().err
