"""Nothing lost: outputs never destroy inputs, one writer per output, a trained model is kept."""

import os
import shutil
import signal
import subprocess
import sys
import time

import numpy as np
import pytest
import tifffile
import torch

from napari_unet_tuner import TrainingConfig, fine_tune, load_checkpoint
from napari_unet_tuner.cli import main
from napari_unet_tuner.config import ChunkedConfig, InferenceConfig, NormalizationConfig
from napari_unet_tuner.errors import ConfigError, InputError
from napari_unet_tuner.inference.chunked import iter_segment_to_zarr
from napari_unet_tuner.inference.chunked_output import WORK_DIR
from napari_unet_tuner.inference.image import ImageReader
from napari_unet_tuner.io import STALE_TEMPORARY_SECONDS, FileImage, write_tiff_atomic
from napari_unet_tuner.model.saving import save_checkpoint, save_checkpoint_somewhere
from napari_unet_tuner.outputs import OutputLock
from napari_unet_tuner.training.targets import annotation_to_instances

from conftest import disc_labels

zarr = pytest.importorskip("zarr")


@pytest.fixture
def image_file(tmp_path):
    path = tmp_path / "cells.tif"
    tifffile.imwrite(path, (np.random.default_rng(0).random((48, 40)) * 4000).astype(np.uint16))
    return path


@pytest.fixture
def zarr_image(tmp_path):
    path = tmp_path / "cells.zarr"
    array = zarr.open(str(path), mode="w", shape=(96, 96), chunks=(48, 48), dtype="uint16")
    array[:] = (np.random.default_rng(1).random((96, 96)) * 4000).astype(np.uint16)
    return path


def _tree(path):
    """Every file under ``path`` (or the file itself) with its bytes."""
    if path.is_file():
        return {path.name: path.read_bytes()}
    return {
        str(p.relative_to(path)): p.read_bytes() for p in sorted(path.rglob("*")) if p.is_file()
    }


def _link(path):
    link = path.with_name("link.tif")
    link.symlink_to(path)
    return link


def _segment(args, checkpoint):
    return main(["segment", *map(str, args), "--checkpoint", str(checkpoint), "--device", "cpu"])


@pytest.mark.parametrize(
    "output",
    [
        lambda image: image,  # the image itself
        lambda image: image.parent / "." / image.name,  # spelled otherwise
        lambda image: _link(image),  # a link to it
    ],
)
def test_an_output_onto_or_around_the_input_is_refused_before_anything_is_touched(
    image_file, tiny_checkpoint_file, output, caplog
):
    before = _tree(image_file)
    target = output(image_file)
    args = [image_file, "-o", target, "--overwrite", "--format", "tif"]
    assert _segment(args, tiny_checkpoint_file) == 1
    assert "would destroy the input" in caplog.text
    assert _tree(image_file) == before


def test_a_zarr_output_onto_or_inside_its_input_folder_is_refused(
    zarr_image, tiny_checkpoint_file, caplog, monkeypatch
):
    before = _tree(zarr_image)
    monkeypatch.chdir(zarr_image.parent)
    for target in (zarr_image, "cells.zarr", zarr_image / "labels.zarr"):
        assert _segment([zarr_image, "-o", target, "--overwrite"], tiny_checkpoint_file) == 1
    assert caplog.text.count("would destroy the input") == 3
    assert _tree(zarr_image) == before
    # An input inside the output folder: replacing the output would delete it.
    inner = zarr_image / "raw.tif"
    tifffile.imwrite(inner, np.ones((32, 32), np.uint16))
    assert _segment([inner, "-o", zarr_image, "--overwrite"], tiny_checkpoint_file) == 1
    assert "contains the input" in caplog.text and inner.exists()
    with pytest.raises(InputError, match="is the input"):
        for _ in iter_segment_to_zarr(FileImage(zarr_image), "cells.zarr", tiny_checkpoint_file):
            pass


def test_a_second_writer_of_the_same_zarr_output_is_refused(
    zarr_image, tiny_checkpoint_file, tmp_path
):
    out = tmp_path / "labels.zarr"
    # Another live process holds the output.
    holder = subprocess.Popen(
        [
            sys.executable,
            "-c",
            "import sys, time; from napari_unet_tuner.outputs import OutputLock\n"
            f"with OutputLock({str(out)!r}):\n"
            "    print('locked', flush=True); time.sleep(60)",
        ],
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert holder.stdout.readline().strip() == "locked"
        with pytest.raises(InputError, match=f"process {holder.pid}"):
            for _ in iter_segment_to_zarr(FileImage(zarr_image), out, tiny_checkpoint_file):
                pass
        assert not out.exists()
    finally:
        holder.kill()
        holder.wait()
    # Killed: its lock is stale and taken over; the run completes and unlocks.
    assert (tmp_path / "labels.zarr.lock").exists()
    for _ in iter_segment_to_zarr(FileImage(zarr_image), out, tiny_checkpoint_file):
        pass
    assert not (tmp_path / "labels.zarr.lock").exists()
    with OutputLock(out):  # free again
        pass


_RACER = """
import os, sys
from napari_unet_tuner.errors import InputError
from napari_unet_tuner.outputs import OutputLock
out, inside, rounds = sys.argv[1], sys.argv[2], int(sys.argv[3])
held = clashes = 0
for _ in range(rounds):
    try:
        with OutputLock(out):
            held += 1
            try:
                fd = os.open(inside, os.O_CREAT | os.O_EXCL | os.O_WRONLY)
            except FileExistsError:
                clashes += 1
                continue
            os.close(fd)
            os.unlink(inside)
    except InputError:
        pass
print(held, clashes)
"""


def test_two_runs_racing_for_an_output_never_both_hold_it(tmp_path):
    # Before, a run that read the lock between its creation and its pid being
    # written took it as stale and took it over (100 of 200 rounds).
    out, inside = tmp_path / "labels.zarr", tmp_path / "inside"
    racers = [
        subprocess.Popen(
            [sys.executable, "-c", _RACER, str(out), str(inside), "300"],
            stdout=subprocess.PIPE,
            text=True,
        )
        for _ in range(3)
    ]
    results = [tuple(map(int, r.communicate(timeout=120)[0].split())) for r in racers]
    assert sum(held for held, _ in results) > 0
    assert [clashes for _, clashes in results] == [0, 0, 0]
    assert not (tmp_path / "labels.zarr.lock").exists()


def test_a_link_to_an_output_is_the_same_output_for_the_lock(tmp_path):
    real = tmp_path / "real.zarr"
    real.mkdir()
    link = tmp_path / "link.zarr"
    link.symlink_to(real)
    with OutputLock(real):
        with pytest.raises(InputError, match="being written by another run"):
            with OutputLock(link):
                pass
    with OutputLock(link):  # free again
        pass


def test_a_different_image_is_not_resumed_even_without_normalization(
    tmp_path, tiny_checkpoint_file
):
    out = tmp_path / "labels.zarr"
    rng = np.random.default_rng(2)
    first, second = (rng.integers(0, 4000, (96, 96)).astype(np.uint16) for _ in range(2))
    none = NormalizationConfig(kind="none")
    run = iter_segment_to_zarr(first, out, tiny_checkpoint_file, normalization=none)
    next(run)
    run.close()  # interrupted after the first progress report
    assert (out / WORK_DIR / "manifest.json").exists()
    with pytest.raises(FileExistsError, match="other settings or input"):
        for _ in iter_segment_to_zarr(second, out, tiny_checkpoint_file, normalization=none):
            pass
    # Another batch size is another run too.
    with pytest.raises(FileExistsError, match="other settings or input"):
        for _ in iter_segment_to_zarr(
            first,
            out,
            tiny_checkpoint_file,
            normalization=none,
            inference=InferenceConfig(batch_size=3),
        ):
            pass


_SMALL_CHUNKS = ChunkedConfig(chunk_shape=(48, 48))


def _interrupt_after_chunks(run, chunks):
    """Advance a chunked run until ``chunks`` chunks are segmented, then stop it."""
    for progress in run:
        if progress.stage == "segment" and progress.done >= chunks:
            break
    run.close()


def _run_to_end(run):
    try:
        while True:
            next(run)
    except StopIteration as stop:
        return stop.value


def test_a_relative_path_resumes_the_same_file(zarr_image, tiny_checkpoint_file, monkeypatch):
    out = zarr_image.parent / "labels.zarr"
    run = iter_segment_to_zarr(
        FileImage(zarr_image), out, tiny_checkpoint_file, chunked=_SMALL_CHUNKS
    )
    _interrupt_after_chunks(run, 2)
    monkeypatch.chdir(zarr_image.parent)
    result = _run_to_end(
        iter_segment_to_zarr(
            FileImage("cells.zarr"), "labels.zarr", tiny_checkpoint_file, chunked=_SMALL_CHUNKS
        )
    )
    assert result.chunks == 4 and result.resumed == 2
    assert not (out / WORK_DIR).exists()


def test_an_input_edited_where_the_statistics_sample_does_not_look_is_not_resumed(
    zarr_image, tiny_checkpoint_file
):
    out = zarr_image.parent / "labels.zarr"
    # A sparse statistics sample (every 4th row and column), as a large image has.
    sparse = NormalizationConfig(max_samples=1000)
    settings = {"normalization": sparse, "chunked": _SMALL_CHUNKS}
    run = iter_segment_to_zarr(FileImage(zarr_image), out, tiny_checkpoint_file, **settings)
    _interrupt_after_chunks(run, 2)
    pixels = zarr.open(str(zarr_image), mode="r+")
    pixels[1::2] = pixels[1::2] // 4  # every odd row darkened: not one sampled pixel changed
    with pytest.raises(InputError, match="input that has changed since.*chunk 0.*--overwrite"):
        _run_to_end(
            iter_segment_to_zarr(FileImage(zarr_image), out, tiny_checkpoint_file, **settings)
        )
    assert (out / WORK_DIR).exists()  # the interrupted run is left as it was
    result = _run_to_end(
        iter_segment_to_zarr(
            FileImage(zarr_image), out, tiny_checkpoint_file, overwrite=True, **settings
        )
    )
    assert result.resumed == 0


def test_a_taken_model_name_is_refused_before_training(
    tmp_path, image_file, tiny_checkpoint_file, caplog
):
    labels = tmp_path / "labels.tif"
    tifffile.imwrite(labels, disc_labels((48, 40), [(16, 14), (30, 26)], 7))
    taken = tmp_path / "m1.safetensors"
    taken.write_bytes(b"precious")
    parent_copy = tmp_path / "copy.safetensors"
    shutil.copy(tiny_checkpoint_file, parent_copy)
    for output, message in ((tmp_path / "m1", "exists"), (parent_copy, "parent of this model")):
        t0 = time.perf_counter()
        code = main(
            [
                "finetune",
                str(image_file),
                str(labels),
                "-o",
                str(output),
                "--checkpoint",
                str(tiny_checkpoint_file),
                "--seconds",
                "60",
                "--device",
                "cpu",
            ]
        )
        assert code == 1 and message in caplog.text
        assert time.perf_counter() - t0 < 10  # refused, not trained for a minute
    assert taken.read_bytes() == b"precious"
    assert load_checkpoint(parent_copy).sha256 == load_checkpoint(tiny_checkpoint_file).sha256


def test_a_model_that_cannot_be_written_where_asked_is_saved_beside_it(tmp_path, tiny_checkpoint):
    blocker = tmp_path / "not_a_folder"
    blocker.write_text("a file where a folder was expected")
    written, note = save_checkpoint_somewhere(tiny_checkpoint, blocker / "model.safetensors")
    assert written is not None and written.exists()
    assert str(written) in note and "could not write" in note
    assert load_checkpoint(written).sha256 is not None


def test_a_full_disk_leaves_no_partial_file_and_says_what_to_do(tmp_path, tiny_checkpoint):
    # A file-size limit stands in for a full disk (writes fail with EFBIG).
    target = tmp_path / "model.safetensors"
    save_checkpoint(tiny_checkpoint, tmp_path / "source.safetensors")
    script = (
        "import resource, signal, sys\n"
        "signal.signal(signal.SIGXFSZ, signal.SIG_IGN)\n"
        "from napari_unet_tuner import load_checkpoint\n"
        "from napari_unet_tuner.model.saving import save_checkpoint_somewhere\n"
        f"ckpt = load_checkpoint({str(tmp_path / 'source.safetensors')!r})\n"
        "resource.setrlimit(resource.RLIMIT_FSIZE, (4096, 4096))\n"
        f"written, note = save_checkpoint_somewhere(ckpt, {str(target)!r})\n"
        "print(written); print(note)\n"
    )
    env = {**os.environ, "TMPDIR": str(tmp_path / "tmp")}
    (tmp_path / "tmp").mkdir()
    done = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, env=env, timeout=120
    )
    assert done.returncode == 0, done.stderr
    written, note = done.stdout.splitlines()[:2]
    assert written == "None" and "free some disk space" in note
    leftovers = [p.name for p in tmp_path.rglob("*") if p.is_file()]
    assert leftovers == ["source.safetensors"]


def test_a_killed_tiff_write_leaves_nothing_under_the_name_and_is_cleaned_up(tmp_path):
    target = tmp_path / "labels.tif"
    script = (
        "import numpy as np, os, signal, tifffile\n"
        "from napari_unet_tuner import io\n"
        "real = tifffile.imwrite\n"
        "def killed(path, *a, **k):\n"
        "    open(path, 'wb').write(b'half a tiff')\n"
        "    os.kill(os.getpid(), signal.SIGKILL)\n"
        "tifffile.imwrite = killed\n"
        f"io.write_tiff_atomic({str(target)!r}, np.ones((8, 8), np.int32))\n"
    )
    done = subprocess.run([sys.executable, "-c", script], timeout=120)
    assert done.returncode == -9
    assert not target.exists()
    (stale,) = tmp_path.glob(".labels.tif.*.tmp")
    old = time.time() - STALE_TEMPORARY_SECONDS - 1
    os.utime(stale, (old, old))
    write_tiff_atomic(target, np.ones((8, 8), np.int32))
    assert not stale.exists() and tifffile.imread(target).sum() == 64


def test_a_checkpoint_save_killed_mid_way_leaves_the_old_file_whole(tmp_path, tiny_checkpoint):
    target = save_checkpoint(tiny_checkpoint, tmp_path / "model.safetensors")
    before = target.read_bytes()
    script = (
        "import os, signal\n"
        "import safetensors.torch\n"
        "from napari_unet_tuner import load_checkpoint\n"
        "from napari_unet_tuner.model.saving import save_checkpoint\n"
        "def killed(tensors, path, metadata=None):\n"
        "    open(path, 'wb').write(b'half a checkpoint')\n"
        "    os.kill(os.getpid(), signal.SIGKILL)\n"
        "safetensors.torch.save_file = killed\n"
        f"ckpt = load_checkpoint({str(target)!r})\n"
        f"save_checkpoint(ckpt, {str(target)!r}, overwrite=True)\n"
    )
    done = subprocess.run([sys.executable, "-c", script], timeout=120)
    assert done.returncode == -9
    assert target.read_bytes() == before  # the old model, whole
    assert load_checkpoint(target).sha256 is not None


def _start_segmenting(image, out, checkpoint, extra, **popen):
    """``unet-tuner segment`` in a process of its own, to be killed or interrupted."""
    command = [sys.executable, "-m", "napari_unet_tuner.cli", "segment", str(image), "-o"]
    command += [str(out), "--checkpoint", str(checkpoint), "--device", "cpu", *extra]
    return subprocess.Popen(command, text=True, **popen)


def _wait_for_chunks(out, count, seconds=120):
    """Wait until ``count`` chunks of a zarr run are segmented; return their folder."""
    segmented = out / WORK_DIR / "segmented"
    deadline = time.time() + seconds
    while time.time() < deadline and len(list(segmented.glob("*.npz"))) < count:
        time.sleep(0.05)
    return segmented


def test_a_zarr_run_killed_mid_way_resumes_to_the_same_labels(tmp_path, tiny_checkpoint_file):
    image = tmp_path / "big.tif"
    rng = np.random.default_rng(3)
    # 64 chunks: the run is still going when it is killed.
    tifffile.imwrite(image, (rng.random((512, 512)) * 4000).astype(np.uint16))
    common = ["--chunk-shape", "64", "64", "--tile-shape", "32", "32"]
    reference = tmp_path / "reference.zarr"
    assert _segment([image, "-o", reference, *common], tiny_checkpoint_file) == 0
    out = tmp_path / "killed.zarr"
    run = _start_segmenting(image, out, tiny_checkpoint_file, common, stderr=subprocess.DEVNULL)
    segmented = _wait_for_chunks(out, 3)
    run.kill()
    run.wait()
    done = len(list(segmented.glob("*.npz")))
    assert 3 <= done < 64, "the run must be killed part-way"
    assert _segment([image, "-o", out, *common], tiny_checkpoint_file) == 0
    np.testing.assert_array_equal(
        zarr.open(str(out), mode="r")[:], zarr.open(str(reference), mode="r")[:]
    )


def test_sigint_says_a_zarr_output_can_resume(tmp_path, tiny_checkpoint_file):
    image = tmp_path / "big.tif"
    # 256 chunks: the run is still going when the signal comes.
    tifffile.imwrite(image, (np.random.default_rng(4).random((1024, 1024)) * 4000).astype("u2"))
    out = tmp_path / "labels.zarr"
    run = _start_segmenting(
        image,
        out,
        tiny_checkpoint_file,
        ["--chunk-shape", "64", "64"],
        stderr=subprocess.PIPE,
        # A job started in the background inherits SIGINT ignored; a user's shell does not.
        preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL),
    )
    _wait_for_chunks(out, 1)
    run.send_signal(signal.SIGINT)
    _, stderr = run.communicate(timeout=120)
    assert run.returncode == 130
    assert "resumes when the same command is run again" in stderr
    assert "no partial output was written" not in stderr


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["--device", "cuda"], "no CUDA GPU"),
        (["--overlap", "0.9"], "overlap must be"),
        (["--tile-shape", "0", "0"], "tile_shape must be positive"),
        (["--batch-size", "0"], "batch_size must be"),
    ],
)
def test_bad_settings_are_one_line_not_a_traceback(
    tmp_path, image_file, tiny_checkpoint_file, argv, message, caplog
):
    if message == "no CUDA GPU" and torch.cuda.is_available():
        pytest.skip("this machine has CUDA")
    code = main(
        ["segment", str(image_file), "-o", str(tmp_path / "o.tif"), "--checkpoint"]
        + [str(tiny_checkpoint_file), *argv]
    )
    assert code == 1
    assert f"error: {message}" in caplog.text or message in caplog.text
    assert "Traceback" not in caplog.text
    assert not (tmp_path / "o.tif").exists()


def test_a_truncated_tiff_in_a_batch_is_reported_and_skipped(
    tmp_path, image_file, tiny_checkpoint_file, caplog
):
    broken = tmp_path / "broken.tif"
    tifffile.imwrite(broken, np.ones((256, 256), np.uint16))
    broken.write_bytes(broken.read_bytes()[:4000])  # a valid header, half the pixels
    out = tmp_path / "out"
    assert _segment([broken, image_file, "-o", out], tiny_checkpoint_file) == 1
    assert "1 of 2 input(s) failed" in caplog.text
    assert (out / "cells_labels.tif").exists() and not (out / "broken_labels.tif").exists()


def test_a_nan_or_infinite_time_budget_is_refused():
    for seconds in (float("nan"), float("inf"), 0):
        with pytest.raises(ConfigError, match="max_seconds"):
            TrainingConfig(max_seconds=seconds)


def test_label_ids_beyond_int32_stay_distinct_objects():
    annotation = np.zeros((8, 8), np.int64)
    annotation[0:2, 0:2], annotation[4:6, 4:6] = 1, 2**32 + 1  # int32 would make both 1
    instances = annotation_to_instances(annotation, "corrections")
    assert len(np.unique(instances[instances > 0])) == 2 and instances.min() == 0
    scribbles = np.zeros((8, 8), np.uint32)
    scribbles[0, :] = 1  # background stroke
    scribbles[2:4, 2:4], scribbles[5:7, 5:7] = 2, 2**31 + 7  # int32 would make it negative
    objects = annotation_to_instances(scribbles, "scribbles")
    assert sorted(np.unique(objects)) == [0, 1, 2] and objects[0].max() == 0


def test_wide_integer_and_float64_images_normalize_to_finite_contrast():
    rng = np.random.default_rng(5)
    pattern = rng.integers(0, 1000, (64, 64))
    for image in (pattern.astype(np.int64) + 2**40, pattern.astype(np.float64) * 1e300):
        reader = ImageReader(image, "YX", 2, 1, NormalizationConfig())
        tile = reader.read((), (slice(0, 64), slice(0, 64)))
        assert np.isfinite(tile).all() and tile.dtype == np.float32
        # The pattern survives: float32 alone would make the offset image constant.
        assert np.corrcoef(tile.ravel(), pattern.ravel())[0, 1] > 0.99


def test_an_empty_image_is_refused_with_a_message():
    with pytest.raises(InputError, match="empty"):
        ImageReader(np.zeros((0, 64), np.uint8), "YX", 2, 1)


def test_fine_tune_refuses_a_taken_output_before_it_trains(tmp_path, tiny_checkpoint):
    image = np.random.default_rng(6).random((48, 48)).astype(np.float32)
    labels = disc_labels((48, 48), [(16, 16), (32, 32)], 7)
    taken = tmp_path / "taken.safetensors"
    taken.write_bytes(b"keep me")
    t0 = time.perf_counter()
    with pytest.raises(FileExistsError, match="exists"):
        fine_tune([(image, labels)], tiny_checkpoint, TrainingConfig(max_seconds=60), output=taken)
    assert time.perf_counter() - t0 < 10 and taken.read_bytes() == b"keep me"


def test_an_unsaved_model_is_not_resumed_by_another_unsaved_model(tmp_path):
    # The widget's fine-tuned versions have no file, so no file digest.
    from conftest import make_checkpoint

    out = tmp_path / "labels.zarr"
    image = np.random.default_rng(3).integers(0, 4000, (96, 96)).astype(np.uint16)
    first, other = make_checkpoint(seed=0), make_checkpoint(seed=1)
    assert first.sha256 is None and other.sha256 is None
    assert first.weights_sha256() != other.weights_sha256()
    assert first.weights_sha256() == make_checkpoint(seed=0).weights_sha256()
    run = iter_segment_to_zarr(image, out, first)
    next(run)
    run.close()
    with pytest.raises(FileExistsError, match="other settings or input"):
        for _ in iter_segment_to_zarr(image, out, other):
            pass
    for _ in iter_segment_to_zarr(image, out, make_checkpoint(seed=0)):  # the same weights
        pass
    assert not (out / WORK_DIR).exists()


def test_ctrl_c_during_finetune_keeps_the_best_model_as_stop_does(tmp_path, disc_model):
    from napari_unet_tuner.model.saving import save_checkpoint

    from conftest import dim_disc_scene

    image, truth, _ = dim_disc_scene(0)
    tifffile.imwrite(tmp_path / "cells.tif", image)
    tifffile.imwrite(tmp_path / "fixed.tif", truth.astype(np.uint16))
    start = save_checkpoint(disc_model, tmp_path / "start.safetensors")
    out = tmp_path / "tuned.safetensors"
    command = [sys.executable, "-m", "napari_unet_tuner.cli", "finetune"]
    command += [str(tmp_path / "cells.tif"), str(tmp_path / "fixed.tif"), "-o", str(out)]
    command += ["--checkpoint", str(start), "--seconds", "600", "--device", "cpu"]
    run = subprocess.Popen(
        command,
        stderr=subprocess.PIPE,
        text=True,
        preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL),
    )
    # Training has started once the bar shows a step.
    seen = ""
    while "step=" not in seen:
        char = run.stderr.read(1)
        assert char, seen
        seen += char
    run.send_signal(signal.SIGINT)
    _, rest = run.communicate(timeout=120)
    stderr = seen + rest
    assert "stopping after this step" in stderr
    assert "interrupted: no model was written" not in stderr
    # The run ended with its verdict, as after the widget's Stop.
    assert "learned" in stderr
    assert run.returncode in (0, 1)
    assert out.exists() == (run.returncode == 0)
