"""A 2D model learns 3D objects from their XY, XZ and YZ planes, never from held-out pixels."""

import numpy as np
import pytest

from napari_unet_tuner import AnnotatedImage, InputError, TrainingConfig, iter_fine_tune
from napari_unet_tuner.config import NormalizationConfig
from napari_unet_tuner.training import patches
from napari_unet_tuner.training.data import build_samples
from napari_unet_tuner.training.side_views import side_view_samples
from napari_unet_tuner.training.targets import IGNORE

from conftest import make_checkpoint

ANISOTROPY = 3.0


def sphere_stack(depth=18, side=48, radius=9.0):
    """Two touching spheres, planes ``ANISOTROPY`` pixels apart: (image, 3D labels)."""
    z, y, x = np.mgrid[:depth, :side, :side].astype(float)
    z *= ANISOTROPY
    labels = np.zeros((depth, side, side), np.int32)
    for label, (cz, cy, cx) in enumerate([(27, 24, 15), (27, 24, 33)], start=1):
        inside = (z - cz) ** 2 + (y - cy) ** 2 + (x - cx) ** 2 <= radius**2
        labels[inside & (labels == 0)] = label
    rng = np.random.default_rng(0)
    image = (labels > 0) * 200.0 + rng.normal(50, 10, labels.shape)
    return image.astype(np.float32), labels


def stack_samples(**kwargs):
    image, labels = sphere_stack()
    item = AnnotatedImage(
        image, labels, "corrections", axes="ZYX", scale=1.0, anisotropy=ANISOTROPY, **kwargs
    )
    return build_samples([item], 2, 1, NormalizationConfig())


def test_side_views_show_3d_objects_at_square_pixels_and_keep_held_out_pixels_out():
    samples, _ = stack_samples(stack="3d")
    assert [s.stack_plane for s in samples] == [((), z) for z in range(18)]
    for sample in samples:  # as if the split held out the ten leftmost columns
        sample.targets[:, :10] = IGNORE
    views = side_view_samples(samples, {0: ANISOTROPY})
    # XZ planes (one per row), then YZ planes: none for the held-out columns.
    assert len(views) == 48 + (48 - 10)
    assert all(v.image.shape == (1, 54, 48) for v in views)  # Z resampled 18 -> 54
    xz = views[:48]
    for view in xz:
        assert (view.targets[:, :10] == IGNORE).all()
    # Through the spheres' centre, each cross-section is a disc again: as tall as wide.
    centre = xz[24]
    assert set(np.unique(centre.instances)) == {0, 1, 2}
    rows, cols = np.nonzero(centre.instances == 2)
    assert abs((rows.max() - rows.min()) - (cols.max() - cols.min())) <= 3
    assert (centre.targets[centre.instances == 2] != 0).all()  # interior or boundary


def test_planes_mode_shallow_stacks_and_other_images_make_no_side_views():
    samples, _ = stack_samples()
    assert side_view_samples(samples, {}) == []
    shallow, _ = stack_samples(stack="3d")
    assert side_view_samples(shallow[:15], {0: ANISOTROPY}) == []  # 45 pixels deep
    image, labels = sphere_stack()
    flat = AnnotatedImage(image[9], labels[9], "corrections", stack="3d")
    with pytest.raises(InputError, match="stack='3d' is for Z-stacks"):
        build_samples([flat], 2, 1, NormalizationConfig())
    halved = AnnotatedImage(*sphere_stack(), "corrections", axes="ZYX", scale=0.5, stack="3d")
    with pytest.raises(InputError, match="3D objects are learned at scale 1"):
        build_samples([halved], 2, 1, NormalizationConfig())


def test_a_3d_annotation_fine_tunes_a_2d_model_on_all_three_views(monkeypatch):
    seen = []

    class Recording(patches.PatchSampler):
        def __init__(self, samples, *args, **kwargs):
            seen.append([s.targets.shape for s in samples])
            super().__init__(samples, *args, **kwargs)

    monkeypatch.setattr("napari_unet_tuner.training.preparation.PatchSampler", Recording)
    image, labels = sphere_stack()
    item = AnnotatedImage(
        image, labels, "corrections", axes="ZYX", stack="3d", anisotropy=ANISOTROPY
    )
    config = TrainingConfig(
        max_seconds=60, max_epochs=1, steps_per_epoch=2, patch_shape=(32, 32), device="cpu"
    )
    run = iter_fine_tune([item], make_checkpoint(), config=config)
    for _ in run:
        pass
    (shapes,) = seen
    assert shapes.count((48, 48)) == 18  # the XY planes
    assert shapes.count((54, 48)) >= 48  # and side views at square pixels
