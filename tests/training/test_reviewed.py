"""Only what the user reviewed is truth: the rest of the image is neither taught nor scored."""

from dataclasses import replace

import numpy as np
import pytest
import torch

from napari_unet_tuner import AnnotatedImage, InputError, TrainingConfig, fine_tune, segment
from napari_unet_tuner.inference.instances import labels_to_classes
from napari_unet_tuner.training.corrections import find_corrections
from napari_unet_tuner.training.counting import CorrectionCounts, count_corrections
from napari_unet_tuner.training.data import build_samples
from napari_unet_tuner.training.losses import UNREVIEWED, masked_loss
from napari_unet_tuner.training.patches import PatchSampler
from napari_unet_tuner.training.targets import IGNORE

from conftest import dim_disc_scene, disc_labels

ONE_STEP = TrainingConfig(
    max_seconds=60, max_epochs=1, steps_per_epoch=1, learning_rate=1e-9, device="cpu"
)


def around(labels: np.ndarray, ids, margin: int = 3) -> np.ndarray:
    """The pixels of objects ``ids`` and ``margin`` pixels around them."""
    from scipy import ndimage

    return ndimage.binary_dilation(np.isin(labels, ids), iterations=margin)


def test_objects_outside_the_review_are_neither_corrections_nor_unchanged():
    prediction = disc_labels((80, 80), [(15, 15), (15, 50), (50, 15), (50, 50)], radius=8)
    annotation = prediction.copy()
    annotation[annotation == 1] = 0  # deleted, reviewed
    annotation[annotation == 4] = 0  # deleted too, but outside the review: unknown
    reviewed = around(prediction, [1, 2])
    corrections = find_corrections(annotation, "corrections", prediction, reviewed)
    assert set(np.unique(corrections.deleted)) == {0, 1}
    assert set(np.unique(corrections.unchanged)) == {0, 2}
    assert not corrections.corrected.any()
    assert not corrections.emphasis[~reviewed].any()
    counts = count_corrections(prediction, corrections)
    assert (counts.to_fix, counts.unchanged, counts.false) == (1, 1, 0)
    # The same annotation without a review: object 4 counts as deleted, 3 as unchanged.
    everything = count_corrections(
        prediction, find_corrections(annotation, "corrections", prediction)
    )
    assert (everything.to_fix, everything.unchanged) == (2, 2)


def test_outside_the_review_the_prediction_is_a_weak_target_never_a_correction(disc_model):
    image, truth, dim = dim_disc_scene(0)
    prediction = segment(image, disc_model).labels
    reviewed = around(truth, [dim[0]])
    annotation = np.where(reviewed, truth, prediction)  # the user fixed the reviewed disc only
    annotated = AnnotatedImage(
        image, annotation, mode="corrections", prediction=prediction, reviewed=reviewed
    )
    samples, _ = build_samples([annotated], 2, 1, disc_model.card.normalization_config)
    (sample,) = samples
    np.testing.assert_array_equal(
        sample.targets[~reviewed], labels_to_classes(prediction)[~reviewed]
    )
    assert set(np.unique(sample.corrections.corrected)) == {0, dim[0]}
    assert not sample.corrections.known[~reviewed].any()
    # The loss weighs the unreviewed pixels at unreviewed_weight.
    sampler = PatchSampler(samples, (96, 96), None, np.random.default_rng(0))
    _, targets = sampler.batch(1)
    weights = targets[0, -1]
    assert (weights == UNREVIEWED).sum() == (~reviewed).sum()
    logits = torch.randn((1, 3, 96, 96), generator=torch.Generator().manual_seed(0))
    full = masked_loss(
        logits, torch.from_numpy(targets[:, 0]), emphasis=torch.from_numpy(weights[None])
    )
    unweighted = masked_loss(
        logits,
        torch.from_numpy(targets[:, 0]),
        emphasis=torch.from_numpy(weights[None]),
        unreviewed_weight=0.0,
    )
    # At weight 0 the unreviewed pixels count as unknown: the reviewed ones alone.
    reviewed_only = np.where(reviewed, targets[0, 0], IGNORE)[None]
    alone = masked_loss(
        logits,
        torch.from_numpy(reviewed_only),
        emphasis=torch.from_numpy(np.where(reviewed, weights, 0)[None]),
    )
    assert float(unweighted) == pytest.approx(float(alone), rel=1e-5)
    assert float(full) != pytest.approx(float(alone), rel=1e-3)


def test_fine_tuning_scores_only_what_was_reviewed(disc_model):
    image, truth, dim = dim_disc_scene(0)
    prediction = segment(image, disc_model).labels
    reviewed = around(truth, [dim[0], 1])
    result = fine_tune(
        [AnnotatedImage(image, truth, prediction=prediction, reviewed=reviewed)],
        disc_model,
        ONE_STEP,
    )
    counts = result.corrections_before
    assert counts.to_fix == 1  # one dim disc reviewed, not both
    assert counts.unchanged <= 1  # disc 1, if the model had it right


@pytest.mark.parametrize(
    ("reviewed", "match"),
    [
        (np.zeros((96, 96), bool), "nothing is marked as reviewed"),
        (np.ones((10, 10), bool), "reviewed mask has shape"),
    ],
)
def test_a_reviewed_mask_that_cannot_be_used_says_what_to_fix(disc_model, reviewed, match):
    image, truth, _ = dim_disc_scene(0)
    prediction = segment(image, disc_model).labels
    with pytest.raises(InputError, match=match):
        fine_tune(
            [AnnotatedImage(image, truth, prediction=prediction, reviewed=reviewed)],
            disc_model,
            ONE_STEP,
        )
    with pytest.raises(InputError, match="for corrections"):
        fine_tune(
            [AnnotatedImage(image, truth, mode="scribbles", reviewed=np.ones((96, 96), bool))],
            disc_model,
            replace(ONE_STEP, mode="scribbles"),
        )


def validated(counts: CorrectionCounts, ap50: float):
    """A validation with these counts and this held-out AP@0.5 (Dice alike)."""
    from napari_unet_tuner.config import InstanceConfig
    from napari_unet_tuner.training.validation import ValidationResult

    scores = {
        "annotation_score": counts.score(),
        "ap50": ap50,
        "dice": ap50,
        "loss": 0.1,
        "fit_loss": 0.1,
    }
    return ValidationResult(scores, counts, InstanceConfig())


def test_a_model_that_loses_the_held_out_objects_did_not_learn():
    # Seen in a simulated review of 10 HeLa objects: both reviewed junk
    # objects deleted by unlearning every nucleus, and "learned" said.
    import torch.nn

    from napari_unet_tuner.training.best_model import BestModel
    from napari_unet_tuner.training.verdict import judge

    def validation(deleted_gone: int, ap50: float):
        counts = CorrectionCounts(
            deleted=2, deleted_gone=deleted_gone, unchanged=8, unchanged_right=8
        )
        return validated(counts, ap50)

    before = validation(0, 1.0)
    model = torch.nn.Linear(1, 1)
    best = BestModel.start(before, before, model)
    collapsed = validation(2, 0.0)
    best.consider(collapsed, model, 20)
    assert best.best is before and best.candidate is collapsed
    verdict = judge(before, best.best, best.step, best.candidate, 30.0, 40)
    assert not verdict.learned and verdict.trade_off
    assert "held-out objects fell to AP50 0.00 (from 1.00)" in verdict.message
    # A small fall on a few held-out objects is not a collapse.
    slight = validation(2, 0.9)
    best.consider(slight, model, 40)
    assert best.best is slight
    assert judge(before, best.best, best.step, best.candidate, 30.0, 60).learned


def test_of_models_that_delete_all_the_junk_the_one_keeping_more_is_offered():
    # HeLa with junk, the 20 worst objects all junk deleted: the first model
    # deleted every object (AP 0.00 on other frames), the next only most of the
    # junk (0.63-0.70); both lose the unreviewed objects, so neither is kept,
    # and the run had stopped on the first ("learned": all reviewed right).
    import torch.nn

    from napari_unet_tuner.training.best_model import BestModel, stop_reason
    from napari_unet_tuner.training.verdict import judge

    def validation(deleted_gone: int, ap50: float):
        return validated(CorrectionCounts(deleted=20, deleted_gone=deleted_gone), ap50)

    before = validation(0, 0.9)
    model = torch.nn.Linear(1, 1)
    best = BestModel.start(before, before, model)
    everything_deleted, junk_deleted = validation(20, 0.0), validation(20, 0.15)
    best.consider(everything_deleted, model, 20)
    best.consider(junk_deleted, model, 40)
    assert best.best is before
    assert best.candidate is junk_deleted
    verdict = judge(before, best.best, best.step, best.candidate, 30.0, 40)
    assert verdict.trade_off and "also review a few objects it got right" in verdict.message
    # Every reviewed object right twice, but nothing kept: the run goes on.
    assert best.perfect_in_a_row == 2
    assert stop_reason(best, patience=6, stopped=False, out_of_time=False) is None
    # A model that also keeps the held-out objects is kept, and ends the run.
    best.consider(validation(20, 0.85), model, 60)
    assert best.step == 60
    assert stop_reason(best, patience=6, stopped=False, out_of_time=False) == "learned"


def test_parent_pull_keeps_the_weights_near_the_starting_model(disc_model):
    from napari_unet_tuner.training.optimizing import Optimizing

    image, truth, _ = dim_disc_scene(0)
    annotated = AnnotatedImage(image, truth, mode="corrections")
    samples, _ = build_samples([annotated], 2, 1, disc_model.card.normalization_config)

    def drift(pull: float) -> float:
        torch.manual_seed(0)
        model = disc_model.build_model()
        config = TrainingConfig(parent_pull=pull, device="cpu", mixed_precision=False)
        sampler = PatchSampler(samples, (64, 64), None, np.random.default_rng(0))
        optimizing = Optimizing(model, sampler, config, torch.device("cpu"), 4, True)
        optimizing.train_mode()
        for _ in range(15):
            optimizing.step(3e-3)
        return sum(
            float(((p.detach() - disc_model.state_dict[name]) ** 2).sum())
            for name, p in model.named_parameters()
        )

    free, pulled = drift(0.0), drift(1e4)
    assert pulled < 0.5 * free


def test_warmup_ramps_the_step_size_over_its_first_steps(disc_model):
    from napari_unet_tuner.training.optimizing import Optimizing

    image, truth, _ = dim_disc_scene(0)
    samples, _ = build_samples(
        [AnnotatedImage(image, truth, mode="corrections")],
        2,
        1,
        disc_model.card.normalization_config,
    )
    config = TrainingConfig(warmup_steps=4, device="cpu", mixed_precision=False)
    sampler = PatchSampler(samples, (32, 32), None, np.random.default_rng(0))
    optimizing = Optimizing(
        disc_model.build_model(), sampler, config, torch.device("cpu"), 2, True
    )
    rates = []
    for _ in range(6):
        optimizing.step(1e-3)
        rates.append(optimizing.optimizer.param_groups[0]["lr"])
    assert rates == pytest.approx([2.5e-4, 5e-4, 7.5e-4, 1e-3, 1e-3, 1e-3])
