"""Fine-tuning learns what the user corrected, keeps what it learned, and says so."""

from dataclasses import replace

import numpy as np
import pytest
import torch

from napari_unet_tuner import (
    AnnotatedImage,
    InputError,
    TrainingConfig,
    fine_tune,
    segment,
)
from napari_unet_tuner.training.corrections import find_corrections
from napari_unet_tuner.training.counting import CorrectionCounts, count_corrections
from napari_unet_tuner.training.data import Sample
from napari_unet_tuner.training.metrics import match_counts, matched_ious, pooled_precision
from napari_unet_tuner.training.patches import PatchSampler
from napari_unet_tuner.training.split import MANY_CORRECTIONS, many_corrections, split_validation
from napari_unet_tuner.training.targets import IGNORE, annotation_to_targets
from napari_unet_tuner.training.validation import ValidationResult

from conftest import counts_scoring, dim_disc_scene, disc_labels, script_validations

# Epochs of exactly steps_per_epoch steps: not lengthened by the time validations
# take, which varies with the machine's load.
QUICK = TrainingConfig(max_seconds=60, steps_per_epoch=10, balance_validation=False, device="cpu")


def right(labels, truth, ids):
    """How many of the true objects ``ids`` a predicted object matches at IoU >= 0.5."""
    ious = matched_ious(np.where(np.isin(truth, ids), truth, 0), labels)
    return int(np.count_nonzero(ious.max(axis=1) >= 0.5)) if ious.shape[1] else 0


def test_objects_are_sorted_by_what_the_user_did():
    prediction = disc_labels((80, 80), [(15, 15), (15, 50), (50, 15), (50, 50)], radius=8)
    prediction[prediction == 4] = 0
    prediction[60:75, 60:75] = 9  # a false object on background
    annotation = prediction.copy()
    annotation[annotation == 9] = 0  # deleted
    annotation[disc_labels((80, 80), [(50, 50)], radius=8) > 0] = 4  # added (missed)
    annotation[(annotation == 2) & (np.arange(80)[None, :] >= 50)] = 5  # split in two
    corrections = find_corrections(annotation, "corrections", prediction)
    assert set(np.unique(corrections.corrected)) == {0, 2, 4, 5}
    assert set(np.unique(corrections.deleted)) == {0, 9}
    assert set(np.unique(corrections.unchanged)) == {0, 1, 3}
    assert corrections.emphasis[60:75, 60:75].all() and not corrections.emphasis[0:5, 70:].any()
    # The annotation itself reproduces everything; the prediction nothing that changed.
    perfect = count_corrections(annotation, corrections)
    assert (perfect.fixed, perfect.to_fix, perfect.unchanged_right, perfect.unchanged) == (
        4,
        4,
        2,
        2,
    )
    assert perfect.score() == 1.0
    # Every object counts the same: 1 of 4 corrections and 2 of 2 unchanged is 3 of 6.
    assert count_corrections(prediction, corrections).score() == 3 / 6
    parent = count_corrections(prediction, corrections)
    # The merged disc matches the larger half of its split at IoU > 0.5 (AP@0.5's
    # rule), not the smaller; the added and the deleted objects are wrong.
    assert (parent.fixed, parent.unchanged_right) == (1, 2)
    assert parent.describe() == (
        "corrected objects right 1/3 · deleted objects gone 0/1 · unchanged objects right 2/2"
    )
    # A new object on background counts against, as a false positive does in AP.
    extra = annotation.copy()
    extra[2:8, 70:78] = 99
    counted = count_corrections(extra, corrections)
    assert counted.false == 1 and counted.score() == 6 / 7
    assert counted.describe().endswith("new false objects 1")
    # The arrays the user painted are not modified.
    assert (annotation == 9).sum() == 0 and (prediction == 9).sum() == 15 * 15


def test_a_small_correction_is_drawn_as_often_as_a_large_one():
    # A large painted nucleus and a small one, both missed by the prediction.
    annotation = disc_labels((128, 128), [(40, 40), (110, 110)], radius=5)
    annotation[annotation == 1] = 0
    annotation[20:60, 20:60] = 1
    corrections = find_corrections(annotation, "corrections", np.zeros_like(annotation))
    # The image marks the corner of the small one, to tell which patches show it.
    image = np.zeros((1, 128, 128), np.float32)
    image[0, 95:, 95:] = 1.0
    sample = Sample(
        image=image,
        targets=annotation_to_targets(annotation, "corrections"),
        instances=annotation,
        val_targets=np.full(annotation.shape, IGNORE, np.uint8),
        corrections=corrections,
    )
    sampler = PatchSampler([sample], (16, 16), None, np.random.default_rng(0))
    images, _ = sampler.batch(600)
    on_small = (images[:, 0] == 1).any(axis=(1, 2)).mean()
    # Half the patches are drawn on the corrections, half of those on the small
    # one; by pixels it would be 1 in 25 of them.
    assert 0.2 < on_small < 0.4, on_small


def test_validation_ap_is_pooled_over_regions():
    # One region with its single object found, one with 4 missed: per-region
    # AP 1.0 and 0.0 average to 0.5, but 1 of 5 objects were found with 4 missed.
    found = match_counts(np.array([[1]]), np.array([[1]]))
    missed = match_counts(
        disc_labels((40, 40), [(8, 8), (8, 30), (30, 8), (30, 30)], 5), 0 * np.ones((40, 40), int)
    )
    pooled = pooled_precision(*(a + b for a, b in zip(found, missed, strict=True)))
    assert pooled == pytest.approx(1 / 5)


def test_held_out_objects_are_whole_and_the_same_in_every_plane():
    # Six planes of the same nuclei (a stack or a time series).
    centers = [(int(y), int(x)) for y in range(10, 120, 22) for x in range(10, 120, 22)]
    plane = disc_labels((128, 128), centers, radius=7)
    samples = []
    for _ in range(6):
        targets = annotation_to_targets(plane, "corrections")
        samples.append(
            Sample(
                image=np.zeros((1, 128, 128), np.float32),
                targets=targets,
                val_targets=np.full_like(targets, IGNORE),
                instances=plane.copy(),
                source=0,
                corrections=find_corrections(plane, "corrections"),
            )
        )
    assert split_validation(samples, 0.2, np.random.default_rng(0))
    held = [s.val_targets != IGNORE for s in samples]
    assert all(np.array_equal(held[0], h) for h in held[1:])  # same region in every plane
    held_ids = np.unique(plane[held[0]])
    held_ids = held_ids[held_ids > 0]
    assert 0 < len(held_ids) < len(centers) // 2
    for sample in samples:
        whole = np.isin(plane, held_ids)
        assert np.all(sample.targets[whole] == IGNORE)  # no held-out object is trained on
        assert not np.isin(sample.corrections.unchanged, held_ids).any()


def corrected_sample(annotation, prediction) -> Sample:
    """A training sample of a blank image whose annotation corrects ``prediction``."""
    targets = annotation_to_targets(annotation, "corrections")
    return Sample(
        image=np.zeros((1, *annotation.shape), np.float32),
        targets=targets,
        val_targets=np.full_like(targets, IGNORE),
        instances=annotation,
        corrections=find_corrections(annotation, "corrections", prediction),
    )


def test_corrected_objects_are_never_held_out():
    centers = [(int(y), int(x)) for y in range(10, 120, 22) for x in range(10, 120, 22)]
    annotation = disc_labels((128, 128), centers, radius=7)
    prediction = annotation.copy()
    prediction[prediction == 1] = 0  # every object but one left as predicted
    sample = corrected_sample(annotation, prediction)
    targets = sample.targets
    for seed in range(5):
        trial = replace(sample, targets=targets.copy(), val_targets=sample.val_targets.copy())
        split_validation([trial], 0.3, np.random.default_rng(seed))
        assert np.all(trial.targets[annotation == 1] != IGNORE)


def test_a_large_labelling_holds_out_corrected_objects_and_ranks_by_them():
    # A new kind of image labelled whole: the parent found none of 289 objects.
    centers = [(int(y), int(x)) for y in range(8, 256, 15) for x in range(8, 256, 15)]
    annotation = disc_labels((256, 256), centers, radius=6)
    sample = corrected_sample(annotation, np.zeros_like(annotation))
    assert many_corrections([sample]) and len(centers) >= MANY_CORRECTIONS
    assert split_validation([sample], 0.2, np.random.default_rng(0), spare_corrections=True)
    held_ids = np.setdiff1d(np.unique(annotation[sample.val_targets != IGNORE]), [0])
    assert 0 < len(held_ids) <= len(centers) // 2
    whole = np.isin(annotation, held_ids)
    assert np.all(sample.targets[whole] == IGNORE)
    # Held-out objects are not scored as reproduced: they were never trained on.
    assert not np.isin(sample.corrections.corrected, held_ids).any()
    assert not sample.corrections.emphasis[whole].any()
    # The model kept generalizes to them first, then reproduces the rest.
    scores = {"loss": 0.1, "dice": 0.9, "iou": 0.8, "fit_loss": 0.1}
    memorized = ValidationResult({**scores, "annotation_score": 1.0, "ap50": 0.6}, None, None)
    general = ValidationResult({**scores, "annotation_score": 0.95, "ap50": 0.8}, None, None)
    assert memorized.rank() > general.rank()  # a review: what the user corrected first
    memorized, general = (replace(r, generalization_first=True) for r in (memorized, general))
    assert general.rank() > memorized.rank() and general.improves_on(memorized)


def test_among_models_that_reproduce_as_much_the_tighter_fit_is_kept():
    scores = {
        "loss": np.nan,
        "dice": np.nan,
        "iou": np.nan,
        "ap50": np.nan,
        "annotation_score": 0.9,
    }
    early = ValidationResult({**scores, "fit_loss": 0.4}, None, None)
    later = ValidationResult({**scores, "fit_loss": 0.2}, None, None)
    assert later.rank() > early.rank()
    # ... but a tighter fit alone is not something learned.
    assert not later.improves_on(early)
    assert ValidationResult(
        {**scores, "annotation_score": 0.95, "fit_loss": 0.4}, None, None
    ).improves_on(later)


def test_a_deliberate_change_changes_the_output_there(disc_model, tmp_path):
    image, truth, dim = dim_disc_scene(0)
    parent = segment(image, disc_model).labels
    assert right(parent, truth, dim) < len(dim)  # the model misses the dim discs
    out = tmp_path / "child.safetensors"
    result = fine_tune(
        [AnnotatedImage(image, truth, prediction=parent)], disc_model, QUICK, output=out
    )
    assert result.learned and out.exists()
    child = segment(image, result.checkpoint).labels
    assert right(child, truth, dim) == len(dim)
    bright = [i for i in range(1, 7)]
    assert right(child, truth, bright) == right(parent, truth, bright)
    assert result.message.startswith("learned in ")
    assert f"corrected objects right {result.corrections_before.corrected_right}/" in (
        result.message
    )
    run = result.checkpoint.card.training[-1]
    assert run["corrections_after"]["corrected_right"] == run["corrections_after"]["corrected"]
    assert run["corrections_before"]["corrected_right"] < run["corrections_before"]["corrected"]
    assert run["seconds"] <= QUICK.max_seconds + 5  # the budget covers the whole run


def test_a_run_that_learns_nothing_adds_no_version(disc_model, tmp_path):
    image, truth, _ = dim_disc_scene(0)
    parent = segment(image, disc_model).labels
    one_step = replace(QUICK, max_epochs=1, steps_per_epoch=1, learning_rate=1e-9)
    out = tmp_path / "child.safetensors"
    result = fine_tune(
        [AnnotatedImage(image, truth, prediction=parent)], disc_model, one_step, output=out
    )
    assert not result.learned and not out.exists() and result.path is None
    assert result.checkpoint is disc_model
    assert result.message.startswith("nothing was learned")
    # An annotation that is the prediction itself is refused before training.
    with pytest.raises(InputError, match="nothing to learn"):
        fine_tune([AnnotatedImage(image, parent, prediction=parent)], disc_model, one_step)


def test_a_second_fine_tune_keeps_what_the_first_learned(disc_model):
    image1, truth1, dim = dim_disc_scene(0)
    predicted1 = segment(image1, disc_model).labels
    first = fine_tune([AnnotatedImage(image1, truth1, prediction=predicted1)], disc_model, QUICK)
    assert right(segment(image1, first.checkpoint).labels, truth1, dim) == len(dim)
    image2, truth2, dim2 = dim_disc_scene(1)
    predicted2 = segment(image2, first.checkpoint).labels
    both = [
        AnnotatedImage(image1, truth1, prediction=predicted1),
        AnnotatedImage(image2, truth2, prediction=predicted2),
    ]
    second = fine_tune(both, first.checkpoint, replace(QUICK, seed=1))
    assert right(segment(image1, second.checkpoint).labels, truth1, dim) == len(dim)
    assert right(segment(image2, second.checkpoint).labels, truth2, dim2) == len(dim2)


def test_the_best_validation_is_kept_and_patience_stops_the_run(disc_model, monkeypatch):
    image, truth, _ = dim_disc_scene(0)
    parent = segment(image, disc_model).labels
    scores = [0.1, 0.5, 0.9, 0.3, 0.2, 0.95]
    seen = script_validations(monkeypatch, [counts_scoring(x) for x in scores])
    config = replace(QUICK, steps_per_epoch=3, patience=2, tune_instances=False)
    result = fine_tune([AnnotatedImage(image, truth, prediction=parent)], disc_model, config)
    assert result.stop_reason == "early stopping"
    assert len(seen) == 5 and result.history[-1].step == 12  # validations at 0, 3, 6, 9, 12
    for key, value in result.checkpoint.state_dict.items():
        assert torch.equal(value, seen[2][key].cpu()), key  # the 0.9 one
    assert result.scores_after["annotation_score"] == 0.9
    assert result.corrections_after == counts_scoring(0.9)


def test_a_model_still_fitting_its_annotation_is_not_stopped_early(disc_model, monkeypatch):
    image, truth, _ = dim_disc_scene(0)
    parent = segment(image, disc_model).labels
    # Reproduction saturates at the third validation; the fit keeps improving.
    objectives = [0.1, 0.9, 1.0] + [0.99] * 7
    fits = [1.0, 0.8, 0.6, 0.5, 0.4, 0.3, 0.3, 0.3, 0.3, 0.3]
    seen = script_validations(monkeypatch, [counts_scoring(x) for x in objectives], fits)
    config = replace(QUICK, steps_per_epoch=2, patience=2, max_epochs=9, tune_instances=False)
    result = fine_tune([AnnotatedImage(image, truth, prediction=parent)], disc_model, config)
    # Without the fit, patience 2 would stop after the fifth validation; it stops
    # two validations after the fit stopped improving (the sixth).
    assert result.stop_reason == "early stopping" and len(seen) == 8
    assert result.scores_after["annotation_score"] == 1.0  # the model kept is still the best


def test_a_review_still_missing_corrections_uses_its_whole_budget(disc_model, monkeypatch):
    image, truth, _ = dim_disc_scene(0)
    parent = segment(image, disc_model).labels
    # The score rises once, then falls; corrections stay missing throughout.
    counts = [CorrectionCounts(corrected=5, corrected_right=1, unchanged=10, unchanged_right=10)]
    counts += [CorrectionCounts(corrected=5, corrected_right=3, unchanged=10, unchanged_right=10)]
    counts += [
        CorrectionCounts(corrected=5, corrected_right=2, unchanged=10, unchanged_right=10)
    ] * 5
    seen = script_validations(monkeypatch, counts)
    config = replace(QUICK, steps_per_epoch=2, patience=2, max_epochs=6, tune_instances=False)
    result = fine_tune([AnnotatedImage(image, truth, prediction=parent)], disc_model, config)
    # Patience 2 would have stopped after the fourth validation.
    assert len(seen) == 7 and result.stop_reason == "epochs"


def test_no_early_stop_before_anything_was_learned(disc_model, monkeypatch):
    image, truth, _ = dim_disc_scene(0)
    parent = segment(image, disc_model).labels
    seen = script_validations(monkeypatch, [counts_scoring(x) for x in [0.5] + [0.1] * 6])
    config = replace(QUICK, steps_per_epoch=2, patience=2, max_epochs=5, tune_instances=False)
    result = fine_tune([AnnotatedImage(image, truth, prediction=parent)], disc_model, config)
    # Patience 2 would have stopped after 3 validations; the whole run is tried.
    assert len(seen) == 6 and result.stop_reason == "epochs"
    assert not result.learned and result.checkpoint is disc_model
