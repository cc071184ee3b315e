"""Seeds of touching 3D objects split at higher levels of the interior probability."""

import numpy as np

from napari_unet_tuner import InstanceConfig
from napari_unet_tuner.inference.instances import probabilities_to_labels, seed_markers
from napari_unet_tuner.inference.seed_levels import split_seeds_at_levels
from napari_unet_tuner.training.metrics import matched_ious

SHAPE = (24, 32, 48)


def _balls(centers, radius=8):
    zz, yy, xx = np.indices(SHAPE)
    truth = np.zeros(SHAPE, np.int32)
    for i, (z, y, x) in enumerate(centers, start=1):
        truth[((zz - z) ** 2 + (yy - y) ** 2 + (xx - x) ** 2 <= radius**2) & (truth == 0)] = i
    return truth


def _probabilities(interior: np.ndarray) -> np.ndarray:
    """boundary3 probabilities whose foreground is where ``interior`` is set."""
    background = np.where(interior > 0, 0.02, 0.98)
    return np.stack([background, interior, 1 - background - interior]).astype(np.float32)


def test_touching_nuclei_whose_interior_only_dips_at_their_contact_are_two_objects():
    # As the three views of a stack see two touching nuclei: the averaged
    # interior falls towards their shared face but stays above the seed threshold.
    truth = _balls([(12, 16, 16), (12, 16, 31)])
    xx = np.indices(SHAPE)[2]
    interior = np.where(truth > 0, 0.95 - 0.4 * np.exp(-((xx - 23.5) ** 2) / 4), 0.0)
    probabilities = _probabilities(interior)

    assert probabilities_to_labels(probabilities, config=InstanceConfig()).max() == 1
    labels = probabilities_to_labels(probabilities, config=InstanceConfig(core_share=0.2))
    assert labels.max() == 2
    assert (matched_ious(truth, labels).max(axis=1) > 0.9).all()


def test_a_nucleus_with_a_small_bright_crumb_stays_one():
    # A real nucleus's interior is uneven: at a high level a small island
    # (far less than a fifth of a seed) parts from the body. It is no nucleus.
    truth = _balls([(12, 16, 24)], radius=10)
    zz, yy, xx = np.indices(SHAPE)
    crumb = (zz - 12) ** 2 + (yy - 16) ** 2 + (xx - 31) ** 2 <= 2**2
    ring = ((zz - 12) ** 2 + (yy - 16) ** 2 + (xx - 31) ** 2 <= 4**2) & ~crumb
    interior = np.where(truth > 0, 0.95, 0.0)
    interior[ring & (truth > 0)] = 0.85
    probabilities = _probabilities(interior)
    config = InstanceConfig(core_share=0.2)

    assert seed_markers(probabilities, "boundary3", config).max() == 1
    assert probabilities_to_labels(probabilities, config=config).max() == 1


def test_split_seeds_keep_their_numbering_and_others_are_untouched():
    truth = _balls([(12, 16, 10), (12, 16, 25), (12, 16, 40)], radius=6)
    xx = np.indices(SHAPE)[2]
    # The first two touch (x = 17.5) and dip to 0.65 there; the third stands apart.
    interior = np.where(truth > 0, 0.95 - 0.3 * np.exp(-((xx - 17.5) ** 2) / 4), 0.0)
    interior[truth == 3] = 0.95
    markers = (truth > 0).astype(np.int32)
    markers[truth == 3] = 2
    before = markers.copy()

    out = split_seeds_at_levels(markers, interior, core_share=0.2)

    assert out is markers
    assert sorted(np.unique(out)) == [0, 1, 2, 3]
    assert (out[before == 2] == 2).all()  # the lone seed kept its label and voxels
    # The touching pair is now two seeds, each within one of the balls.
    for label in (1, 3):
        assert len(np.unique(truth[out == label])) == 1
    assert np.unique(truth[out == 1]) != np.unique(truth[out == 3])
