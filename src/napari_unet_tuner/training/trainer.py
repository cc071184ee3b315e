"""Fine-tuning: learn what the user corrected, yielding plain progress records.

A run is made of named steps: `prepare_run` (samples, split, validation
plan, optimizer; `napari_unet_tuner.training.preparation`), `train_epoch`
(the steps between two validations), `BestModel` (what is kept, and
`stop_reason`), `judge` (the verdict) and `child_checkpoint` (the new checkpoint and
its card).
"""

from __future__ import annotations

import datetime
import math
import os
import threading
import time
from collections.abc import Generator, Sequence
from dataclasses import replace
from typing import Any

import numpy as np

from napari_unet_tuner._generators import run_to_completion
from napari_unet_tuner.config import ModelConfig, TrainingConfig
from napari_unet_tuner.inference.device import cpu_threads
from napari_unet_tuner.model.checkpoint import Checkpoint
from napari_unet_tuner.model.saving import check_checkpoint_path, save_checkpoint_somewhere
from napari_unet_tuner.model.unet import UNet
from napari_unet_tuner.training.best_model import BestModel, stop_reason
from napari_unet_tuner.training.data import (
    AnnotatedImage,
)
from napari_unet_tuner.training.lineage import child_card
from napari_unet_tuner.training.preparation import PreparedRun, RunClock, prepare_run
from napari_unet_tuner.training.records import FineTuneResult, TrainingProgress, counts_dict
from napari_unet_tuner.training.schedule import annealed_learning_rate
from napari_unet_tuner.training.validation import (
    ValidationResult,
    choose,
    evaluate,
)
from napari_unet_tuner.training.verdict import judge


def iter_fine_tune(
    pairs: Sequence[AnnotatedImage | tuple[Any, np.ndarray]],
    checkpoint: Checkpoint | None = None,
    config: TrainingConfig | None = None,
    *,
    model_config: ModelConfig | None = None,
    axes: Sequence[str | None] | None = None,
    output: str | os.PathLike | None = None,
    name: str | None = None,
    stop: threading.Event | None = None,
    preview_every: float | None = None,
) -> Generator[TrainingProgress, None, FineTuneResult]:
    """Fine-tune a model on annotations, yielding `TrainingProgress` records.

    Where an annotation corrects a prediction, the pixels the user changed
    weigh more and are sampled more (`TrainingConfig.correction_weight`),
    and the model kept is the one with the highest annotation score
    (corrected, deleted and unchanged objects right alike;
    `ValidationResult.rank`); a held-out part of the unchanged objects,
    where there are enough, reports how it generalizes. When no model scores
    higher than the starting one, nothing was learned; if one got more
    corrections right at the cost of other objects, the result offers it as
    ``candidate`` and its message names the trade-off
    (`napari_unet_tuner.training.verdict`). The last record yielded
    (``kind="final"``) carries the counts of the model kept. The time budget
    covers the whole run.

    The generator's return value (``StopIteration.value``) is a
    `FineTuneResult`; `fine_tune` unwraps it. Setting ``stop`` ends training
    at the next step and keeps the best model so far (it is saved if
    ``output`` is given and it learned something). Closing the generator
    abandons the run and writes nothing.

    Parameters
    ----------
    pairs : sequence of AnnotatedImage or (image, annotation)
        Images with what was painted on them (each image's planes and time
        points included). Tuples are read with ``config.mode``. Never modified.
    checkpoint : Checkpoint, optional
        Starting model; ``None`` trains from scratch with ``model_config``.
    config : TrainingConfig, optional
        Mode, time budget, patch size, learning rate, seed...
    model_config : ModelConfig, optional
        Architecture for training from scratch.
    axes : sequence of str or None, optional
        Axes of each image; inferred when omitted.
    output : path-like, optional
        Save the result there, atomically. An existing file (the parent
        above all) is refused before training; if the file cannot be
        written after training (a full disk), the model is saved under a
        free name beside it or in the temporary folder, and the result's
        ``message`` says where.
    name : str, optional
        Name for the new checkpoint's card.
    stop : threading.Event, optional
        Set it to stop early and keep the best model.
    preview_every : float, optional
        Also yield a ``"preview"`` record with a weight snapshot every this
        many seconds (for a live preview of the model being trained).

    Raises
    ------
    InputError
        Before any training, if an image or annotation cannot be used, or if
        a correction annotation is the same as the model's prediction.
    FileExistsError
        Before any training, if ``output`` exists.
    """
    config = config or TrainingConfig()
    clock = RunClock(time.perf_counter(), config.max_seconds)
    started = datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds")
    if output is not None:
        # Before any training: a taken name must not cost the user a trained model.
        check_checkpoint_path(output, checkpoint)
    run = prepare_run(pairs, checkpoint, config, model_config, axes)
    with cpu_threads(config.num_threads):
        t_validation = time.perf_counter()
        tracker = start_tracker(run)
        clock.validation_seconds = time.perf_counter() - t_validation
        record = run.progress("validation", clock, tracker, None, tracker.before)
        yield record
        last_loss = None
        reason = "epochs"
        while run.epoch < config.max_epochs and not clock.out_of_time():
            last_loss = yield from train_epoch(run, config, clock, tracker, stop, preview_every)
            run.epoch += 1
            result = validate_and_consider(run, clock, tracker)
            yield run.progress("validation", clock, tracker, last_loss, result)
            why = stop_reason(
                tracker, config.patience, stop is not None and stop.is_set(), clock.out_of_time()
            )
            if why is not None:
                reason = why
                break
    seconds = clock.elapsed()
    verdict = judge(
        tracker.before, tracker.best, tracker.step, tracker.candidate, seconds, run.step
    )
    kept = tracker.best if verdict.learned else tracker.before
    # The last record is the model kept: what the verdict reports.
    yield run.progress("final", clock, tracker, last_loss, kept)
    details = {
        "started": started,
        "seconds": round(seconds, 1),
        "steps": run.step,
        "epochs": run.epoch,
        "stop_reason": reason,
    }
    candidate = None
    if verdict.trade_off and tracker.candidate_state is not None:
        candidate = child_checkpoint(
            run,
            tracker.candidate_state,
            tracker.before,
            tracker.candidate,
            details,
            name,
            learned=False,
        )
    result = FineTuneResult(
        checkpoint,
        tracker.before.scores,
        kept.scores,
        None,
        reason,
        run.held_out,
        run.history,
        learned=verdict.learned,
        corrections_before=tracker.before.corrections,
        corrections_after=kept.corrections,
        message=verdict.message,
        candidate=candidate,
        candidate_corrections=None if candidate is None else tracker.candidate.corrections,
    )
    if not verdict.learned:
        # Nothing better than the start: the parent itself (or, from scratch,
        # the untrained model), never saved.
        start = checkpoint if run.from_checkpoint else Checkpoint.from_model(run.model, run.card)
        return replace(result, checkpoint=start)
    new = child_checkpoint(
        run, tracker.state, tracker.before, tracker.best, details, name, learned=True
    )
    if output is None:
        return replace(result, checkpoint=new)
    written, note = save_checkpoint_somewhere(new, output)
    message = f"{verdict.message}\n{note}" if note else verdict.message
    return replace(result, checkpoint=new, path=written, message=message)


def start_tracker(run: PreparedRun) -> BestModel:
    """Validate the starting model (the run's model before any step) and track from it."""
    results = validate_run(run)
    # "Before" is the starting model with its own instance settings; other
    # settings that reproduce more corrections are already something learned.
    before = results[run.candidates.index(run.card.instance_config)]
    return BestModel.start(before, choose(results), run.model)


def validate_and_consider(
    run: PreparedRun, clock: RunClock, tracker: BestModel
) -> ValidationResult:
    """Validate the model after an epoch, time it, and let ``tracker`` take it in."""
    t_validation = time.perf_counter()
    result = choose(validate_run(run))
    clock.validation_seconds = time.perf_counter() - t_validation
    tracker.consider(result, run.model, run.step)
    return result


def validate_run(run: PreparedRun) -> list[ValidationResult]:
    """Score the model on the run's validation plan with each instance candidate."""
    results = evaluate(run.model, run.samples, run.plan, run.candidates, run.device)
    run.optimizing.train_mode()
    return results


def train_epoch(
    run: PreparedRun,
    config: TrainingConfig,
    clock: RunClock,
    tracker: BestModel,
    stop: threading.Event | None,
    preview_every: float | None,
) -> Generator[TrainingProgress, None, float | None]:
    """Train until the next validation, yielding step and preview records; return the loss."""
    # At least as much time training as validating: large scribbles (long
    # background strokes) make validations of several seconds.
    steps = max(
        config.steps_per_epoch,
        math.ceil(clock.validation_seconds * run.step / max(clock.train_seconds, 1e-3))
        if run.step and config.balance_validation
        else 0,
    )
    loss = None
    for _ in range(steps):
        t_step = time.perf_counter()
        loss = run.optimizing.step(annealed_learning_rate(config, clock.elapsed()))
        run.step += 1
        clock.train_seconds += time.perf_counter() - t_step
        record = run.progress("step", clock, tracker, loss)
        yield record
        if preview_every is not None and record.elapsed - clock.last_preview >= preview_every:
            clock.last_preview = record.elapsed
            preview_card = replace(run.card, instances=tracker.best.instances.to_dict())
            yield replace(
                record, kind="preview", snapshot=Checkpoint.from_model(run.model, preview_card)
            )
        if (stop is not None and stop.is_set()) or clock.out_of_time():
            break
    return loss


def child_checkpoint(
    run: PreparedRun,
    state: dict,
    before: ValidationResult,
    after: ValidationResult,
    details: dict,
    name: str | None,
    learned: bool,
) -> Checkpoint:
    """Return the checkpoint of ``state`` with the card of a model made by this run."""
    record = {
        **details,
        "device": str(run.device),
        "settings": run.settings,
        "annotation": run.summary.to_dict(),
        "validation_held_out": run.held_out,
        "scores_before": before.scores,
        "scores_after": after.scores,
        "corrections_before": counts_dict(before.corrections),
        "corrections_after": counts_dict(after.corrections),
        "instances_tuned": len(run.candidates) > 1,
        "parent": run.parent,
    }
    if not learned:
        # Kept by the user against the verdict: the card says so.
        record["kept_anyway"] = True
    card = child_card(
        run.card, run.model_config, record, after.instances.to_dict(), name, run.from_checkpoint
    )
    model = UNet(run.model_config)
    model.load_state_dict(state)
    return Checkpoint.from_model(model, card)


def fine_tune(
    pairs: Sequence[AnnotatedImage | tuple[Any, np.ndarray]],
    checkpoint: Checkpoint | None = None,
    config: TrainingConfig | None = None,
    **kwargs: Any,
) -> FineTuneResult:
    """Run `iter_fine_tune` to the end and return its `FineTuneResult`."""
    return run_to_completion(iter_fine_tune(pairs, checkpoint, config, **kwargs))
