"""The verdict tells the truth: the counts of the progress, trade-offs named, nothing capped."""

from dataclasses import replace

import numpy as np
import pytest
import tifffile

from napari_unet_tuner import AnnotatedImage, TrainingConfig, fine_tune, iter_fine_tune, segment
from napari_unet_tuner.cli import main
from napari_unet_tuner.inference.instances import labels_to_classes
from napari_unet_tuner.training.corrections import find_corrections
from napari_unet_tuner.training.counting import CorrectionCounts, count_corrections
from napari_unet_tuner.training.data import Sample
from napari_unet_tuner.training.split import split_validation
from napari_unet_tuner.training.targets import IGNORE
from napari_unet_tuner.training.verdict import compare

from conftest import dim_disc_scene, disc_labels, script_validations

# Epochs of exactly steps_per_epoch steps: not lengthened by the time validations
# take, which varies with the machine's load.
QUICK = TrainingConfig(max_seconds=60, steps_per_epoch=10, balance_validation=False, device="cpu")


def records_and_result(run):
    records = []
    try:
        while True:
            records.append(next(run))
    except StopIteration as done:
        return records, done.value


def test_a_shrunk_object_is_corrected_not_deleted():
    # The model's over-grown blob, redrawn by the user as the nucleus inside it.
    blob = disc_labels((64, 64), [(32, 32)], radius=16)
    nucleus = disc_labels((64, 64), [(32, 32)], radius=7)
    corrections = find_corrections(nucleus, "corrections", blob)
    assert set(np.unique(corrections.corrected)) == {0, 1}
    assert not corrections.deleted.any()
    # The annotation itself gets everything right; the blob gets nothing right.
    assert count_corrections(nucleus, corrections).fixed == 1
    assert count_corrections(blob, corrections).fixed == 0


def test_a_real_object_on_a_deleted_one_is_not_its_remnant():
    prediction = np.zeros((64, 64), np.int32)
    prediction[10:40, 10:40] = 1  # junk, deleted by the user
    annotation = disc_labels((64, 64), [(25, 42)], radius=7)  # a nucleus, partly on the junk
    corrections = find_corrections(annotation, "corrections", prediction)
    assert set(np.unique(corrections.deleted)) == {0, 1}
    # A new model gets the nucleus right, shifted onto the junk's place a little,
    # so that most of it lies on the deleted object: the junk is gone all the same.
    moved = disc_labels((64, 64), [(25, 39)], radius=7)
    assert (moved & (prediction > 0)).sum() > 0.5 * (moved > 0).sum()
    counts = count_corrections(moved, corrections)
    assert (counts.corrected_right, counts.deleted_gone) == (1, 1)


def test_a_trade_off_is_named_and_the_model_offered_not_reported(disc_model, monkeypatch):
    image, truth, _ = dim_disc_scene(0)
    parent = segment(image, disc_model).labels
    start = CorrectionCounts(corrected=6, corrected_right=0, deleted=2, unchanged=19)
    start = replace(start, unchanged_right=19)
    # More corrections right, but 7 unchanged objects lost: a lower score.
    traded = CorrectionCounts(
        corrected=6, corrected_right=5, deleted=2, deleted_gone=1, unchanged=19, unchanged_right=12
    )
    assert traded.score() < start.score()
    script_validations(monkeypatch, [start, traded, traded])
    config = replace(QUICK, steps_per_epoch=2, max_epochs=2, tune_instances=False)
    run = iter_fine_tune([AnnotatedImage(image, truth, prediction=parent)], disc_model, config)
    records, result = records_and_result(run)
    assert not result.learned and result.checkpoint is disc_model
    assert result.message.startswith(
        "nothing was learned: a model got 6 of 8 corrections right (0 before) but lost 7 of 19 "
        "unchanged objects; kept the starting model"
    )
    # What is reported is the model kept, the starting one: in the result and in
    # the last progress record alike. The discarded model is offered apart.
    assert result.corrections_after == result.corrections_before == start
    assert result.scores_after == result.scores_before
    assert records[-1].kind == "final" and records[-1].corrections == start
    assert result.candidate is not None and result.candidate_corrections == traded
    assert result.candidate.card.training[-1]["kept_anyway"] is True


def test_finetune_keep_anyway_writes_the_offered_model(disc_model, tmp_path, caplog):
    from napari_unet_tuner import save_checkpoint

    image, truth, _ = dim_disc_scene(0)
    parent = segment(image, disc_model).labels
    paths = [tmp_path / name for name in ("img.tif", "ann.tif", "pred.tif")]
    for path, array in zip(paths, (image, truth, parent), strict=True):
        tifffile.imwrite(path, array)
    model = save_checkpoint(disc_model, tmp_path / "disc.safetensors")
    start = CorrectionCounts(corrected=2, unchanged=6, unchanged_right=6)
    traded = CorrectionCounts(corrected=2, corrected_right=2, unchanged=6, unchanged_right=3)
    args = ["finetune", str(paths[0]), str(paths[1]), "--prediction", str(paths[2])]
    args += ["--checkpoint", str(model), "--seconds", "5", "--device", "cpu"]
    out = tmp_path / "child.safetensors"
    with pytest.MonkeyPatch.context() as patch:
        script_validations(patch, [start] + [traded] * 500)
        assert main([*args, "-o", str(out)]) == 1 and not out.exists()
    assert "lost 3 of 6 unchanged objects" in caplog.text and "--keep-anyway" in caplog.text
    with pytest.MonkeyPatch.context() as patch:
        script_validations(patch, [start] + [traded] * 500)
        assert main([*args, "-o", str(out), "--keep-anyway"]) == 0 and out.exists()
    assert "kept anyway" in caplog.text


def test_the_verdict_is_the_last_progress_of_the_kept_model(disc_model):
    image, truth, _ = dim_disc_scene(0)
    parent = segment(image, disc_model).labels
    run = iter_fine_tune([AnnotatedImage(image, truth, prediction=parent)], disc_model, QUICK)
    records, result = records_and_result(run)
    assert result.learned
    final = records[-1]
    assert final.kind == "final" and final.corrections == result.corrections_after
    assert final.scores == result.scores_after
    # The kept model's own validation showed the same counts during the run.
    shown = [r.corrections for r in records if r.kind == "validation"]
    assert result.corrections_after in shown[1:]
    assert compare(result.corrections_before, result.corrections_after) in result.message


def test_a_3d_object_is_held_out_whole_in_every_plane():
    # Slanted 3D objects: their cross-section moves 7 px per plane, across blocks.
    planes = []
    for z in range(4):
        centers = [(12 + 25 * i, 8 + 25 * j + 7 * z) for i in range(4) for j in range(3)]
        planes.append(disc_labels((100, 100), centers, radius=5))
    samples = []
    for z, instances in enumerate(planes):
        targets = labels_to_classes(instances).astype(np.int64)
        samples.append(
            Sample(
                np.zeros((1, 100, 100), np.float32),
                targets,
                np.full(targets.shape, IGNORE, targets.dtype),
                instances,
                source=0,
                stack_plane=((), z),
            )
        )
    assert split_validation(samples, 0.3, np.random.default_rng(0))
    held = set()
    for sample in samples:
        held |= set(np.unique(sample.instances[sample.targets == IGNORE]).tolist()) - {0}
    assert held
    for sample in samples:
        for label in held:
            where = sample.instances == label
            assert (sample.targets[where] == IGNORE).all(), label
            assert (sample.val_targets[where] != IGNORE).all(), label


def test_counts_say_how_many_objects_there_are(disc_model):
    # 64 small discs; the user corrected (painted) 40 and left 24 as predicted.
    centers = [(8 + 15 * i, 8 + 15 * j) for i in range(8) for j in range(8)]
    truth = disc_labels((124, 124), centers, radius=5)
    image = ((truth > 0) * 900 + 300).astype(np.float32)
    prediction = np.where(truth > 40, truth, 0)
    one_step = replace(QUICK, max_epochs=1, steps_per_epoch=1, validation_fraction=0)
    result = fine_tune([AnnotatedImage(image, truth, prediction=prediction)], disc_model, one_step)
    before = result.corrections_before
    assert (before.corrected, before.unchanged) == (40, 24)
    assert f"corrected objects right {before.corrected_right}/40" in before.describe()
    # Many unchanged objects are scored on a sample, and the counts say so.
    many = np.where(truth > 4, truth, 0)
    result = fine_tune([AnnotatedImage(image, truth, prediction=many)], disc_model, one_step)
    before = result.corrections_before
    assert before.unchanged == 48 and before.unchanged_total == 60
    assert "(a sample of 60)" in before.describe()


def test_merged_and_split_objects_are_corrections_not_deletions():
    # Two predicted halves of one nucleus, merged by the user into one object.
    whole = disc_labels((64, 64), [(32, 32)], radius=10)
    halves = np.where(np.arange(64)[None, :] < 32, 1, 2) * (whole > 0)
    merged = find_corrections(whole, "corrections", halves)
    assert set(np.unique(merged.corrected)) == {0, 1} and not merged.deleted.any()
    assert count_corrections(whole, merged).fixed == merged.corrected.max()
    # The halves: the larger one matches at IoU > 0.5 (AP@0.5's rule), the
    # other is a false object, and the score says so.
    unmerged = count_corrections(halves, merged)
    assert unmerged.false == 1 and unmerged.score() < count_corrections(whole, merged).score()
    # The reverse: one predicted blob split by the user into its two nuclei.
    split = find_corrections(halves, "corrections", whole)
    assert set(np.unique(split.corrected)) == {0, 1, 2} and not split.deleted.any()
    assert count_corrections(halves, split).fixed == 2


def test_the_card_of_a_model_kept_anyway_says_so():
    from napari_unet_tuner.model.history import describe_training_run

    run = {"corrections_after": {"corrected": 5, "corrected_right": 4, "deleted": 0}}
    line = describe_training_run({**run, "kept_anyway": True})
    assert "corrected objects right 4/5" in line and "deleted" not in line
    assert "kept by the user" in line
    assert "kept by the user" not in describe_training_run(run)


def test_a_fall_in_held_out_dice_is_said_even_when_ap_holds():
    from napari_unet_tuner.config import InstanceConfig
    from napari_unet_tuner.training.validation import ValidationResult
    from napari_unet_tuner.training.verdict import judge

    counts = CorrectionCounts(corrected=2, corrected_right=0, unchanged=10, unchanged_right=10)
    learned = replace(counts, corrected_right=2)

    def result(dice, corrections):
        scores = {"ap50": 1.0, "dice": dice, "loss": 0.1, "iou": dice, "fit_loss": 0.1}
        scores["annotation_score"] = corrections.score()
        return ValidationResult(scores, corrections, InstanceConfig())

    before = result(0.997, counts)
    for dice, said in ((0.927, True), (0.98, False)):
        verdict = judge(before, result(dice, learned), 40, None, 30.0, 200)
        assert verdict.learned
        assert ("held-out Dice fell 1.00 -> " in verdict.message) == said, verdict.message


def test_a_learned_run_that_lost_or_added_objects_says_to_look_at_its_changes():
    # DSB2018, 20 worst objects corrected: learned by the count (7 more right),
    # with 2 unchanged objects lost and 9 false ones added; AP@0.5 on the
    # image's other half 0.879 -> 0.79.
    from napari_unet_tuner.config import InstanceConfig
    from napari_unet_tuner.training.validation import ValidationResult
    from napari_unet_tuner.training.verdict import judge

    def result(counts):
        scores = {"ap50": 1.0, "dice": 1.0, "loss": 0.1, "iou": 1.0, "fit_loss": 0.1}
        return ValidationResult(
            {**scores, "annotation_score": counts.score()}, counts, InstanceConfig()
        )

    before = CorrectionCounts(corrected=15, deleted=1, unchanged=13, unchanged_right=13, false=6)
    costly = replace(before, corrected_right=6, deleted_gone=1, unchanged_right=11, false=15)
    clean = replace(before, corrected_right=6, deleted_gone=1)
    verdict = judge(result(before), result(costly), 140, None, 60.0, 580)
    assert verdict.learned
    assert "it also lost 2 unchanged objects and added 9 false ones" in verdict.message
    assert (
        "look at what it changed"
        not in judge(result(before), result(clean), 140, None, 60.0, 580).message
    )
