import numpy as np
import pytest

from napari_unet_tuner import TrainingConfig
from napari_unet_tuner.training import IGNORE
from napari_unet_tuner.training.data import Sample
from napari_unet_tuner.training.patches import PatchSampler, _augment
from napari_unet_tuner.training.validation import plan_validation

from conftest import disc_labels


def test_strong_augmentation_changes_intensities_but_never_the_targets():
    rng = np.random.default_rng(0)
    labels = disc_labels((49, 49), [(24, 24)], radius=10)
    image = ((labels > 0) * 0.8 + 0.1).astype(np.float32)[None]
    target = (labels > 0).astype(np.uint8)[None]
    strong = TrainingConfig(
        intensity_range=(0.3, 1.5), gamma_range=(0.6, 1.6), blur_max=1.5, noise_max=0.0
    )
    means, edges = [], []
    for _ in range(40):
        out, out_target = _augment(image, target, rng, strong)
        # Flips and rotations of a centred disc leave the target as it was.
        np.testing.assert_array_equal(out_target, target)
        assert out.dtype == np.float32 and out.shape == image.shape
        means.append(float(out[0][target[0] == 1].mean()))
        edges.append(float(np.abs(np.diff(out[0], axis=1)).max()))
    assert max(means) / min(means) > 2.5
    # Blur softens the disc's step edge in some patches, not in others.
    assert min(edges) < 0.6 * max(edges)


def test_mild_default_keeps_its_random_stream():
    mild = TrainingConfig()
    image = np.full((1, 16, 16), 0.5, np.float32)
    target = np.zeros((1, 16, 16), np.uint8)
    a, _ = _augment(image, target, np.random.default_rng(5), mild)
    b, _ = _augment(image, target, np.random.default_rng(5), mild)
    np.testing.assert_array_equal(a, b)
    # Scale 0.8-1.25, shift +-0.1, noise sigma <= 0.05: no gamma or blur by default.
    assert 0.5 * 0.8 - 0.1 - 0.25 < a.min() and a.max() < 0.5 * 1.25 + 0.1 + 0.25


@pytest.mark.parametrize(
    "kwargs",
    [{"intensity_range": (0.0, 1.0)}, {"gamma_range": (2.0, 1.0)}, {"blur_max": -1.0}],
)
def test_bad_augmentation_settings_are_refused(kwargs):
    with pytest.raises(ValueError, match="must be"):
        TrainingConfig(**kwargs)


def test_sampler_uses_augmentation_only_when_asked():
    labels = disc_labels((40, 40), [(20, 20)], radius=8)
    sample = Sample(
        image=np.ones((1, 40, 40), np.float32),
        targets=(labels > 0).astype(np.uint8),
        instances=labels,
        val_targets=np.full((40, 40), IGNORE, np.uint8),
    )
    plain = PatchSampler([sample], (16, 16), None, np.random.default_rng(0))
    images, _ = plain.batch(4)
    assert np.all(images == 1)
    jittered = PatchSampler([sample], (16, 16), TrainingConfig(), np.random.default_rng(0))
    images, _ = jittered.batch(4)
    assert not np.all(images == 1)


def test_validation_predicts_each_held_out_region_not_their_bounding_box():
    labels = disc_labels((512, 512), [(40, 40), (470, 470)], radius=10)
    val = np.full(labels.shape, IGNORE, np.uint8)
    val[20:60, 20:60] = 1
    val[450:490, 450:490] = 1
    sample = Sample(
        image=np.zeros((1, 512, 512), np.float32),
        targets=np.zeros((512, 512), np.uint8),
        instances=labels,
        val_targets=val,
    )
    boxes = [crop.box for crop in plan_validation([sample], np.random.default_rng(0)).crops]
    assert len(boxes) == 2
    for box in boxes:
        covered = val[box] != IGNORE
        assert covered.sum() == 40 * 40
        # Context of at least one margin (32 px) around the region, clipped to the image.
        assert all(sl.stop - sl.start <= 40 + 2 * 48 for sl in box)
    assert sum(np.prod([sl.stop - sl.start for sl in box]) for box in boxes) < 0.1 * 512 * 512
