"""A 2D model segments a Z-stack into 3D objects (stack="3d")."""

from dataclasses import replace

import numpy as np
import pytest

from napari_unet_tuner import InferenceConfig, segment
from napari_unet_tuner.training.metrics import average_precision, matched_ious

from conftest import make_checkpoint, touching_spheres


def test_touching_spheres_at_anisotropy_3_become_one_object_each(disc_model):
    image, truth = touching_spheres(3)
    config = InferenceConfig(stack="3d", anisotropy=3.0)
    result = segment(image, disc_model, axes="ZYX", inference=config, return_probabilities=True)
    labels = result.labels
    assert labels.shape == truth.shape and result.probabilities.shape[1:] == truth.shape
    assert labels.max() == truth.max() == 5
    ious = matched_ious(truth, labels)
    assert (ious.max(axis=1) > 0.6).all(), ious.max(axis=1)
    # Progress says which orientation's planes are running, in order.
    from napari_unet_tuner.inference.pipeline import iter_segment

    views = [p.view for p in iter_segment(image, disc_model, axes="ZYX", inference=config)]
    assert [v for i, v in enumerate(views) if v and v not in views[:i]] == ["xy", "xz", "yz"]
    # Plane by plane the same spheres are dozens of objects.
    planes = segment(image, disc_model, axes="ZYX", inference=InferenceConfig(stack="planes"))
    assert planes.labels.max() > 3 * truth.max()


def test_a_time_series_of_stacks_keeps_its_time_points_apart(disc_model):
    image, truth = touching_spheres(3)
    series = np.stack([image, image[:, ::-1]])
    config = InferenceConfig(stack="3d", anisotropy=3.0)
    labels = segment(series, disc_model, axes="TZYX", inference=config).labels
    assert labels.shape == series.shape
    first, second = set(np.unique(labels[0])) - {0}, set(np.unique(labels[1])) - {0}
    assert len(first) == len(second) == 5 and not first & second


def test_stack_settings_are_checked():
    with pytest.raises(ValueError, match="stack must be"):
        InferenceConfig(stack="volume")
    with pytest.raises(ValueError, match="anisotropy"):
        InferenceConfig(anisotropy=0.0)
    sized = make_checkpoint(object_diameter=10.0)
    stack = np.zeros((4, 32, 32), np.float32)
    auto = segment(stack, sized, axes="ZYX", inference=InferenceConfig(stack="3d"))
    # An empty stack: no size and no Z step can be measured, and it runs as it is.
    assert auto.scale == 1.0 and auto.object_size.diameter is None
    assert auto.anisotropy == 1.0 and auto.z_step.anisotropy is None
    assert "whole objects" in auto.z_step.reason


def test_a_stack_of_small_nuclei_is_resized_in_3d_and_labelled_on_its_own_grid(disc_model):
    # Spheres 8 px across; the model segments about 14 px: twice the size in
    # all three axes (planes in XY, side views through the Z step), labels back
    # on the stack's own grid.
    image, truth = touching_spheres(2, radius=4)
    config = InferenceConfig(stack="3d", anisotropy=2.0, scale=2.0, device="cpu")
    result = segment(image, disc_model, axes="ZYX", inference=config)
    assert result.scale == 2.0 and result.labels.shape == truth.shape
    assert average_precision(truth, result.labels, 0.5) >= 0.8


def test_large_nuclei_are_shrunk_to_the_models_size_in_3d_not_in_2d(disc_model):
    # 20-px spheres for a model of ~14 px: 2D runs them as they are (up to
    # 1.6x), 3D shrinks them to the model's size (side views merge them
    # otherwise), labels back on the stack's own grid.
    # Deep enough (100 planes) that shrinking keeps its side views.
    zz, yy, xx = np.mgrid[:100, :90, :90]
    truth = np.zeros(zz.shape, np.int32)
    for i, (z, y, x) in enumerate([(30, 30, 25), (30, 30, 45), (65, 55, 45), (65, 55, 65)], 1):
        ball = (zz - z) ** 2 + (yy - y) ** 2 + (xx - x) ** 2 <= 10**2
        truth[ball & (truth == 0)] = i
    noise = np.random.default_rng(0).normal(0, 30, truth.shape)
    image = ((truth > 0) * 900 + 300 + noise).astype(np.float32)
    model_diameter = disc_model.card.object_diameter
    assert 1.2 < 20.0 / model_diameter < 1.6
    config = InferenceConfig(stack="planes", anisotropy=1.0, diameter=20.0, device="cpu")
    assert segment(image, disc_model, axes="ZYX", inference=config).scale == 1.0
    config = replace(config, stack="3d")
    result = segment(image, disc_model, axes="ZYX", inference=config)
    assert result.scale == pytest.approx(model_diameter / 20.0)
    assert result.labels.shape == truth.shape
    assert average_precision(truth, result.labels, 0.5) >= 0.8


@pytest.mark.parametrize("axis", [1, 2, 3])
def test_planes_in_one_batch_or_in_tiles_give_the_same(axis):
    from napari_unet_tuner.inference.stack_views import predict_planes

    volume = np.random.default_rng(0).random((1, 6, 40, 52), dtype=np.float32)
    plane_shape = tuple(s for i, s in enumerate(volume.shape[1:], start=1) if i != axis)
    results = []
    for tile in (plane_shape, (16, 16)):
        out = np.zeros((1, *volume.shape[1:]), np.float32)
        done = list(predict_planes(volume, axis, out, tile, lambda b: b * 2, InferenceConfig(), 1))
        assert done == sorted(done) and done[-1] >= volume.shape[axis]
        results.append(out)
    np.testing.assert_allclose(results[0], volume * 2, rtol=1e-6)
    np.testing.assert_allclose(results[1], volume * 2, rtol=2e-3)  # tiles blend in float16


@pytest.mark.parametrize("tiled", [False, True])
def test_side_views_resampled_plane_by_plane_sum_as_the_whole_volume_resampled(tiled):
    from napari_unet_tuner.inference.stack_views import predict_planes, resample_depth

    volume = np.random.default_rng(1).random((1, 6, 40, 52), dtype=np.float32)

    def model(batch):  # not linear: resampling before and after must both happen
        return batch**2

    for axis in (2, 3):
        plane = (15, volume.shape[5 - axis])
        tile = (16, 16) if tiled else plane
        per_plane = np.zeros((1, *volume.shape[1:]), np.float32)
        list(
            predict_planes(
                volume, axis, per_plane, tile, model, InferenceConfig(), 1, view_depth=15
            )
        )
        whole = resample_depth(model(resample_depth(volume, 15)), 6)
        np.testing.assert_allclose(per_plane, whole, rtol=3e-3 if tiled else 1e-5, atol=1e-4)


def test_a_zarr_run_gives_the_in_memory_3d_objects_band_by_band(tmp_path, disc_model, monkeypatch):
    from napari_unet_tuner import ChunkedConfig
    from napari_unet_tuner.inference import chunk_tasks, stack_chunked
    from napari_unet_tuner.inference.chunked import iter_segment_to_zarr, segment_to_zarr
    from napari_unet_tuner.labels_files import open_labels_zarr

    image, truth = touching_spheres(3)
    series = np.stack([image, image[:, ::-1]])
    config = InferenceConfig(stack="3d", anisotropy=3.0)
    in_memory = segment(series, disc_model, axes="TZYX", inference=config).labels
    # Small bands and chunks: several of each per view and volume, as on a large stack.
    monkeypatch.setattr(stack_chunked, "BAND_BYTES", 2**20)
    out = tmp_path / "stack.zarr"
    kwargs = dict(axes="TZYX", inference=config, chunked=ChunkedConfig(chunk_shape=(16, 40, 40)))
    run = iter_segment_to_zarr(series, out, disc_model, **kwargs)
    for progress in run:
        if progress.stage == "predict" and progress.done == 10:
            break
    run.close()  # interrupted between bands
    predicted = []
    real = chunk_tasks.predict_view_band
    monkeypatch.setattr(
        "napari_unet_tuner.inference.chunked.predict_view_band",
        lambda spec, band, arg: predicted.append(band.view) or real(spec, band, arg),
    )
    result = segment_to_zarr(series, out, disc_model, **kwargs)
    labels = open_labels_zarr(out)[:]
    bands = stack_chunked.StackViews.plan(
        stack_chunked.ImageReader(series, "TZYX", 3, 1),
        disc_model.model_config,
        config,
        (512, 512),
    ).bands(stack_chunked.ImageReader(series, "TZYX", 3, 1))
    assert {"xy", "xz", "yz"} == {b.view for b in bands} and len(bands) > 12
    assert len(predicted) == len(bands) - 10  # the finished bands were not run again
    assert result.objects == in_memory.max() == 10
    for t in range(2):
        ious = matched_ious(in_memory[t], labels[t])
        assert (ious.max(axis=1) > 0.99).all(), ious.max(axis=1)
    assert not set(np.unique(labels[0])) - {0} & set(np.unique(labels[1]))


def views_run(monkeypatch, image, model, anisotropy):
    """Segment a ZYX stack in 3D; return its labels and the axes its views' planes were across."""
    from napari_unet_tuner.inference import stack

    seen = []
    real = stack.predict_planes
    monkeypatch.setattr(
        stack, "predict_planes", lambda *a, **k: seen.append(a[1]) or real(*a, **k)
    )
    config = InferenceConfig(stack="3d", anisotropy=anisotropy)
    return segment(image, model, axes="ZYX", inference=config).labels, seen


def test_a_thin_stack_links_its_xy_objects_across_planes(disc_model, monkeypatch):
    # Six planes, said to be 2 pixels apart: 12 square pixels deep, under the
    # side views' minimum.
    image, truth = touching_spheres(8)
    labels, seen = views_run(monkeypatch, image, disc_model, 2.0)
    assert seen == [1]  # across Z only: the XY planes
    assert len(np.unique(labels)) - 1 == truth.max() == 5
    ious = matched_ious(truth, labels)
    assert (ious.max(axis=1) > 0.5).all(), ious.max(axis=1)


def test_side_views_need_a_stack_deeper_than_its_objects(disc_model, monkeypatch):
    from napari_unet_tuner.inference.stack_views import has_side_views

    # 16-px spheres in 16 planes, said to be 2.5 pixels apart: 40 deep, over 2
    # spheres deep, but under 48 square pixels, which was the rule before.
    image, truth = touching_spheres(3)
    labels, seen = views_run(monkeypatch, image, disc_model, 2.5)
    assert seen == [1, 2, 3]  # XY, XZ and YZ planes
    assert len(np.unique(labels)) - 1 == truth.max() == 5
    # Depth counts in objects (which resizing does not change), and pixels.
    assert has_side_views(48, 16.0) and has_side_views(48, None)
    assert not has_side_views(25, 70.0)  # CHO: 5 planes 4.95 apart, 70-px nuclei
    assert not has_side_views(12, None)  # under the minimum, objects aside
    # 15-px nuclei 4 pixels apart span under 4 planes: side views would be guesses.
    assert not has_side_views(60, 15.0, 4.0) and has_side_views(60, 15.0, 2.0)


def test_a_nucleus_cut_by_the_top_of_the_stack_is_no_new_object(disc_model, monkeypatch):
    from napari_unet_tuner.inference import stack
    from napari_unet_tuner.inference.stack import FRAGMENT_SHARE, drop_fragments

    image, truth = touching_spheres(1)
    # A sphere centred 5 planes above the stack: a cap 3 planes tall at its top,
    # an eighth of a whole sphere's volume.
    zz, yy, xx = np.mgrid[: image.shape[0], : image.shape[1], : image.shape[2]]
    cap = (zz + 5) ** 2 + (yy - 70) ** 2 + (xx - 20) ** 2 <= 8**2
    assert (truth == 1).sum() * 0.1 < cap.sum() < (truth == 1).sum() * FRAGMENT_SHARE
    image[cap] = 1200
    config = InferenceConfig(stack="3d", anisotropy=1.0)
    labels = segment(image, disc_model, axes="ZYX", inference=config).labels
    assert labels.max() == truth.max() == 5
    assert not labels[cap].any()
    # The model does see the cap: it is dropped for its size, not missed.
    monkeypatch.setattr(stack, "drop_fragments", lambda labels: labels)
    kept = segment(image, disc_model, axes="ZYX", inference=config).labels
    assert kept.max() == 6 and kept[cap].all()
    # Too few objects to tell a fragment from a small nucleus: nothing dropped.
    few = np.zeros((10, 40, 40), np.int32)
    few[2:8, 5:15, 5:15], few[4:6, 25:28, 25:28] = 1, 2
    assert drop_fragments(few.copy()).max() == 2


def test_stack_auto_is_3d_only_when_the_axes_are_known_to_hold_z():
    from napari_unet_tuner.config import resolve_stack

    auto = InferenceConfig()
    assert auto.stack == "auto"
    assert resolve_stack(auto, "ZYX").stack == "3d"
    assert resolve_stack(auto, "TZCYX").stack == "3d"
    assert resolve_stack(auto, "TYX").stack == "planes"  # a time series
    assert resolve_stack(auto, None).stack == "planes"  # guessed axes: may be time
    # 3D runs resize for a given object size too.
    assert resolve_stack(InferenceConfig(diameter=30.0), "ZYX").stack == "3d"
    # The Z step: given, from the file, or left to be measured (3D runs only).
    assert resolve_stack(InferenceConfig(anisotropy=2.0), "ZYX", 3.0).anisotropy == 2.0
    assert resolve_stack(auto, "ZYX", 3.0).anisotropy == 3.0
    assert resolve_stack(auto, "ZYX").anisotropy is None
    assert resolve_stack(auto, "TYX").anisotropy == 1.0
    assert resolve_stack(InferenceConfig(stack="planes"), "ZYX").stack == "planes"


def test_an_imagej_z_stack_becomes_3d_objects_by_default(tmp_path, disc_model, caplog):
    import logging

    import tifffile

    from napari_unet_tuner.cli import main
    from napari_unet_tuner.io import FileImage
    from napari_unet_tuner.model.saving import save_checkpoint

    image, truth = touching_spheres(3)
    path = tmp_path / "stack.tif"
    # ImageJ's hyperstack metadata: Z planes 3 um apart, 1 um pixels.
    tifffile.imwrite(
        path,
        image.astype(np.uint16),
        imagej=True,
        resolution=(1.0, 1.0),
        metadata={"axes": "ZYX", "spacing": 3.0, "unit": "um"},
    )
    file = FileImage(path)
    assert file.axes == "ZYX" and file.anisotropy == pytest.approx(3.0)
    labels = segment(file, disc_model).labels
    assert labels.max() == truth.max() == 5
    assert (matched_ious(truth, labels).max(axis=1) > 0.6).all()
    # The CLI says what it did and where the Z step came from.
    checkpoint = save_checkpoint(disc_model, tmp_path / "discs.safetensors")
    out = tmp_path / "labels.tif"
    with caplog.at_level(logging.INFO, logger="napari_unet_tuner.cli"):
        assert main(["segment", str(path), "-o", str(out), "--checkpoint", str(checkpoint)]) == 0
    assert "3D objects, Z step 3.00x the pixel size (from the file)" in caplog.text
    from_cli = tifffile.imread(out)  # the same objects (bf16 on other threads: a few pixels)
    assert from_cli.max() == 5 and (matched_ious(labels, from_cli).max(axis=1) > 0.95).all()
    # A stack whose axes are only guessed stays plane by plane, and the log says how to ask.
    plain = tmp_path / "plain.tif"
    tifffile.imwrite(plain, image.astype(np.uint16))
    with caplog.at_level(logging.INFO, logger="napari_unet_tuner.cli"):
        args = ["segment", str(plain), "-o", str(tmp_path / "p.tif"), "--checkpoint"]
        assert main([*args, str(checkpoint)]) == 0
    assert "--stack 3d for 3D objects" in caplog.text
    assert tifffile.imread(tmp_path / "p.tif").max() > 3 * truth.max()
