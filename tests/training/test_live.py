"""LiveTrainer: fine-tuning while the annotations change between steps."""

import threading

import numpy as np

from napari_unet_tuner import AnnotatedImage, LiveTrainer, TrainingConfig, segment

from conftest import dim_disc_scene

# Fixed epochs (no lengthening to the validation's time): the same steps on a busy machine.
LIVE = TrainingConfig(
    steps_per_epoch=10, balance_validation=False, device="cpu", mixed_precision=False
)


def one_dim_disc(truth, parent, dim_id):
    """The parent's labels with one missed dim disc painted in: a user's first correction."""
    annotation = parent.copy()
    annotation[truth == dim_id] = annotation.max() + 1
    return annotation


def drive(trainer, on_validation, limit=40):
    """Run the trainer in this thread; ``on_validation(n, record)`` after the n-th validation."""
    records, run, n = [], trainer.run(), 0
    try:
        while True:
            record = next(run)
            records.append(record)
            if record.kind == "validation":
                n += 1
                on_validation(n, record)
                if n >= limit:
                    trainer.stop()
    except StopIteration as done:
        return records, done.value


def test_new_annotations_are_picked_up_and_the_best_offered(disc_model):
    image, truth, dim = dim_disc_scene(0)
    parent = segment(image, disc_model).labels
    first = one_dim_disc(truth, parent, dim[0])
    second = truth.copy()
    given = [first.copy(), second.copy()]
    trainer = LiveTrainer(disc_model, LIVE)
    trainer.update([AnnotatedImage(image, first, prediction=parent)])
    to_fix = []

    def on_validation(n, record):
        to_fix.append(record.corrections.to_fix)
        if n == 3:
            trainer.update([AnnotatedImage(image, second, prediction=parent)])
        if n == 8:
            trainer.stop()

    records, best = drive(trainer, on_validation)
    # The first validations count one correction, those after the update more.
    assert to_fix[0] < to_fix[-1]
    assert sorted(to_fix) == to_fix
    offers = [r for r in records if r.kind == "offer"]
    assert offers and best is offers[-1].snapshot is trainer.best
    assert best.card.training[-1]["stop_reason"] == "live"
    # Steps go on across versions: one model trained, not restarted.
    steps = [r.step for r in records if r.kind == "step"]
    assert steps == list(range(1, len(steps) + 1))
    # What the user painted is never changed.
    assert np.array_equal(first, given[0]) and np.array_equal(second, given[1])


def test_the_last_correction_is_learned(disc_model):
    image, truth, dim = dim_disc_scene(0)
    parent = segment(image, disc_model).labels
    trainer = LiveTrainer(disc_model, LIVE)
    trainer.update([AnnotatedImage(image, truth, prediction=parent)])

    def on_validation(n, record):
        counts = record.corrections
        if counts.fixed == counts.to_fix and n > 1:
            trainer.stop()

    records, best = drive(trainer, on_validation, limit=30)
    assert best is not None
    child = segment(image, best).labels
    for disc in dim:
        overlap = np.bincount(child[truth == disc]).argmax()
        assert overlap > 0  # each dim disc is now an object


def test_an_annotation_that_cannot_be_learned_keeps_the_previous_one(disc_model):
    image, truth, dim = dim_disc_scene(0)
    parent = segment(image, disc_model).labels
    trainer = LiveTrainer(disc_model, LIVE)
    trainer.update([AnnotatedImage(image, one_dim_disc(truth, parent, dim[0]), prediction=parent)])
    seen = []

    def on_validation(n, record):
        seen.append((n, record.corrections.to_fix, trainer.problem))
        if n == 2:
            # The prediction itself: nothing corrected (the user undid the stroke).
            trainer.update([AnnotatedImage(image, parent.copy(), prediction=parent)])
        if n == 5:
            trainer.stop()

    records, _ = drive(trainer, on_validation)
    assert seen[-1][2] is not None and "same as" in seen[-1][2]
    assert {to_fix for _, to_fix, _ in seen} == {seen[0][1]}  # still learning the first
    assert any(r.kind == "step" and r.step > 20 for r in records)


def test_stop_from_another_thread_before_any_annotation(disc_model):
    trainer = LiveTrainer(disc_model, LIVE)
    stopper = threading.Timer(0.3, trainer.stop)
    stopper.start()
    assert list(trainer.run()) == []
    assert trainer.best is None


def test_nothing_painted_is_a_problem_not_a_crash(disc_model):
    image, _, _ = dim_disc_scene(0)
    trainer = LiveTrainer(disc_model, LIVE)
    trainer.update([(image, np.zeros(image.shape, np.int32))])
    threading.Timer(0.5, trainer.stop).start()
    assert list(trainer.run()) == []
    assert trainer.problem
