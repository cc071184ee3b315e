"""Preparing a fine-tuning run: samples, corrections, held-out split, validation, optimizer."""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch

from napari_unet_tuner.config import ModelConfig, NormalizationConfig, TrainingConfig
from napari_unet_tuner.inference.device import cpu_threads, select_device, training_dtype
from napari_unet_tuner.inference.instances import BACKGROUND, probabilities_to_labels
from napari_unet_tuner.inference.predictor import make_predictor
from napari_unet_tuner.model.checkpoint import Checkpoint, ModelCard, new_card
from napari_unet_tuner.model.unet import UNet
from napari_unet_tuner.training.best_model import BestModel
from napari_unet_tuner.training.corrections import complete_corrections
from napari_unet_tuner.training.data import (
    AnnotatedImage,
    AnnotationSummary,
    Sample,
    as_annotated_images,
    build_samples,
    native_labels,
)
from napari_unet_tuner.training.optimizing import Optimizing
from napari_unet_tuner.training.patches import PatchSampler
from napari_unet_tuner.training.records import TrainingProgress
from napari_unet_tuner.training.schedule import run_settings
from napari_unet_tuner.training.side_views import side_view_samples
from napari_unet_tuner.training.silence import find_uncertain_background
from napari_unet_tuner.training.sizing import annotated_diameter, resolve_scales
from napari_unet_tuner.training.split import many_corrections, split_validation
from napari_unet_tuner.training.validation import (
    ValidationPlan,
    ValidationResult,
    instance_candidates,
    plan_validation,
    predict_probabilities,
)


@dataclass
class RunClock:
    """The run's time budget: the budget covers everything, the last validation included."""

    start: float
    max_seconds: float
    validation_seconds: float = 0.0
    train_seconds: float = 0.0
    last_preview: float = 0.0

    def elapsed(self) -> float:
        """Seconds since the run started."""
        return time.perf_counter() - self.start

    def out_of_time(self) -> bool:
        """Whether the budget leaves no time for another step and the last validation."""
        # Stop while there is still time for the last validation.
        return self.elapsed() + self.validation_seconds >= self.max_seconds


@dataclass
class PreparedRun:
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
    history: list[TrainingProgress] = field(default_factory=list)

    def progress(
        self,
        kind: str,
        clock: RunClock,
        tracker: BestModel,
        loss: float | None,
        result: ValidationResult | None = None,
    ) -> TrainingProgress:
        """Return a progress record of now (steps and validations are kept in ``history``)."""
        record = TrainingProgress(
            kind,
            self.step,
            self.epoch,
            loss,
            None if result is None else result.scores,
            tracker.best.scores["ap50"],
            clock.train_seconds / max(self.step, 1),
            clock.elapsed(),
            max(clock.max_seconds - clock.elapsed(), 0.0),
            corrections=None if result is None else result.corrections,
        )
        if kind in ("step", "validation"):
            self.history.append(record)
        return record


def prepare_run(
    pairs: Sequence[AnnotatedImage | tuple[Any, np.ndarray]],
    checkpoint: Checkpoint | None,
    config: TrainingConfig,
    model_config: ModelConfig | None,
    axes: Sequence[str | None] | None,
) -> PreparedRun:
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
    rng = np.random.default_rng(config.seed)
    # Before the model is built: a model trained from scratch starts from the
    # same weights for the same seed (its runs were not reproducible).
    torch.manual_seed(config.seed)
    model = checkpoint.build_model(device) if from_checkpoint else UNet(model_cfg).to(device)
    parent = _probabilities(model, device) if from_checkpoint else None
    with cpu_threads(config.num_threads):
        complete_corrections(samples, None if parent is None else _labeller(parent, model, card))
        labelling = many_corrections(samples)
        if parent is not None and not labelling and config.trusted_background < 1.0:
            find_uncertain_background(
                samples, _foreground(parent, model), config.trusted_background
            )
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
        # What the steps computed in (the card says how the model was made).
        "training_precision": str(training_dtype(device, config.mixed_precision)).removeprefix(
            "torch."
        ),
    }
    return PreparedRun(
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
    )


def _probabilities(model: UNet, device: torch.device):
    """Return a function giving ``model``'s class probabilities for a normalized image.

    In segmentation's default precision: what the user saw and corrected.
    """
    predictor = make_predictor(model, device)
    return lambda image: predict_probabilities(predictor, image, model.config.out_channels)


def _labeller(probabilities, model: UNet, card: ModelCard):
    """Return a function giving a sample's labels (the card's instance settings)."""
    kind, instances = model.config.output_kind, card.instance_config
    return lambda sample: native_labels(
        sample, probabilities, lambda p: probabilities_to_labels(p, kind, instances)
    )


def _foreground(probabilities, model: UNet):
    """Return a function giving the foreground probability for an image."""
    if model.config.output_kind == "foreground":
        return lambda image: probabilities(image)[0]
    return lambda image: 1.0 - probabilities(image)[BACKGROUND]
