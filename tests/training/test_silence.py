"""Background the user left alone is truth only where the starting model was sure of it."""

import numpy as np

from napari_unet_tuner.training.corrections import find_corrections
from napari_unet_tuner.training.counting import count_corrections
from napari_unet_tuner.training.data import Sample
from napari_unet_tuner.training.silence import find_uncertain_background
from napari_unet_tuner.training.targets import IGNORE, annotation_to_targets

from conftest import disc_labels


def junk_and_a_dim_nucleus():
    """A prediction with a nucleus (1) and junk (2); a dim nucleus at (50, 50) nearly found."""
    prediction = disc_labels((64, 64), [(14, 14), (14, 50)], radius=6)
    annotation = np.where(prediction == 2, 0, prediction)  # the junk deleted
    nearly = disc_labels((64, 64), [(50, 50)], radius=6) > 0
    foreground = np.where(prediction > 0, 0.95, 0.02)
    foreground[nearly] = 0.7  # under the model's threshold: not predicted, not painted
    sample = Sample(
        np.zeros((1, 64, 64), np.float32),
        annotation_to_targets(annotation, "corrections"),
        np.full((64, 64), IGNORE, np.uint8),
        annotation,
        corrections=find_corrections(annotation, "corrections", prediction),
    )
    return sample, foreground, nearly, prediction


def test_a_nearly_found_nucleus_left_unpainted_is_not_taught_as_background():
    sample, foreground, nearly, prediction = junk_and_a_dim_nucleus()
    left_out = find_uncertain_background([sample], lambda image: foreground, 0.5)
    assert left_out >= nearly.sum()
    assert (sample.targets[nearly] == IGNORE).all()
    assert not sample.corrections.known[nearly].any()
    # The deleted junk is still taught as background, however sure the model was
    # of it, and so is the background the model was sure of.
    junk = prediction == 2
    assert (sample.targets[junk] == 0).all()
    assert (sample.targets[:5, :5] == 0).all()
    # A model that now finds the dim nucleus is not charged a false object.
    found = np.where(nearly, 7, np.where(prediction == 1, 1, 0))
    assert count_corrections(found, sample.corrections).false == 0


def test_trusting_all_background_changes_nothing():
    sample, foreground, nearly, _ = junk_and_a_dim_nucleus()
    targets = sample.targets.copy()
    assert find_uncertain_background([sample], lambda image: foreground, 1.0) == 0
    assert np.array_equal(sample.targets, targets) and sample.corrections.known.all()
    # Without the nearly-found nucleus left out, a model finding it makes a false object.
    found = np.where(nearly, 7, np.where(sample.instances == 1, 1, 0))
    assert count_corrections(found, sample.corrections).false == 1
