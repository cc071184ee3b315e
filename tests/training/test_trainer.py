import threading
from dataclasses import replace

import numpy as np
import pytest
import torch

from napari_unet_tuner import (
    InputError,
    ModelConfig,
    TrainingConfig,
    fine_tune,
    iter_fine_tune,
    load_checkpoint,
    save_checkpoint,
)
from napari_unet_tuner.inference import labels_to_classes
from napari_unet_tuner.training import IGNORE, masked_loss
from napari_unet_tuner.training.counting import CorrectionCounts

from conftest import TINY, disc_labels, make_checkpoint, script_validations


def run_result(run, on_record=lambda record: None):
    """Finish a fine-tuning generator, passing each record on, and return its result."""
    try:
        while True:
            on_record(next(run))
    except StopIteration as done:
        return done.value


FAST = TrainingConfig(
    max_seconds=60,
    max_epochs=2,
    steps_per_epoch=4,
    patch_shape=(32, 32),
    batch_size=2,
    device="cpu",
)


def toy_pair(seed=0, shape=(64, 64)):
    rng = np.random.default_rng(seed)
    centers = [(int(y), int(x)) for y, x in rng.integers(8, min(shape) - 8, (6, 2))]
    labels = disc_labels(shape, centers, radius=6)
    image = (labels > 0) * 200.0 + rng.normal(50, 10, shape)
    return image.astype(np.float32), labels


def test_loss_ignores_unannotated_pixels():
    torch.manual_seed(0)
    logits = torch.randn(2, 3, 16, 16, requires_grad=True)
    targets = torch.randint(0, 3, (2, 16, 16))
    targets[:, :8] = IGNORE
    loss = masked_loss(logits, targets)
    loss.backward()
    assert torch.all(logits.grad[:, :, :8] == 0)
    changed = logits.detach().clone()
    changed[:, :, :8] = torch.randn(2, 3, 8, 16) * 100
    assert torch.equal(masked_loss(changed, targets), loss.detach())
    binary = masked_loss(logits[:, :1], targets)
    changed_binary = masked_loss(changed[:, :1], targets)
    assert torch.equal(binary.detach(), changed_binary)


def test_contact_weight_stresses_where_objects_touch():
    from napari_unet_tuner.inference.instances import labels_to_classes
    from napari_unet_tuner.training.losses import _contact_map

    labels = np.zeros((1, 24, 24), np.int32)
    labels[0, 4:20, 4:12], labels[0, 4:20, 12:20] = 1, 2
    targets = torch.from_numpy(labels_to_classes(labels[0])[None].astype(np.int64))
    contact = _contact_map(targets)[0].numpy().astype(bool)
    # Only the two columns where the objects meet, away from their corners.
    assert set(np.unique(np.nonzero(contact)[1])) == {11, 12}
    assert contact.sum() == 2 * 14
    logits = torch.zeros(1, 3, 24, 24)
    logits[:, 1] = 5.0  # confidently "interior" everywhere: wrong on every boundary
    plain = masked_loss(logits, targets)
    assert torch.equal(masked_loss(logits, targets, contact_weight=1.0), plain)
    assert masked_loss(logits, targets, contact_weight=5.0) > plain
    # Without contacts the weighting changes nothing.
    single = torch.from_numpy(labels_to_classes((labels[0] == 1).astype(np.int32))[None])
    np.testing.assert_allclose(
        masked_loss(logits, single.long(), contact_weight=5.0),
        masked_loss(logits, single.long()),
        rtol=1e-5,
    )
    with pytest.raises(ValueError, match="contact_weight"):
        TrainingConfig(contact_weight=0.5)


def test_distance_loss_uses_known_distances_only():
    torch.manual_seed(0)
    logits = torch.randn(2, 4, 16, 16, requires_grad=True)
    classes = torch.randint(0, 3, (2, 16, 16))
    distance = torch.randint(0, 255, (2, 16, 16))
    distance[:, :, :8] = IGNORE
    targets = torch.stack([classes, distance], dim=1)
    loss = masked_loss(logits, targets)
    loss.backward()
    assert torch.all(logits.grad[:, 3, :, :8] == 0)
    assert torch.any(logits.grad[:, 3, :, 8:] != 0)
    # The class channels learn as a 3-channel model's do; the distance adds to it.
    assert loss > masked_loss(logits[:, :3].detach(), classes)


def test_distance_model_learns_where_touching_objects_meet(tmp_path):
    from napari_unet_tuner import segment

    def pair(seed):
        rng = np.random.default_rng(seed)
        centers = []
        for cy, cx in rng.integers(16, 64, (2, 2)):
            centers += [(cy, cx), (cy, cx + 13)]  # pairs of touching discs
        labels = disc_labels((96, 96), centers, radius=7)
        image = (labels > 0) * 200.0 + rng.normal(50, 10, labels.shape)
        return image.astype(np.float32), labels, centers

    # 160 steps on every object: at 80 the distance channel of this toy model
    # learned the centres for some seeds and not for others.
    config = replace(
        FAST,
        steps_per_epoch=40,
        max_epochs=4,
        patience=10,
        validation_fraction=0.0,
        patch_shape=(64, 64),
        batch_size=4,
        learning_rate=3e-3,
    )
    model_config = ModelConfig(features=8, depth=2, out_channels=4)
    pairs = [pair(s)[:2] for s in range(4)]
    result = fine_tune(pairs, None, config, model_config=model_config)
    assert result.checkpoint.model_config.output_kind == "boundary3_distance"
    assert result.scores_after["loss"] < 0.5 * result.scores_before["loss"]
    path = save_checkpoint(result.checkpoint, tmp_path / "distance.safetensors")
    image, truth, centers = pair(10)
    out = segment(image, path, return_probabilities=True)
    assert out.probabilities.shape == (4, 96, 96)
    distance = out.probabilities[3].astype(np.float32)
    at_centres = np.mean([distance[cy, cx] for cy, cx in centers if truth[cy, cx]])
    rims = labels_to_classes(truth) == 2  # including where the discs touch
    assert at_centres > distance[rims].mean() + 0.3


def test_a_few_steps_lower_the_loss():
    config = TrainingConfig(
        max_seconds=60,
        max_epochs=1,
        steps_per_epoch=40,
        patch_shape=(32, 32),
        batch_size=4,
        device="cpu",
        learning_rate=3e-3,
        augment=False,
    )
    result = fine_tune([toy_pair()], None, config, model_config=ModelConfig(features=4, depth=2))
    losses = [r.loss for r in result.history if r.kind == "step"]
    assert len(losses) == 40
    assert np.mean(losses[-5:]) < 0.7 * np.mean(losses[:5])
    assert result.scores_after["loss"] < result.scores_before["loss"]


def test_stop_keeps_best_model_and_parent_untouched(tmp_path, monkeypatch):
    # The validation after the stop gets more corrections right than the start.
    seen = script_validations(
        monkeypatch,
        [CorrectionCounts(corrected=6, corrected_right=c) for c in (1, 4)],
    )
    parent_path = save_checkpoint(make_checkpoint(), tmp_path / "parent.safetensors")
    parent_bytes = parent_path.read_bytes()
    parent = load_checkpoint(parent_path)
    image, labels = toy_pair()
    labels_before = labels.copy()
    stop = threading.Event()
    out = tmp_path / "child.safetensors"
    run = iter_fine_tune([(image, labels)], parent, FAST, output=out, stop=stop)
    records = []

    def watch(record):
        records.append(record)
        if record.kind == "step" and record.step == 3:
            stop.set()

    result = run_result(run, watch)
    kinds = ["validation", "step", "step", "step", "validation", "final"]
    assert [r.kind for r in records] == kinds and len(seen) == 2
    assert parent_path.read_bytes() == parent_bytes
    assert np.array_equal(labels, labels_before)
    assert result.learned and out.exists() and result.path == out
    for key, value in load_checkpoint(out).state_dict.items():
        assert torch.equal(value, seen[1][key].cpu()), key  # the model at the stop
    card = load_checkpoint(out).card
    assert card.parent["sha256"] == parent.sha256
    run_info = card.training[-1]
    assert run_info["stop_reason"] == "stopped" and run_info["steps"] == 3
    assert set(run_info["scores_before"]) == {
        "loss",
        "dice",
        "iou",
        "ap50",
        "annotation_score",
        "fit_loss",
    }
    assert run_info["corrections_after"]["corrected_right"] == 4
    assert run_info["annotation"]["objects"] == len(np.unique(labels)) - 1


def test_output_equal_to_the_parent_is_refused(tmp_path):
    parent_path = save_checkpoint(make_checkpoint(), tmp_path / "parent.safetensors")
    parent_bytes = parent_path.read_bytes()
    with pytest.raises(FileExistsError):
        fine_tune([toy_pair()], load_checkpoint(parent_path), FAST, output=parent_path)
    assert parent_path.read_bytes() == parent_bytes


def test_closing_the_run_writes_nothing(tmp_path):
    run = iter_fine_tune([toy_pair()], make_checkpoint(), FAST, output=tmp_path / "x.safetensors")
    next(run)
    next(run)
    run.close()
    assert list(tmp_path.iterdir()) == []


def test_same_seed_same_model():
    config = TrainingConfig(
        max_seconds=60,
        max_epochs=1,
        steps_per_epoch=3,
        patch_shape=(32, 32),
        batch_size=2,
        device="cpu",
    )
    a = fine_tune([toy_pair()], make_checkpoint(), config)
    b = fine_tune([toy_pair()], make_checkpoint(), config)
    for key, value in a.checkpoint.state_dict.items():
        assert torch.equal(value, b.checkpoint.state_dict[key]), key


def test_same_seed_same_model_from_scratch():
    # The starting weights too come from the seed: each run below draws
    # other random numbers first, as a test before it would.
    config = TrainingConfig(
        max_seconds=60, max_epochs=1, steps_per_epoch=2, patch_shape=(32, 32), device="cpu"
    )
    models = []
    for other_draws in (1, 5):
        torch.rand(other_draws)
        result = fine_tune(
            [toy_pair()], None, config, model_config=ModelConfig(features=4, depth=2)
        )
        models.append(result.checkpoint.state_dict)
    for key, value in models[0].items():
        assert torch.equal(value, models[1][key]), key


def test_scribbles_train(tmp_path):
    image, labels = toy_pair(1)
    scribbles = np.zeros_like(labels)
    scribbles[labels == 1] = 2
    scribbles[labels == 2] = 3
    scribbles[0:4] = 1
    scribbles[:, 60:] = 1
    scribbles[(labels > 0) & (scribbles == 1)] = 0
    config = TrainingConfig(
        mode="scribbles",
        max_seconds=60,
        max_epochs=1,
        steps_per_epoch=2,
        patch_shape=(32, 32),
        batch_size=2,
        device="cpu",
    )
    result = fine_tune([(image, scribbles)], make_checkpoint(), config)
    # Every painted object and background stroke is scored, none held out.
    assert result.corrections_before.scribbles
    assert result.corrections_before.corrected == 2
    assert result.corrections_before.deleted == 1  # one connected background stroke
    assert not result.held_out


@pytest.mark.parametrize(
    ("pair", "message"),
    [
        ((np.zeros((64, 64)), np.zeros((64, 64), np.int32)), "no object"),
        ((np.zeros((64, 64)), np.zeros((32, 64), np.int32)), "shape"),
        ((np.zeros((64, 64)), np.zeros((64, 64), np.float64)), "integer labels"),
        ((np.full((64, 64), np.nan), disc_labels()), "NaN"),
        ((np.zeros((2, 64, 64)), np.zeros((64, 64), np.int32)), "model reads 1 channel"),
    ],
)
def test_bad_input_fails_before_training_and_writes_nothing(tmp_path, pair, message):
    out = tmp_path / "new.safetensors"
    axes = ["CYX"] if pair[0].ndim == 3 else None
    with pytest.raises(InputError, match=message):
        next(iter_fine_tune([pair], make_checkpoint(TINY), FAST, output=out, axes=axes))
    assert not out.exists()


def test_instance_settings_are_chosen_on_held_out_annotations():
    from napari_unet_tuner import InstanceConfig, with_card

    pairs = [toy_pair(seed, (96, 96)) for seed in range(3)]
    learn = replace(
        FAST, steps_per_epoch=40, patch_shape=(64, 64), batch_size=4, learning_rate=3e-3
    )
    trained = fine_tune(pairs, None, learn, model_config=ModelConfig(features=8, depth=2))
    # A parent whose threshold suits other images: it loses objects here. So
    # strict that it does whatever the trained model's confidence, which
    # differs between CPUs (0.99 cost only 0.2 of AP on one machine).
    strictness = 0.999999
    strict = with_card(
        trained.checkpoint, instances=InstanceConfig(threshold=strictness).to_dict()
    )
    one_step = replace(FAST, max_epochs=1, steps_per_epoch=1)
    kept = fine_tune(pairs, strict, replace(one_step, tune_instances=False))
    tuned = fine_tune(pairs, strict, one_step)
    assert kept.checkpoint.card.instance_config.threshold == strictness
    assert tuned.checkpoint.card.instance_config.threshold < strictness
    # The strict parent loses the objects, so they all count as corrections; a
    # looser threshold reproduces them with the same weights: that is learned.
    assert tuned.learned
    assert tuned.corrections_after.fixed > kept.corrections_after.fixed + 2
    assert tuned.checkpoint.card.training[-1]["instances_tuned"] is True


def test_instance_candidates_prefer_the_parents_settings_then_neutral():
    from napari_unet_tuner import InstanceConfig
    from napari_unet_tuner.training.validation import instance_candidates

    parent = InstanceConfig(threshold=0.9, split_solidity=0.85, min_size=40)
    candidates = instance_candidates(parent)
    assert candidates[0] == parent
    assert candidates[1] == InstanceConfig(threshold=0.5, split_solidity=0.0, min_size=40)
    assert len(set(candidates)) == len(candidates) == 6
    assert all(c.min_size == 40 for c in candidates)


def test_tuning_needs_more_than_one_held_out_objects_worth_of_ap():
    from napari_unet_tuner.training.validation import tuning_tolerance

    # 4 held-out objects: one object (0.25 AP) is noise, not a better setting.
    assert tuning_tolerance(4) == 0.25
    assert tuning_tolerance(500) == 0.02
    assert tuning_tolerance(0) == 1.0


def test_learning_rate_anneals_over_the_time_budget():
    from napari_unet_tuner.training.schedule import annealed_learning_rate

    config = TrainingConfig(max_seconds=100, learning_rate=1e-3, final_learning_rate=1e-5)
    rates = [annealed_learning_rate(config, t) for t in (0, 25, 50, 75, 100, 150)]
    assert rates[0] == pytest.approx(1e-3)
    assert rates[2] == pytest.approx((1e-3 + 1e-5) / 2)
    assert rates[4] == rates[5] == pytest.approx(1e-5)
    assert all(a > b for a, b in zip(rates[:4], rates[1:5], strict=True))
    assert annealed_learning_rate(replace(config, final_learning_rate=None), 75) == 1e-3
    with pytest.raises(ValueError, match="final_learning_rate"):
        TrainingConfig(learning_rate=1e-4, final_learning_rate=1e-3)


def test_images_are_learned_at_the_scale_they_are_segmented_at():
    from napari_unet_tuner.training.data import AnnotatedImage, build_samples
    from napari_unet_tuner.training.sizing import annotated_diameter, resolve_scales

    image, labels = toy_pair(shape=(96, 96))
    normalization = make_checkpoint().card.normalization_config
    half = AnnotatedImage(image, labels, mode="corrections", scale=0.5)
    samples, _ = build_samples([half], 2, 1, normalization)
    assert samples[0].image.shape == (1, 48, 48)
    assert samples[0].instances.shape == (48, 48)
    # Nearest resizing keeps the objects: no blended label values appear.
    assert set(np.unique(samples[0].instances)) <= set(np.unique(labels))
    assert annotated_diameter(samples) == pytest.approx(6, abs=1.5)  # radius 6, halved

    sized = make_checkpoint(object_diameter=30.0)
    (auto,) = resolve_scales([AnnotatedImage(image, labels)], sized, torch.device("cpu"))
    (unsized,) = resolve_scales([AnnotatedImage(image, labels)], make_checkpoint(), "cpu")
    (given,) = resolve_scales([half], sized, torch.device("cpu"))
    assert isinstance(auto.scale, float) and unsized.scale == 1.0 and given.scale == 0.5


def test_a_model_trained_from_scratch_records_its_object_size():
    pairs = [toy_pair(seed) for seed in range(3)]
    result = fine_tune(pairs, None, FAST, model_config=ModelConfig(features=4, depth=2))
    assert result.checkpoint.card.object_diameter == pytest.approx(12, abs=1.5)


def test_a_childs_card_says_what_the_child_was_trained_and_scored_on(disc_model):
    from napari_unet_tuner import AnnotatedImage, segment
    from napari_unet_tuner.inference.device import training_dtype
    from napari_unet_tuner.model.checkpoint import with_card
    from napari_unet_tuner.training.lineage import STARTING_MODEL, describe_child

    from conftest import dim_disc_scene

    claim = "Discs. AP@0.5 0.72 on a hand-annotated image never trained on."
    parent = with_card(disc_model, description=claim, name="discs")
    config = TrainingConfig(max_seconds=60, max_epochs=2, steps_per_epoch=10, device="cpu")
    image, truth, _ = dim_disc_scene(0)
    pair = AnnotatedImage(image, truth, prediction=segment(image, parent).labels, name="a.tif")
    result = fine_tune([pair], parent, config)
    child = result.candidate or result.checkpoint  # learned or not, the run's model
    assert child.card.parent is not None
    # The card says what the steps computed in (bfloat16 on CPUs made for it).
    precision = child.card.training[-1]["settings"]["training_precision"]
    assert precision == str(training_dtype(torch.device("cpu"))).removeprefix("torch.")
    text = child.card.description
    assert text.startswith("Fine-tuned from discs on 1 annotated image(s) (a.tif)")
    assert "corrected objects right" in text
    # The parent's claim is quoted as the starting model's, not made the child's.
    assert text.endswith(f"{STARTING_MODEL}{claim}") and text.count("0.72") == 1
    # A grandchild quotes the line's first model, not its parent's whole text.
    run = {"annotation": {"objects": 3, "images": ["image 1 (96x96)"]}}
    text = describe_child(child.card, run, {**child.card.instances, "threshold": 0.3})
    assert "(image 1 (96x96)), 3 objects" in text and text.count(STARTING_MODEL) == 1
    assert f"threshold {child.card.instances['threshold']} -> 0.3" in text
    assert "Not scored on any image" in text and text.endswith(claim)
