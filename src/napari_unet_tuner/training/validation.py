"""Validation during fine-tuning: are corrections reproduced, does the model generalize.

A run is judged on a fixed, small set of crops chosen before training
(`plan_validation`): crops around the corrected, deleted and (a sample of)
unchanged objects of the training annotation, scored by
`count_corrections`; and crops around the held-out objects, scored by
average precision pooled over all of them (TP / (TP + FP + FN) of every
crop together, not a mean of per-crop scores).
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field, replace

import numpy as np
import torch
from scipy import ndimage
from skimage.measure import block_reduce

from napari_unet_tuner.config import InstanceConfig
from napari_unet_tuner.inference.instances import DISTANCE, probabilities_to_labels
from napari_unet_tuner.inference.predictor import make_predictor
from napari_unet_tuner.inference.tiling import predict_tiled
from napari_unet_tuner.model.unet import UNet
from napari_unet_tuner.training.corrections import CorrectionMap, object_ids
from napari_unet_tuner.training.counting import CorrectionCounts, count_corrections
from napari_unet_tuner.training.data import Sample
from napari_unet_tuner.training.metrics import match_counts, pooled_precision
from napari_unet_tuner.training.targets import IGNORE

_VAL_MARGIN = 32
_VAL_TILE = 256
# At most this many corrected, this many deleted (every one a user would
# correct by hand) and `MAX_SCORED_UNCHANGED` unchanged objects are scored at
# each validation: a fixed random sample when there are more, and the counts
# say so (`CorrectionCounts.unchanged_total`).
MAX_SCORED_CORRECTIONS = 1000
MAX_SCORED_UNCHANGED = 48
# Instance settings tried at each validation (`TrainingConfig.tune_instances`):
# from the loose threshold that suits thin objects to the strict one of the
# bundled nuclei model, with and without cutting waisted seeds.
_TUNED_THRESHOLDS = (0.5, 0.7, 0.9)
_TUNED_SPLITS = (0.0, 0.85)
# Score by which a later candidate must beat an earlier one to be chosen:
# at least this, and at least one scored object's worth (1 / objects), so
# that a handful of objects cannot pick settings by chance.
_TUNING_TOLERANCE = 0.02


# A model whose AP@0.5 on the held-out objects (never trained on) falls by
# more than this has not learned, whatever it does on the reviewed ones: on
# a simulated review of 10 HeLa objects, a model deleted both junk objects
# reviewed and lost every held-out nucleus (AP 1.00 -> 0.00), and was kept.
HELD_OUT_DROP = 0.2


@dataclass(frozen=True)
class ValidationCrop:
    """One region predicted at each validation.

    Attributes
    ----------
    sample : int
        Index of the sample it is cut from.
    box : tuple of slice
        The crop, with context around the region.
    held_out : numpy.ndarray of bool
        Held-out pixels of the region (scored by AP), within ``box``.
    region : numpy.ndarray of bool
        The region within ``box``: objects are scored only here.
    corrections : CorrectionMap or None
        The scored objects of the training annotation, cut to ``box``.
    """

    sample: int
    box: tuple[slice, ...]
    held_out: np.ndarray
    region: np.ndarray
    corrections: CorrectionMap | None


@dataclass(frozen=True)
class ValidationPlan:
    """The crops every validation of a run predicts, and how to weigh sampled objects.

    Attributes
    ----------
    crops : list of ValidationCrop
        Regions to predict.
    weights : tuple of float
        Objects each scored corrected, deleted and unchanged object stands
        for (more than 1 when there were more than the caps).
    generalization_first : bool
        Rank by held-out AP before corrections reproduced: the annotation
        is a labelling with a part of its corrections held out
        (`napari_unet_tuner.training.split.many_corrections`).
    unchanged_total : int
        Unchanged objects of the annotation when only a sample of them is
        scored, else 0.
    """

    crops: list[ValidationCrop]
    weights: tuple[float, float, float] = (1.0, 1.0, 1.0)
    generalization_first: bool = False
    unchanged_total: int = 0


@dataclass(frozen=True)
class ValidationResult:
    """Scores of one validation.

    Attributes
    ----------
    scores : dict
        Held-out ``loss``, ``dice``, ``iou`` and ``ap50`` (NaN without a
        held-out part); ``annotation_score``: the `CorrectionCounts.score`
        of the training annotation (NaN when nothing is known to be
        corrected); ``fit_loss``: the cross-entropy on the training
        annotation within the crops (how tightly it is fitted).
    corrections : CorrectionCounts or None
        The counts behind ``reproduced``.
    instances : InstanceConfig
        The instance settings these scores were made with.
    """

    scores: dict[str, float]
    corrections: CorrectionCounts | None
    instances: InstanceConfig
    held_out_objects: int = field(default=0, repr=False)
    generalization_first: bool = field(default=False, repr=False)

    def rank(self) -> tuple[float, ...]:
        """Ordering of results, best last.

        Corrections reproduced, then held-out AP, Dice and loss, then the
        fit to the training annotation: among models that get the same
        reviewed objects right, the one that generalizes, else the one
        trained furthest (the first to reproduce a few scribbles is barely
        trained). Held-out AP comes first with `ValidationPlan.generalization_first`.
        """
        s = self.scores
        reviewed, held_out = s["annotation_score"], s["ap50"]
        first = (held_out, reviewed) if self.generalization_first else (reviewed, held_out)
        return tuple(
            float(np.nan_to_num(v, nan=-np.inf))
            for v in (*first, s["dice"], -s["loss"], -s["fit_loss"])
        )

    def improves_on(self, other: ValidationResult) -> bool:
        """Whether this is something learned over ``other``.

        More reviewed objects right; with `generalization_first`, a higher
        held-out AP, or the same and more reviewed objects right; with
        neither corrections known nor held-out objects, any higher rank.
        Never a model whose held-out AP fell by more than `HELD_OUT_DROP`:
        it fits the reviewed objects by unlearning the others.
        """
        mine, theirs = self.rank(), other.rank()
        if self.held_out_fell(other):
            return False
        if self.generalization_first:
            return mine[:2] > theirs[:2]
        if np.isfinite(mine[0]) or np.isfinite(theirs[0]):
            return mine[0] > theirs[0]
        return mine > theirs

    def held_out_fell(self, other: ValidationResult) -> bool:
        """Whether the held-out AP is more than `HELD_OUT_DROP` below ``other``'s."""
        mine, theirs = self.scores["ap50"], other.scores["ap50"]
        return bool(np.isfinite(mine) and np.isfinite(theirs) and mine < theirs - HELD_OUT_DROP)


def regions(mask: np.ndarray, margin: int = _VAL_MARGIN) -> Iterator[tuple[tuple, np.ndarray]]:
    """Each separate region of ``mask`` as ``(box, region within box)``, widened by context.

    On a grid of cells, parts closer than two margins share one region;
    each box is the cells of its region plus one margin. Predicting region
    by region rather than the box around all of ``mask`` keeps validation
    to about the masked share of the pixels.
    """
    cell = margin // 2
    coarse = block_reduce(mask, (cell,) * mask.ndim, np.max)
    near = ndimage.binary_dilation(coarse, iterations=2)
    labelled, _ = ndimage.label(near)
    for index, found in enumerate(ndimage.find_objects(labelled), start=1):
        box = tuple(
            slice(r.start * cell, min(r.stop * cell, s))
            for r, s in zip(found, mask.shape, strict=True)
        )
        region = labelled[found] == index
        for axis in range(mask.ndim):
            region = np.repeat(region, cell, axis=axis)
        region = region[tuple(slice(0, sl.stop - sl.start) for sl in box)]
        if (mask[box] & region).any():
            yield box, region


def plan_validation(
    samples: Sequence[Sample], rng: np.random.Generator, generalization_first: bool = False
) -> ValidationPlan:
    """Choose the crops every validation of a run predicts (see the module docstring)."""
    scored, weights, unchanged_total = _scored_corrections(samples, rng)
    crops = []
    for index, sample in enumerate(samples):
        held_out = sample.val_targets != IGNORE
        corrections = scored[index]
        mask = held_out.copy()
        if corrections is not None:
            mask |= (
                (corrections.corrected > 0)
                | (corrections.deleted > 0)
                | (corrections.unchanged > 0)
            )
        for box, region in regions(mask):
            crops.append(
                ValidationCrop(
                    index,
                    box,
                    held_out[box] & region,
                    region,
                    None if corrections is None else corrections.crop(box),
                )
            )
    return ValidationPlan(crops, weights, generalization_first, unchanged_total)


def _scored_corrections(
    samples: Sequence[Sample], rng: np.random.Generator
) -> tuple[list[CorrectionMap | None], tuple[float, float, float], int]:
    """Each sample's corrections, cut down to the most of each kind scored (see the caps).

    Each kind is drawn on its own (thousands of deleted specks must not
    crowd out the corrected objects); also returns how many objects each
    drawn one stands for, by kind, and the number of unchanged objects
    when they were sampled (else 0).
    """
    chosen: set[tuple[int, str, int]] = set()
    weights, totals = [], []
    caps = {
        "corrected": MAX_SCORED_CORRECTIONS,
        "deleted": MAX_SCORED_CORRECTIONS,
        "unchanged": MAX_SCORED_UNCHANGED,
    }
    for layer, cap in caps.items():
        objects = [
            (index, layer, int(i))
            for index, sample in enumerate(samples)
            if sample.corrections is not None
            for i in object_ids(getattr(sample.corrections, layer))
        ]
        weights.append(max(len(objects) / cap, 1.0))
        totals.append(len(objects) if len(objects) > cap else 0)
        if len(objects) > cap:
            drawn = rng.choice(len(objects), cap, replace=False)
            objects = [objects[i] for i in sorted(drawn)]
        chosen.update(objects)
    out: list[CorrectionMap | None] = []
    for index, sample in enumerate(samples):
        c = sample.corrections
        if c is None:
            out.append(None)
            continue
        kept_layers = {}
        for layer in caps:
            objects = getattr(c, layer)
            ids = [i for (s, name, i) in chosen if s == index and name == layer]
            kept_layers[layer] = np.where(np.isin(objects, ids), objects, 0)
        out.append(replace(c, **kept_layers))
    return out, (weights[0], weights[1], weights[2]), totals[2]


def instance_candidates(current: InstanceConfig) -> list[InstanceConfig]:
    """Return the instance settings a validation tries, the preferred first.

    First ``current`` (the parent's: the unchanged objects the user accepted
    were made with them), then the neutral settings (`InstanceConfig`'s
    defaults: threshold 0.5, no seed splitting; ``current``'s seed threshold
    and minimum size), then the other `_TUNED_THRESHOLDS` x `_TUNED_SPLITS`
    settings. `choose` keeps the first whose score is within a tolerance of
    the best (`tuning_tolerance`): other settings must reproduce clearly more
    (the bundled model's strict threshold and seed splitting thin and cut
    rod-shaped bacteria, which their corrections show), and a few objects
    rarely show a difference larger than noise.
    """
    neutral = InstanceConfig()
    grid = [
        current,
        replace(current, threshold=neutral.threshold, split_solidity=neutral.split_solidity),
        *(
            replace(current, threshold=threshold, split_solidity=split)
            for threshold in _TUNED_THRESHOLDS
            for split in _TUNED_SPLITS
        ),
    ]
    return list(dict.fromkeys(grid))


def tuning_tolerance(objects: int) -> float:
    """Return the score margin by which a later instance candidate must win.

    One scored object's worth (``1 / objects``), and at least
    `_TUNING_TOLERANCE`: with 4 held-out bacteria one lucky split moves AP
    by 0.25, which says nothing about the next images.
    """
    return max(_TUNING_TOLERANCE, 1.0 / max(objects, 1))


def evaluate(
    model: UNet,
    samples: Sequence[Sample],
    plan: ValidationPlan,
    candidates: Sequence[InstanceConfig],
    device: torch.device,
) -> list[ValidationResult]:
    """Score ``model`` on the crops of ``plan`` with each of the instance ``candidates``.

    The crops are predicted once; each candidate makes its own instances
    from the same probabilities. `choose` picks among the results.
    """
    was_training = model.training
    # float32: the corrections benchmark chose the validation rules in it
    # (bfloat16 would make validations cheaper; not measured yet).
    predictor = make_predictor(model, device, precision="fp32")
    n = len(candidates)
    matches = np.zeros((n, 3), np.int64)  # held-out tp, fp, fn
    overlap = np.zeros((n, 3), np.int64)  # held-out foreground: both, truth, prediction
    counts = [CorrectionCounts() for _ in candidates]
    loss_sum = loss_pixels = held_out_objects = fit_sum = fit_pixels = 0
    for crop in plan.crops:
        sample = samples[crop.sample]
        image = sample.image[(slice(None), *crop.box)]
        prob = predict_probabilities(predictor, image, model.config.out_channels)
        held = crop.held_out
        trained = sample.targets[crop.box]
        fitted = (trained != IGNORE) & crop.region
        if fitted.any():
            fit_sum += _cross_entropy(prob, trained, fitted)
            fit_pixels += int(fitted.sum())
        if held.any():
            t = sample.val_targets[crop.box]
            truth = np.where(held, sample.instances[crop.box], 0)
            held_out_objects += len(np.unique(truth)) - 1
            loss_sum += _cross_entropy(prob, t, held)
            loss_pixels += int(held.sum())
        for i, candidate in enumerate(candidates):
            labels = probabilities_to_labels(prob, model.config.output_kind, candidate)
            if held.any():
                matches[i] += match_counts(truth, labels, 0.5, held)
                predicted = (labels > 0) & held
                overlap[i] += (
                    np.count_nonzero(predicted & (truth > 0)),
                    np.count_nonzero(truth),
                    np.count_nonzero(predicted),
                )
            if crop.corrections is not None:
                counts[i] = counts[i] + count_corrections(labels, crop.corrections, crop.region)
    model.train(was_training)
    loss = loss_sum / loss_pixels if loss_pixels else np.nan
    fit_loss = fit_sum / fit_pixels if fit_pixels else np.nan
    results = []
    for i, candidate in enumerate(candidates):
        both, truth_px, predicted_px = overlap[i]
        union = truth_px + predicted_px
        scores = {
            "loss": loss,
            "dice": 2 * both / union if union else np.nan,
            "iou": both / (union - both) if union else np.nan,
            "ap50": pooled_precision(*matches[i]) if matches[i].sum() else np.nan,
            # Without corrections (training from scratch) the held-out score decides.
            "annotation_score": (counts[i].score(*plan.weights) if counts[i].to_fix else np.nan),
            "fit_loss": fit_loss,
        }
        results.append(
            ValidationResult(
                {k: float(v) for k, v in scores.items()},
                replace(counts[i], unchanged_total=plan.unchanged_total)
                if counts[i].scored
                else None,
                candidate,
                held_out_objects,
                plan.generalization_first,
            )
        )
    return results


def choose(results: Sequence[ValidationResult]) -> ValidationResult:
    """Return the first result within `tuning_tolerance` of the best.

    Judged on the corrections reproduced where corrections are known (and
    not `ValidationResult.generalization_first`), else on held-out AP@0.5.
    """
    reproduced = np.array([r.scores["annotation_score"] for r in results])
    if np.isfinite(reproduced).any() and not results[0].generalization_first:
        primary = reproduced
        objects = results[0].corrections.scored
    else:
        primary = np.array([r.scores["ap50"] for r in results])
        objects = results[0].held_out_objects
    if not np.isfinite(primary).any():
        return results[0]
    good = np.nan_to_num(primary, nan=-1) >= np.nanmax(primary) - tuning_tolerance(objects)
    return results[int(np.flatnonzero(good)[0])]


def predict_probabilities(predictor, image: np.ndarray, out_channels: int) -> np.ndarray:
    """Class probabilities of a normalized ``(C, *spatial)`` image, in tiles."""
    shape = image.shape[1:]
    return predict_tiled(
        lambda sl: image[(slice(None), *sl)],
        shape,
        predictor,
        out_channels,
        tuple(min(_VAL_TILE, s) for s in shape),
        out=np.empty((out_channels, *shape), np.float32),
    )


def _cross_entropy(prob: np.ndarray, targets: np.ndarray, where: np.ndarray) -> float:
    """Return the summed cross-entropy of the true classes over the pixels ``where``."""
    if prob.shape[0] == 1:
        p_true = np.where(targets > 0, prob[0], 1 - prob[0])
    else:
        classes = prob[:DISTANCE]  # without a distance channel, if the model has one
        index = np.where(where, targets, 0)[None].astype(np.intp)
        p_true = np.take_along_axis(classes, index, 0)[0]
    return float(-np.log(np.clip(p_true[where], 1e-6, 1)).sum())
