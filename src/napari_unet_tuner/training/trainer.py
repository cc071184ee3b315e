"""Fine-tuning: learn what the user corrected, yielding plain progress records."""

from __future__ import annotations

import copy
import datetime
import math
import os
import threading
import time
from collections.abc import Generator, Sequence
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np
import torch

from napari_unet_tuner._generators import run_to_completion
from napari_unet_tuner.config import ModelConfig, NormalizationConfig, TrainingConfig
from napari_unet_tuner.inference.device import cpu_threads, select_device
from napari_unet_tuner.inference.instances import probabilities_to_labels
from napari_unet_tuner.inference.pipeline import make_predictor
from napari_unet_tuner.model.checkpoint import Checkpoint, new_card
from napari_unet_tuner.model.saving import check_checkpoint_path, save_checkpoint_somewhere
from napari_unet_tuner.model.unet import UNet
from napari_unet_tuner.training.corrections import complete_corrections
from napari_unet_tuner.training.data import AnnotatedImage, as_annotated_images, build_samples
from napari_unet_tuner.training.lineage import child_card
from napari_unet_tuner.training.optimizing import Optimizing
from napari_unet_tuner.training.patches import PatchSampler
from napari_unet_tuner.training.records import (
    FineTuneResult,
    TrainingProgress,
    all_reproduced,
    counts_dict,
    describe_run,
)
from napari_unet_tuner.training.schedule import annealed_learning_rate, run_settings
from napari_unet_tuner.training.side_views import side_view_samples
from napari_unet_tuner.training.sizing import annotated_diameter, resolve_scales
from napari_unet_tuner.training.split import many_corrections, split_validation
from napari_unet_tuner.training.validation import (
    ValidationResult,
    choose,
    evaluate,
    instance_candidates,
    plan_validation,
    predict_probabilities,
)

# Validations in a row at which every correction is reproduced and every
# unchanged object kept before a run stops: learned, and confirmed once.
_PERFECT_TO_STOP = 2


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
    t_start = time.perf_counter()

    def elapsed() -> float:
        return time.perf_counter() - t_start

    started = datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds")
    from_checkpoint = checkpoint is not None
    model_cfg = checkpoint.model_config if from_checkpoint else (model_config or ModelConfig())
    normalization = (
        checkpoint.card.normalization_config if from_checkpoint else NormalizationConfig()
    )
    if output is not None:
        # Before any training: a taken name must not cost the user a trained model.
        check_checkpoint_path(output, checkpoint)
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
    rng = np.random.default_rng(config.seed)
    torch.manual_seed(config.seed)
    labelling = many_corrections(samples)
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
    optimizing = Optimizing(model, sampler, config, device, batch_size, freeze_bn)

    history: list[TrainingProgress] = []
    step = epoch = best_step = perfect_in_a_row = 0
    stop_reason = "epochs"
    train_seconds = last_preview = 0.0

    def progress(kind, loss, result: ValidationResult | None = None) -> TrainingProgress:
        return TrainingProgress(
            kind,
            step,
            epoch,
            loss,
            None if result is None else result.scores,
            best.scores["ap50"],
            train_seconds / max(step, 1),
            elapsed(),
            max(config.max_seconds - elapsed(), 0.0),
            corrections=None if result is None else result.corrections,
        )

    def validate() -> list[ValidationResult]:
        results = evaluate(model, samples, plan, candidates, device)
        optimizing.train_mode()
        return results

    with cpu_threads(config.num_threads):
        t_validation = time.perf_counter()
        results = validate()
        # "Before" is the starting model with its own instance settings; other
        # settings that reproduce more corrections are already something learned.
        before = results[candidates.index(card.instance_config)]
        best = choose(results)
        validation_seconds = time.perf_counter() - t_validation
        best_state = copy.deepcopy(model.state_dict())
        since_best = 0
        best_fit = best.scores["fit_loss"]
        record = progress("validation", None, before)
        history.append(record)
        yield record

        def out_of_time() -> bool:
            # Stop while there is still time for the last validation.
            return elapsed() + validation_seconds >= config.max_seconds

        while epoch < config.max_epochs and not out_of_time():
            # At least as much time training as validating: large scribbles
            # (long background strokes) make validations of several seconds.
            steps = max(
                config.steps_per_epoch,
                math.ceil(validation_seconds * step / max(train_seconds, 1e-3)) if step else 0,
            )
            for _ in range(steps):
                t_step = time.perf_counter()
                loss = optimizing.step(annealed_learning_rate(config, elapsed()))
                step += 1
                train_seconds += time.perf_counter() - t_step
                record = progress("step", loss)
                history.append(record)
                yield record
                if preview_every is not None and record.elapsed - last_preview >= preview_every:
                    last_preview = record.elapsed
                    preview_card = replace(card, instances=best.instances.to_dict())
                    yield replace(
                        record, kind="preview", snapshot=Checkpoint.from_model(model, preview_card)
                    )
                if (stop is not None and stop.is_set()) or out_of_time():
                    break
            epoch += 1
            t_validation = time.perf_counter()
            result = choose(validate())
            validation_seconds = time.perf_counter() - t_validation
            if result.rank() > best.rank():
                best, best_state, best_step, since_best = (
                    result,
                    copy.deepcopy(model.state_dict()),
                    step,
                    0,
                )
            elif result.scores["fit_loss"] < best_fit:
                # Still learning the annotation: on a labelling whose objects are
                # all reproduced, a sampled object flipping back and forth must not
                # end the run while the model keeps getting better at the rest.
                since_best = 0
            else:
                since_best += 1
            best_fit = min(best_fit, result.scores["fit_loss"])
            perfect_in_a_row = perfect_in_a_row + 1 if all_reproduced(result) else 0
            record = progress("validation", history[-1].loss, result)
            history.append(record)
            yield record
            if stop is not None and stop.is_set():
                stop_reason = "stopped"
                break
            if out_of_time():
                stop_reason = "time"
                break
            if perfect_in_a_row >= _PERFECT_TO_STOP:
                stop_reason = "learned"
                break
            # Only once something was learned: a few corrections can take most of
            # the budget, and stopping before would keep the parent unseen. And not
            # while a review's corrections are not all reproduced: the user gave the
            # budget for them.
            if best_step > 0 and since_best >= config.patience and not _unfinished(best):
                stop_reason = "early stopping"
                break
    # Learned means more of what the user reviewed (or of the held-out part of
    # a labelling) is right, not a loss that moved in its fourth decimal.
    learned = best.improves_on(before) or (best_step > 0 and not math.isfinite(best.rank()[0]))
    seconds = elapsed()
    message = describe_run(learned, before, best, seconds, step, stop_reason)

    def result(kept: Checkpoint, path: Path | None) -> FineTuneResult:
        return FineTuneResult(
            kept,
            before.scores,
            best.scores,
            path,
            stop_reason,
            held_out,
            history,
            learned=learned,
            corrections_before=before.corrections,
            corrections_after=best.corrections,
            message=message,
        )

    if not learned:
        # Nothing better than the start: the parent itself (or, from scratch,
        # the untrained model), never saved.
        start = checkpoint if from_checkpoint else Checkpoint.from_model(model, card)
        return result(start, None)
    model.load_state_dict(best_state)
    run = {
        "started": started,
        "seconds": round(seconds, 1),
        "steps": step,
        "epochs": epoch,
        "stop_reason": stop_reason,
        "device": str(device),
        "settings": {
            **config.to_dict(),
            "patch_shape": list(patch_shape),
            "batch_size": batch_size,
            "freeze_batch_norm": freeze_bn,
        },
        "annotation": summary.to_dict(),
        "validation_held_out": held_out,
        "scores_before": before.scores,
        "scores_after": best.scores,
        "corrections_before": counts_dict(before.corrections),
        "corrections_after": counts_dict(best.corrections),
        "instances_tuned": len(candidates) > 1,
        "parent": checkpoint.as_parent() if from_checkpoint else None,
    }
    new_model_card = child_card(
        card, model_cfg, run, best.instances.to_dict(), name, from_checkpoint
    )
    new = Checkpoint.from_model(model, new_model_card)
    if output is None:
        return result(new, None)
    written, note = save_checkpoint_somewhere(new, output)
    if note:
        message = f"{message}\n{note}"
    return result(new, written)


def _unfinished(best: ValidationResult) -> bool:
    """Whether a review's best model still misses some of its corrections."""
    counts = best.corrections
    return not best.generalization_first and counts is not None and counts.fixed < counts.to_fix


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
