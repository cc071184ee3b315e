"""Fine-tuning: learn what the user corrected, yielding plain progress records.

A run is made of named steps: `_prepare` (samples, split, validation plan,
optimizer), `_train_epoch` (steps between two validations), `BestModel`
(what is kept, and `stop_reason`), `judge` (the verdict) and `_child`
(the new checkpoint and its card).
"""

from __future__ import annotations

import datetime
import math
import os
import threading
import time
from collections.abc import Generator, Sequence
from dataclasses import dataclass, replace
from typing import Any

import numpy as np
import torch

from napari_unet_tuner._generators import run_to_completion
from napari_unet_tuner.config import ModelConfig, NormalizationConfig, TrainingConfig
from napari_unet_tuner.inference.device import cpu_threads, select_device
from napari_unet_tuner.inference.instances import BACKGROUND, probabilities_to_labels
from napari_unet_tuner.inference.pipeline import make_predictor
from napari_unet_tuner.model.checkpoint import Checkpoint, ModelCard, new_card
from napari_unet_tuner.model.saving import check_checkpoint_path, save_checkpoint_somewhere
from napari_unet_tuner.model.unet import UNet
from napari_unet_tuner.training.best_model import BestModel, stop_reason
from napari_unet_tuner.training.corrections import complete_corrections
from napari_unet_tuner.training.data import (
    AnnotatedImage,
    AnnotationSummary,
    Sample,
    as_annotated_images,
    build_samples,
)
from napari_unet_tuner.training.lineage import child_card
from napari_unet_tuner.training.optimizing import Optimizing
from napari_unet_tuner.training.patches import PatchSampler
from napari_unet_tuner.training.records import FineTuneResult, TrainingProgress, counts_dict
from napari_unet_tuner.training.schedule import annealed_learning_rate, run_settings
from napari_unet_tuner.training.side_views import side_view_samples
from napari_unet_tuner.training.silence import find_uncertain_background
from napari_unet_tuner.training.sizing import annotated_diameter, resolve_scales
from napari_unet_tuner.training.split import many_corrections, split_validation
from napari_unet_tuner.training.validation import (
    ValidationPlan,
    ValidationResult,
    choose,
    evaluate,
    instance_candidates,
    plan_validation,
    predict_probabilities,
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
    and the model kept is the one that reproduces most corrections while
    keeping the unchanged objects (`ValidationResult.rank`); a held-out part
    of the unchanged objects, where there are enough, reports how it
    generalizes. The time budget covers the whole run.

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
    clock = _Clock(time.perf_counter(), config.max_seconds)
    started = datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds")
    if output is not None:
        # Before any training: a taken name must not cost the user a trained model.
        check_checkpoint_path(output, checkpoint)
    run = _prepare(pairs, checkpoint, config, model_config, axes)
    with cpu_threads(config.num_threads):
        t_validation = time.perf_counter()
        results = run.validate()
        # "Before" is the starting model with its own instance settings; other
        # settings that reproduce more corrections are already something learned.
        tracker = BestModel.start(
            results[run.candidates.index(run.card.instance_config)], choose(results), run.model
        )
        clock.validation_seconds = time.perf_counter() - t_validation
        record = run.progress("validation", clock, tracker, None, tracker.before)
        yield record
        last_loss = None
        reason = "epochs"
        while run.epoch < config.max_epochs and not clock.out_of_time():
            last_loss = yield from _train_epoch(run, config, clock, tracker, stop, preview_every)
            run.epoch += 1
            t_validation = time.perf_counter()
            result = choose(run.validate())
            clock.validation_seconds = time.perf_counter() - t_validation
            tracker.consider(result, run.model, run.step)
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
        candidate = _child(
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
    new = _child(run, tracker.state, tracker.before, tracker.best, details, name, learned=True)
    if output is None:
        return replace(result, checkpoint=new)
    written, note = save_checkpoint_somewhere(new, output)
    message = f"{verdict.message}\n{note}" if note else verdict.message
    return replace(result, checkpoint=new, path=written, message=message)


@dataclass
class _Clock:
    """The run's time budget: the budget covers everything, the last validation included."""

    start: float
    max_seconds: float
    validation_seconds: float = 0.0
    train_seconds: float = 0.0
    last_preview: float = 0.0

    def elapsed(self) -> float:
        return time.perf_counter() - self.start

    def out_of_time(self) -> bool:
        # Stop while there is still time for the last validation.
        return self.elapsed() + self.validation_seconds >= self.max_seconds


@dataclass
class _Run:
    """A prepared run: the model, its samples, how it is validated, and its counters."""

    model: UNet
    card: ModelCard
    model_config: ModelConfig
    from_checkpoint: bool
    samples: list[Sample]
    summary: AnnotationSummary
    plan: ValidationPlan
    candidates: list
    held_out: bool
    optimizing: Optimizing
    device: torch.device
    settings: dict
    parent: dict | None
    step: int = 0
    epoch: int = 0
    history: list[TrainingProgress] = None

    def validate(self) -> list[ValidationResult]:
        results = evaluate(self.model, self.samples, self.plan, self.candidates, self.device)
        self.optimizing.train_mode()
        return results

    def progress(
        self,
        kind: str,
        clock: _Clock,
        tracker: BestModel | None,
        loss: float | None,
        result: ValidationResult | None = None,
    ) -> TrainingProgress:
        record = TrainingProgress(
            kind,
            self.step,
            self.epoch,
            loss,
            None if result is None else result.scores,
            None if tracker is None else tracker.best.scores["ap50"],
            clock.train_seconds / max(self.step, 1),
            clock.elapsed(),
            max(clock.max_seconds - clock.elapsed(), 0.0),
            corrections=None if result is None else result.corrections,
        )
        if kind in ("step", "validation"):
            self.history.append(record)
        return record


def _prepare(
    pairs: Sequence[AnnotatedImage | tuple[Any, np.ndarray]],
    checkpoint: Checkpoint | None,
    config: TrainingConfig,
    model_config: ModelConfig | None,
    axes: Sequence[str | None] | None,
) -> _Run:
    """Build the samples, find the corrections, hold out, plan validation, set up the optimizer."""
    from_checkpoint = checkpoint is not None
    model_cfg = checkpoint.model_config if from_checkpoint else (model_config or ModelConfig())
    normalization = (
        checkpoint.card.normalization_config if from_checkpoint else NormalizationConfig()
    )
    device = select_device(config.device)
    annotated = resolve_scales(as_annotated_images(pairs, config.mode, axes), checkpoint, device)
    samples, summary = build_samples(
        annotated,
        model_cfg.spatial_dims,
        model_cfg.in_channels,
        normalization,
        config.scribble_objects,
    )
    patch_shape, batch_size, freeze_bn = run_settings(
        config, model_cfg.spatial_dims, device, from_checkpoint
    )
    card = (
        checkpoint.card
        if from_checkpoint
        else new_card(
            model_cfg,
            normalization=normalization.to_dict(),
            object_diameter=annotated_diameter(samples),
        )
    )
    model = checkpoint.build_model(device) if from_checkpoint else UNet(model_cfg).to(device)
    with cpu_threads(config.num_threads):
        complete_corrections(samples, _labeller(model, card, device) if from_checkpoint else None)
        labelling = many_corrections(samples)
        if from_checkpoint and not labelling:
            find_uncertain_background(
                samples, _foreground(model, device), config.trusted_background
            )
    rng = np.random.default_rng(config.seed)
    torch.manual_seed(config.seed)
    if labelling:
        # Every object is a correction: weighing them (and their rims) more than
        # the background would only bias the model towards foreground.
        for sample in samples:
            if sample.corrections is not None:
                sample.corrections.emphasis[...] = False
    held_out = split_validation(samples, config.validation_fraction, rng, labelling)
    plan = plan_validation(samples, rng, generalization_first=held_out and labelling)
    side_views = side_view_samples(
        samples, {i: item.anisotropy for i, item in enumerate(annotated) if item.stack == "3d"}
    )
    sampler = PatchSampler(
        samples + side_views,
        patch_shape,
        config if config.augment else None,
        rng,
        with_distance=model_cfg.output_kind == "boundary3_distance",
    )
    candidates = (
        instance_candidates(card.instance_config)
        if config.tune_instances and (held_out or any(c.corrections for c in plan.crops))
        else [card.instance_config]
    )
    settings = {
        **config.to_dict(),
        "patch_shape": list(patch_shape),
        "batch_size": batch_size,
        "freeze_batch_norm": freeze_bn,
    }
    return _Run(
        model,
        card,
        model_cfg,
        from_checkpoint,
        samples,
        summary,
        plan,
        candidates,
        held_out,
        Optimizing(model, sampler, config, device, batch_size, freeze_bn),
        device,
        settings,
        checkpoint.as_parent() if from_checkpoint else None,
        history=[],
    )


def _train_epoch(
    run: _Run,
    config: TrainingConfig,
    clock: _Clock,
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
        if run.step
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


def _child(
    run: _Run,
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


def _foreground(model: UNet, device: torch.device):
    """Return a function giving ``model``'s foreground probability for an image."""
    predictor = make_predictor(model, device)
    config = model.config

    def foreground(image: np.ndarray) -> np.ndarray:
        probabilities = predict_probabilities(predictor, image, config.out_channels)
        if config.output_kind == "foreground":
            return probabilities[0]
        return 1.0 - probabilities[BACKGROUND]

    return foreground


def _labeller(model: UNet, card, device: torch.device):
    """Return a function giving ``model``'s labels (card's instance settings) for an image.

    In segmentation's default precision: the labels the user saw and corrected.
    """
    predictor = make_predictor(model, device)
    config = model.config

    def predict_labels(image: np.ndarray) -> np.ndarray:
        probabilities = predict_probabilities(predictor, image, config.out_channels)
        return probabilities_to_labels(probabilities, config.output_kind, card.instance_config)

    return predict_labels


def fine_tune(
    pairs: Sequence[AnnotatedImage | tuple[Any, np.ndarray]],
    checkpoint: Checkpoint | None = None,
    config: TrainingConfig | None = None,
    **kwargs: Any,
) -> FineTuneResult:
    """Run `iter_fine_tune` to the end and return its `FineTuneResult`."""
    return run_to_completion(iter_fine_tune(pairs, checkpoint, config, **kwargs))
