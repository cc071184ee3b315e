"""The Z step of a stack whose file does not say it, measured on its objects."""

import logging

import numpy as np
import pytest
from scipy import ndimage

from napari_unet_tuner import InferenceConfig, segment
from napari_unet_tuner.inference.z_step import measure_z_step
from napari_unet_tuner.training.metrics import average_precision

from conftest import touching_spheres


def spheres_every(step: int, radius: float = 6.0) -> np.ndarray:
    """Exact labels of separate spheres on a grid, sampled every ``step`` planes."""
    zz, yy, xx = np.mgrid[:64, :96, :96]
    labels = np.zeros(zz.shape, np.int32)
    centers = [(z, y, x) for z in (20, 40) for y in (16, 48, 80) for x in (16, 48, 80)]
    for i, (z, y, x) in enumerate(centers, start=1):
        labels[(zz - z) ** 2 + (yy - y) ** 2 + (xx - x) ** 2 <= radius**2] = i
    return labels[::step]


@pytest.mark.parametrize("step", [1, 2, 3])
def test_the_step_is_measured_on_exact_spheres(step):
    estimate = measure_z_step(spheres_every(step))
    assert estimate.objects == 18
    assert estimate.anisotropy == pytest.approx(step, rel=0.15)


def test_the_step_measured_on_resized_planes_is_in_the_images_pixels():
    labels = spheres_every(2)
    # The same planes twice as large in XY, as a run at scale 2 labels them.
    enlarged = labels.repeat(2, axis=1).repeat(2, axis=2)
    assert measure_z_step(enlarged, scale=2.0).anisotropy == pytest.approx(2.0, rel=0.15)


def test_flat_or_cut_objects_say_the_step_cannot_be_told():
    flat = measure_z_step(spheres_every(6))  # 12-px spheres in two planes
    assert flat.anisotropy is None and "planes" in flat.reason
    cut = spheres_every(1)[18:42]  # every sphere touches the first or last plane
    few = measure_z_step(cut)
    assert few.anisotropy is None and few.objects == 0 and "whole objects" in few.reason


@pytest.mark.parametrize("step", [2, 3])
def test_a_stack_without_a_z_step_is_measured_and_segmented_with_it(disc_model, step):
    image, truth = touching_spheres(step)
    result = segment(image, disc_model, axes="ZYX", inference=InferenceConfig(stack="3d"))
    assert result.z_step is not None and result.z_step.objects == truth.max()
    assert result.anisotropy == result.z_step.anisotropy == pytest.approx(step, rel=0.25)
    assert average_precision(truth, result.labels, 0.5) == 1.0
    # A given step is used as given, and nothing is measured.
    given = segment(
        image, disc_model, axes="ZYX", inference=InferenceConfig(stack="3d", anisotropy=1.5)
    )
    assert given.z_step is None and given.anisotropy == 1.5


def test_the_cli_says_the_measured_step(tmp_path, disc_model, caplog):
    import tifffile

    from napari_unet_tuner.cli import main
    from napari_unet_tuner.model.saving import save_checkpoint

    image, _ = touching_spheres(2)
    path = tmp_path / "stack.tif"
    tifffile.imwrite(path, image, metadata={"axes": "ZYX"})  # no Z spacing
    model = save_checkpoint(disc_model, tmp_path / "m.safetensors")
    out = str(tmp_path / "l.tif")
    with caplog.at_level(logging.INFO, logger="napari_unet_tuner"):
        assert main(["segment", str(path), "-o", out, "--checkpoint", str(model)]) == 0
    assert "Z step not in the file: measured on its nuclei" in caplog.text
    assert "Z step measured on 5 nuclei" in caplog.text


def test_a_3d_run_holds_one_float16_sum_and_watersheds_a_block_at_a_time(monkeypatch):
    import tracemalloc

    from napari_unet_tuner.inference import instances

    from conftest import make_checkpoint

    # Blocks far smaller than the stack, as a 60 x 1024 x 1024 stack's are.
    monkeypatch.setitem(instances._BLOCK_SHAPE, 3, (16, 128, 128))
    # Smoothed noise: blobs the size of small nuclei. Noise of independent
    # voxels makes a seed every 30 voxels, whose boxes (`find_objects`, for
    # splitting seeds at higher levels) then cost more than the seeds.
    noise = np.random.default_rng(0).random((48, 256, 256), dtype=np.float32)
    image = ndimage.gaussian_filter(noise, 2)
    image = (image - image.min()) / (image.max() - image.min())

    def predictor(batch):  # the model's cost aside: what the pipeline holds
        x = np.clip(batch[:, :1], 0, 1)
        return np.concatenate([1 - x, x * 0.8, x * 0.2], axis=1)

    config = InferenceConfig(stack="3d", anisotropy=1.0, diameter=None, object_table=False)
    tracemalloc.start()
    try:
        segment(image, make_checkpoint(), axes="ZYX", predictor=predictor, inference=config)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    # 29 bytes per voxel: the normalized stack (4), the float16 sum of the
    # three views (6), labels and seeds (8) and a block's watershed. Before,
    # float32 sums of the XY and of the side views and a resampled copy: 51.
    # Splitting seeds at higher levels holds one seed's box beside them (33
    # here, where one blob of noise spans the stack).
    assert peak / image.size < 36


def test_the_object_size_of_a_stack_is_measured_on_its_fullest_planes(disc_model):
    # Two layers of 14-px spheres; the middle plane lies between them, empty.
    zz, yy, xx = np.mgrid[:44, :96, :96]
    truth = np.zeros(zz.shape, np.int32)
    centers = [(z, y, x) for z in (10, 34) for y in (16, 48, 80) for x in (16, 48, 80)]
    for i, (z, y, x) in enumerate(centers, start=1):
        truth[(zz - z) ** 2 + (yy - y) ** 2 + (xx - x) ** 2 <= 7**2] = i
    noise = np.random.default_rng(0).normal(0, 30, truth.shape)
    image = ((truth > 0) * 900 + 300 + noise).astype(np.float32)
    assert not truth[22].any()
    config = InferenceConfig(stack="3d", anisotropy=1.0)
    result = segment(image, disc_model, axes="ZYX", inference=config)
    assert result.object_size.diameter == pytest.approx(14.0, rel=0.15)
    assert average_precision(truth, result.labels, 0.5) == 1.0


def test_3d_seeds_are_stricter_unless_the_caller_sets_them():
    from napari_unet_tuner import InstanceConfig
    from napari_unet_tuner.inference.seed_levels import CORE_SHARE
    from napari_unet_tuner.inference.stack import STACK_SEED_THRESHOLD, stack_instances

    card = InstanceConfig(seed_threshold=0.4)
    assert stack_instances(card).seed_threshold == STACK_SEED_THRESHOLD
    assert stack_instances(InstanceConfig(seed_threshold=0.7)).seed_threshold == 0.7
    # Seeds of touching nuclei are split at higher levels, unless the card says otherwise.
    assert card.core_share is None and stack_instances(card).core_share == CORE_SHARE
    assert stack_instances(InstanceConfig(core_share=0.4)).core_share == 0.4


def test_a_callers_instance_settings_still_split_touching_nuclei_in_3d():
    from napari_unet_tuner import InstanceConfig
    from napari_unet_tuner.inference.seed_levels import CORE_SHARE
    from napari_unet_tuner.inference.stack import run_instances

    card = InstanceConfig(seed_threshold=0.4)
    # As the CLI builds them when only --min-size is given.
    given = InstanceConfig(seed_threshold=0.4, min_size=40)
    assert run_instances(given, card, in_3d=True) == InstanceConfig(
        seed_threshold=0.4, min_size=40, core_share=CORE_SHARE
    )
    assert run_instances(given, card, in_3d=False) is given  # 2D: off
    off = InstanceConfig(core_share=0.0)
    assert run_instances(off, card, in_3d=True) is off  # turned off by the caller
    assert run_instances(None, card, in_3d=False) is card
