"""Fine-tuning: learn from what the user painted, yielding plain progress records."""

from __future__ import annotations

import copy
import datetime
import math
import os
import threading
import time
from collections.abc import Generator, Iterator, Sequence
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch
import torch.nn.functional as F
from scipy import ndimage
from skimage.measure import block_reduce

from napari_unet_tuner._generators import run_to_completion
from napari_unet_tuner.config import (
    InstanceConfig,
    ModelConfig,
    NormalizationConfig,
    TrainingConfig,
)
from napari_unet_tuner.inference.device import autocast, cpu_threads, select_device
from napari_unet_tuner.inference.instances import (
    BOUNDARY,
    DISTANCE,
    probabilities_to_labels,
)
from napari_unet_tuner.inference.pipeline import make_predictor
from napari_unet_tuner.inference.tiling import predict_tiled
from napari_unet_tuner.model.checkpoint import Checkpoint, new_card, save_checkpoint
from napari_unet_tuner.model.unet import UNet
from napari_unet_tuner.training.data import PatchSampler, Sample, build_samples, split_validation
from napari_unet_tuner.training.metrics import average_precision, dice_iou
from napari_unet_tuner.training.targets import DISTANCE_SCALE, IGNORE

_VAL_MARGIN = 32
_VAL_TILE = 256
# Instance settings tried at each validation (`TrainingConfig.tune_instances`):
# from the loose threshold that suits thin objects to the strict one of the
# bundled nuclei model, with and without cutting waisted seeds.
_TUNED_THRESHOLDS = (0.5, 0.7, 0.9)
_TUNED_SPLITS = (0.0, 0.85)
# AP@0.5 by which a later candidate must beat an earlier one to be chosen:
# at least this, and at least one held-out object's worth (1 / objects), so
# that a handful of held-out objects cannot pick settings by chance.
_TUNING_TOLERANCE = 0.02


@dataclass(frozen=True)
class TrainingProgress:
    """A progress record, yielded after every step and after every validation.

    Attributes
    ----------
    kind : {"validation", "step", "preview"}
        ``"validation"`` records carry ``scores`` (the first, at step 0, is the
        starting model's); ``"preview"`` records carry a ``snapshot`` of the
        current weights for a live preview.
    step, epoch : int
        Optimizer steps and epochs done.
    loss : float or None
        Training loss of the last step.
    scores : dict or None
        Validation ``loss``, ``dice``, ``iou`` and ``ap50``.
    best_score : float or None
        Best validation AP@0.5 so far (the model kept if stopped now).
    seconds_per_step : float
        Mean wall time of a step.
    elapsed, eta : float
        Seconds since the start, and estimated seconds left.
    snapshot : Checkpoint or None
        Current weights (CPU copy), on ``"preview"`` records only.
    """

    kind: Literal["validation", "step", "preview"]
    step: int
    epoch: int
    loss: float | None
    scores: dict[str, float] | None
    best_score: float | None
    seconds_per_step: float
    elapsed: float
    eta: float
    snapshot: Checkpoint | None = None


@dataclass(frozen=True)
class FineTuneResult:
    """What a finished run produced.

    Attributes
    ----------
    checkpoint : Checkpoint
        The best model, with its card recording parent, settings and scores.
    scores_before, scores_after : dict
        Validation scores of the starting model and of the kept one.
    path : Path or None
        Where the checkpoint was saved, if an output was given.
    stop_reason : str
        ``"time"``, ``"epochs"``, ``"early stopping"`` or ``"stopped"``.
    held_out : bool
        Whether validation used held-out regions (False: too little annotation).
    """

    checkpoint: Checkpoint
    scores_before: dict[str, float]
    scores_after: dict[str, float]
    path: Path | None
    stop_reason: str
    held_out: bool
    history: list[TrainingProgress] = field(default_factory=list)


def masked_loss(
    logits: torch.Tensor,
    targets: torch.Tensor,
    boundary_weight: float = 4.0,
    contact_weight: float = 1.0,
) -> torch.Tensor:
    """Loss over annotated pixels only; `IGNORE` pixels contribute nothing.

    Cross-entropy over background / interior / boundary for 3-channel
    models, binary cross-entropy of the foreground for 1-channel ones.
    Boundary pixels weigh ``boundary_weight``; those where two objects touch
    (no background next to them) weigh ``contact_weight`` times more, as
    the U-Net paper weights the gaps between touching cells: a missed
    contact merges two objects, a missed rim only shifts an outline.

    4-channel (``boundary3_distance``) models take ``targets`` of shape
    ``(N, 2, *spatial)``: classes, and `classes_to_distance` of them; the
    loss adds the binary cross-entropy of the distance channel against
    that fraction, over the pixels where it is known.
    """
    if logits.shape[1] == DISTANCE + 1:
        classes, distance = targets[:, 0], targets[:, 1]
        known = distance != IGNORE
        fraction = distance.to(torch.float32) / DISTANCE_SCALE
        per_pixel = F.binary_cross_entropy_with_logits(
            logits[:, DISTANCE].float(), fraction, reduction="none"
        )
        distance_loss = per_pixel[known].mean() if known.any() else logits.sum() * 0.0
        class_loss = masked_loss(logits[:, :DISTANCE], classes, boundary_weight, contact_weight)
        return class_loss + distance_loss
    if logits.shape[1] == 1:
        known = targets != IGNORE
        if not known.any():
            return logits.sum() * 0.0
        fg = (targets > 0).to(logits.dtype)
        per_pixel = F.binary_cross_entropy_with_logits(logits[:, 0], fg, reduction="none")
        return per_pixel[known].mean()
    weight = torch.tensor([1.0, 1.0, boundary_weight], device=logits.device, dtype=torch.float32)
    if not (targets != IGNORE).any():
        return logits.sum() * 0.0
    if contact_weight == 1.0:
        return F.cross_entropy(logits.float(), targets.long(), weight=weight, ignore_index=IGNORE)
    known = targets != IGNORE
    classes = torch.where(known, targets, torch.zeros_like(targets)).long()
    per_pixel = F.cross_entropy(logits.float(), classes, reduction="none")
    pixel_weight = weight[classes] * _contact_map(targets).mul(contact_weight - 1.0).add(1.0)
    pixel_weight = pixel_weight * known
    return (per_pixel * pixel_weight).sum() / pixel_weight.sum()


def _contact_map(targets: torch.Tensor) -> torch.Tensor:
    """1.0 at boundary pixels with no background (nor unknown) pixel in their neighbourhood."""
    open_space = ((targets == 0) | (targets == IGNORE)).float().unsqueeze(1)
    pool = F.max_pool2d if targets.ndim == 3 else F.max_pool3d
    near_open = pool(open_space, 3, stride=1, padding=1).squeeze(1) > 0
    return ((targets == BOUNDARY) & ~near_open).float()


def instance_candidates(current: InstanceConfig) -> list[InstanceConfig]:
    """Return the instance settings a validation tries, the preferred first.

    First the neutral settings (`InstanceConfig`'s defaults: threshold 0.5,
    no seed splitting; ``current``'s seed threshold and minimum size), then
    ``current``, then the other `_TUNED_THRESHOLDS` x `_TUNED_SPLITS` settings. `evaluate`
    keeps the first whose score is within a tolerance of the best (`tuning_tolerance`):
    a parent's settings suit the parent's images (the bundled model's strict
    threshold and seed splitting thin and cut rod-shaped bacteria), and a
    few held-out objects rarely show a difference larger than noise.
    """
    neutral = InstanceConfig()
    grid = [
        replace(current, threshold=neutral.threshold, split_solidity=neutral.split_solidity),
        current,
        *(
            replace(current, threshold=threshold, split_solidity=split)
            for threshold in _TUNED_THRESHOLDS
            for split in _TUNED_SPLITS
        ),
    ]
    return list(dict.fromkeys(grid))


def evaluate(
    model: UNet,
    samples: Sequence[Sample],
    candidates: Sequence[InstanceConfig],
    device: torch.device,
) -> tuple[dict[str, float], InstanceConfig]:
    """Score ``model`` on the held-out targets of ``samples``.

    Each held-out region is predicted with context around it, turned into
    instances as segmentation does, and scored on annotated pixels only:
    ``loss`` (cross-entropy), foreground ``dice`` and ``iou``, and ``ap50``
    (average precision of instances at IoU 0.5). The instances are made
    with each of ``candidates`` from the same prediction; the scores are
    those of the first candidate whose ``ap50`` is within
    `tuning_tolerance` of the best, returned with it.
    """
    was_training = model.training
    model.eval()
    predictor = make_predictor(model, device)
    losses, weights = [], []
    held_out_objects = 0
    dices, ious, aps = ([[] for _ in candidates] for _ in range(3))
    for sample, box in _validation_boxes(samples):
        crop = sample.image[(slice(None), *box)]
        shape = crop.shape[1:]
        tile = tuple(min(_VAL_TILE, s) for s in shape)
        prob = predict_tiled(
            lambda sl, c=crop: c[(slice(None), *sl)],
            shape,
            predictor,
            model.config.out_channels,
            tile,
            out=np.empty((model.config.out_channels, *shape), np.float32),
        )
        t = sample.val_targets[box]
        k = t != IGNORE
        truth = np.where(k, sample.instances[box], 0)
        held_out_objects += len(np.unique(truth)) - 1
        if prob.shape[0] == 1:
            p_true = np.where(t > 0, prob[0], 1 - prob[0])
        else:
            classes = prob[:DISTANCE]  # without a distance channel, if the model has one
            p_true = np.take_along_axis(classes, np.where(k, t, 0)[None].astype(np.intp), 0)[0]
        losses.append(float(-np.log(np.clip(p_true[k], 1e-6, 1)).mean()))
        weights.append(int(k.sum()))
        for i, candidate in enumerate(candidates):
            labels = probabilities_to_labels(prob, model.config.output_kind, candidate)
            dice, iou = dice_iou(truth, labels, k)
            dices[i].append(dice)
            ious[i].append(iou)
            aps[i].append(average_precision(truth, labels, 0.5, k))
    model.train(was_training)
    if not weights:
        nan = float("nan")
        return {"loss": nan, "dice": nan, "iou": nan, "ap50": nan}, candidates[0]
    w = np.asarray(weights, float)
    ap50 = np.array([np.average(a, weights=w) for a in aps])
    best = int(np.flatnonzero(ap50 >= ap50.max() - tuning_tolerance(held_out_objects))[0])
    scores = {
        name: float(np.average(values, weights=w))
        for name, values in (
            ("loss", losses),
            ("dice", dices[best]),
            ("iou", ious[best]),
            ("ap50", aps[best]),
        )
    }
    return scores, candidates[best]


def tuning_tolerance(held_out_objects: int) -> float:
    """Return the AP@0.5 margin by which a later instance candidate must win.

    One held-out object's worth of AP (``1 / held_out_objects``), and at
    least `_TUNING_TOLERANCE`: with 4 held-out bacteria one lucky split
    moves AP by 0.25, which says nothing about the next images.
    """
    return max(_TUNING_TOLERANCE, 1.0 / max(held_out_objects, 1))


def _validation_boxes(samples: Sequence[Sample]) -> Iterator[tuple[Sample, tuple[slice, ...]]]:
    """Each separate held-out region of each sample, widened by context.

    Predicting region by region rather than the box around all of a
    sample's held-out pixels keeps validation to about the held-out share
    of the pixels (scattered regions would otherwise span the whole image).
    """
    cell = _VAL_MARGIN // 2
    for sample in samples:
        known = sample.val_targets != IGNORE
        if not known.any():
            continue
        # On a grid of cells, regions closer than two margins share one
        # prediction; each box is the cells of its region plus one margin.
        coarse = block_reduce(known, (cell,) * known.ndim, np.max)
        near = ndimage.binary_dilation(coarse, iterations=2)
        regions, _ = ndimage.label(near)
        for found in ndimage.find_objects(regions):
            box = tuple(
                slice(r.start * cell, min(r.stop * cell, s))
                for r, s in zip(found, known.shape, strict=True)
            )
            if known[box].any():
                yield sample, box


def _score(scores: dict[str, float]) -> tuple[float, float, float]:
    """Ordering of validation results: AP@0.5 first, then Dice, then lower loss."""
    return (
        np.nan_to_num(scores["ap50"], nan=-1.0),
        np.nan_to_num(scores["dice"], nan=-1.0),
        -np.nan_to_num(scores["loss"], nan=np.inf),
    )


def _defaults(
    config: TrainingConfig, spatial_dims: int, device: torch.device, from_checkpoint: bool
):
    gpu = device.type != "cpu"
    base = (128, 128) if spatial_dims == 2 else (16, 64, 64)
    patch = config.patch_shape or tuple(b * (2 if gpu else 1) for b in base)
    batch = config.batch_size or (16 if gpu else 4)
    freeze_bn = from_checkpoint if config.freeze_batch_norm is None else config.freeze_batch_norm
    return tuple(patch), batch, freeze_bn


def iter_fine_tune(
    pairs: Sequence[tuple[Any, np.ndarray]],
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

    The generator's return value (``StopIteration.value``) is a
    `FineTuneResult`; `fine_tune` unwraps it. Setting ``stop`` ends training
    at the next step and keeps the best model so far (it is saved if
    ``output`` is given). Closing the generator abandons the run and writes
    nothing.

    Parameters
    ----------
    pairs : sequence of (image, annotation)
        Images (array-likes, axes as for segmentation) and integer label
        annotations of the image's shape without channels. Never modified.
    checkpoint : Checkpoint, optional
        Starting model; ``None`` trains from scratch with ``model_config``.
    config : TrainingConfig, optional
        Mode, time budget, patch size, learning rate, seed...
    model_config : ModelConfig, optional
        Architecture for training from scratch.
    axes : sequence of str or None, optional
        Axes of each image; inferred when omitted.
    output : path-like, optional
        Save the result there (atomically; never over the parent).
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
        Before any training, if an image or annotation cannot be used.
    """
    config = config or TrainingConfig()
    t_start = time.perf_counter()
    started = datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds")
    from_checkpoint = checkpoint is not None
    model_cfg = (
        checkpoint.model_config if checkpoint is not None else (model_config or ModelConfig())
    )
    normalization = (
        checkpoint.card.normalization_config if checkpoint is not None else NormalizationConfig()
    )
    if output is not None and checkpoint is not None and checkpoint.path is not None:
        if Path(output).resolve() == Path(checkpoint.path).resolve():
            raise FileExistsError(
                f"{output} is the starting checkpoint; save the new one elsewhere"
            )
    samples, summary = build_samples(
        pairs,
        config.mode,
        model_cfg.spatial_dims,
        model_cfg.in_channels,
        normalization,
        axes,
        config.scribble_objects,
    )
    device = select_device(config.device)
    patch_shape, batch_size, freeze_bn = _defaults(
        config, model_cfg.spatial_dims, device, from_checkpoint
    )
    rng = np.random.default_rng(config.seed)
    torch.manual_seed(config.seed)
    held_out = split_validation(samples, config.validation_fraction, rng)
    sampler = PatchSampler(
        samples,
        patch_shape,
        config if config.augment else None,
        rng,
        with_distance=model_cfg.output_kind == "boundary3_distance",
    )

    card = (
        checkpoint.card
        if checkpoint is not None
        else new_card(model_cfg, normalization=normalization.to_dict())
    )
    candidates = (
        instance_candidates(card.instance_config)
        if config.tune_instances and held_out
        else [card.instance_config]
    )
    model = (
        checkpoint.build_model(device) if checkpoint is not None else UNet(model_cfg).to(device)
    )
    for block in list(model.down)[: config.freeze_encoder_levels]:
        block.requires_grad_(False)
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.Adam(params, lr=config.learning_rate)
    use_amp = config.mixed_precision and device.type == "cuda"
    scaler = torch.amp.GradScaler("cuda", enabled=use_amp)

    def set_train_mode() -> None:
        model.train()
        if freeze_bn:
            for m in model.modules():
                if isinstance(m, torch.nn.modules.batchnorm._BatchNorm):
                    m.eval()

    history: list[TrainingProgress] = []
    step = epoch = 0
    stop_reason = "epochs"
    train_seconds = last_preview = 0.0

    def progress(kind, loss, scores=None) -> TrainingProgress:
        return TrainingProgress(
            kind,
            step,
            epoch,
            loss,
            scores,
            best_scores["ap50"],
            train_seconds / max(step, 1),
            time.perf_counter() - t_start,
            max(config.max_seconds - train_seconds, 0.0),
        )

    with cpu_threads(config.num_threads):
        before, best_instances = evaluate(model, samples, candidates, device)
        best_scores, best_state = before, copy.deepcopy(model.state_dict())
        since_best = 0
        record = progress("validation", None, before)
        history.append(record)
        yield record
        set_train_mode()
        while epoch < config.max_epochs:
            for _ in range(config.steps_per_epoch):
                t_step = time.perf_counter()
                images, targets = sampler.batch(batch_size)
                x = torch.from_numpy(images).to(device)
                y = torch.from_numpy(targets).to(device)
                with autocast(device, use_amp):
                    loss = masked_loss(model(x), y, config.boundary_weight, config.contact_weight)
                for group in optimizer.param_groups:
                    group["lr"] = annealed_learning_rate(config, train_seconds)
                optimizer.zero_grad(set_to_none=True)
                scaler.scale(loss).backward()
                scaler.step(optimizer)
                scaler.update()
                step += 1
                train_seconds += time.perf_counter() - t_step
                record = progress("step", float(loss.detach()))
                history.append(record)
                yield record
                if preview_every is not None and record.elapsed - last_preview >= preview_every:
                    last_preview = record.elapsed
                    preview_card = replace(card, instances=best_instances.to_dict())
                    yield replace(
                        record, kind="preview", snapshot=Checkpoint.from_model(model, preview_card)
                    )
                if (stop is not None and stop.is_set()) or train_seconds >= config.max_seconds:
                    break
            epoch += 1
            scores, instances = evaluate(model, samples, candidates, device)
            set_train_mode()
            if _score(scores) > _score(best_scores):
                best_scores, best_state, since_best = scores, copy.deepcopy(model.state_dict()), 0
                best_instances = instances
            else:
                since_best += 1
            record = progress("validation", history[-1].loss, scores)
            history.append(record)
            yield record
            if stop is not None and stop.is_set():
                stop_reason = "stopped"
                break
            if train_seconds >= config.max_seconds:
                stop_reason = "time"
                break
            if since_best >= config.patience:
                stop_reason = "early stopping"
                break
    model.load_state_dict(best_state)
    run = {
        "started": started,
        "seconds": round(time.perf_counter() - t_start, 1),
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
        "scores_before": before,
        "scores_after": best_scores,
        "instances_tuned": len(candidates) > 1,
        "parent": checkpoint.as_parent() if checkpoint is not None else None,
    }
    default_name = (
        f"{card.name} (fine-tuned)" if from_checkpoint else "U-Net (trained from scratch)"
    )
    # new_card stamps the creation time and package version; the rest is inherited.
    inherited = {k: v for k, v in asdict(card).items() if k not in ("created", "package_version")}
    inherited.update(
        name=name or default_name,
        parent=run["parent"],
        training=(*card.training, run),
        instances=best_instances.to_dict(),
    )
    new = Checkpoint.from_model(model, new_card(model_cfg, **inherited))
    path = save_checkpoint(new, output) if output is not None else None
    return FineTuneResult(new, before, best_scores, path, stop_reason, held_out, history)


def annealed_learning_rate(config: TrainingConfig, train_seconds: float) -> float:
    """Return the step size after ``train_seconds`` of training (half a cosine to the end).

    By time, not by step (torch's ``CosineAnnealingLR`` counts steps): a
    run's length is its time budget, and how many steps fit is not known.
    """
    start, end = config.learning_rate, config.final_learning_rate
    if end is None:
        return start
    done = min(train_seconds / config.max_seconds, 1.0)
    return end + (start - end) * 0.5 * (1.0 + math.cos(math.pi * done))


def fine_tune(
    pairs: Sequence[tuple[Any, np.ndarray]],
    checkpoint: Checkpoint | None = None,
    config: TrainingConfig | None = None,
    **kwargs: Any,
) -> FineTuneResult:
    """Run `iter_fine_tune` to the end and return its `FineTuneResult`."""
    return run_to_completion(iter_fine_tune(pairs, checkpoint, config, **kwargs))
