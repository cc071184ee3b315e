"""What fine-tuning reports: progress records, the result, and what was learned in words."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

from napari_unet_tuner.model.checkpoint import Checkpoint
from napari_unet_tuner.training.counting import CorrectionCounts


@dataclass(frozen=True)
class TrainingProgress:
    """A progress record, yielded after every step and after every validation.

    Attributes
    ----------
    kind : {"validation", "step", "preview", "final", "offer"}
        ``"validation"`` records carry ``scores`` (the first, at step 0, is the
        starting model's); ``"preview"`` records carry a ``snapshot`` of the
        current weights for a live preview; the ``"final"`` record, the last,
        carries the scores of the model the run keeps (the starting model's
        when nothing was learned): what the verdict reports. `LiveTrainer`
        yields ``"offer"`` records, with the offered model as ``snapshot``.
    step, epoch : int
        Optimizer steps and validations done.
    loss : float or None
        Training loss of the last step.
    scores : dict or None
        Validation scores (`ValidationResult.scores`): held-out ``loss``,
        ``dice``, ``iou``, ``ap50``, and the ``annotation_score``.
    best_score : float or None
        Held-out AP@0.5 of the model kept if stopped now.
    seconds_per_step : float
        Mean wall time of a training step.
    elapsed, eta : float
        Seconds since the start (everything included), and seconds left of
        the budget.
    snapshot : Checkpoint or None
        Current weights (CPU copy) on ``"preview"`` records; the model offered
        on ``"offer"`` records.
    corrections : CorrectionCounts or None
        On validation and final records: the model's counts on the annotation.
    """

    kind: Literal["validation", "step", "preview", "final", "offer"]
    step: int
    epoch: int
    loss: float | None
    scores: dict[str, float] | None
    best_score: float | None
    seconds_per_step: float
    elapsed: float
    eta: float
    snapshot: Checkpoint | None = None
    corrections: CorrectionCounts | None = None

    @property
    def steps_per_second(self) -> float:
        """Training steps per second of training time."""
        return 1.0 / self.seconds_per_step if self.seconds_per_step > 0 else 0.0


@dataclass(frozen=True)
class FineTuneResult:
    """What a finished run produced.

    Attributes
    ----------
    checkpoint : Checkpoint
        The best model, with its card recording parent, settings and
        scores; the starting checkpoint itself when nothing was learned.
    scores_before, scores_after : dict
        Validation scores of the starting model and of the kept one.
    path : Path or None
        Where the checkpoint was saved (never when nothing was learned).
    stop_reason : str
        ``"time"``, ``"epochs"``, ``"early stopping"``, ``"learned"``
        (every correction reproduced) or ``"stopped"``.
    held_out : bool
        Whether validation used held-out regions.
    learned : bool
        False when no step did better than the starting model: the result
        is the parent and must not be shown as a new version.
    corrections_before, corrections_after : CorrectionCounts or None
        The counts of the starting and of the kept model (the same when
        nothing was learned: a discarded model's are never reported here).
    message : str
        What happened, in plain words, for the user (`napari_unet_tuner.training.verdict`).
    candidate : Checkpoint or None
        When nothing was learned but a model got more corrections right at
        the cost of other objects (the message says which): that model, for
        a user who keeps it anyway. Never saved by the run.
    candidate_corrections : CorrectionCounts or None
        The candidate's counts.
    """

    checkpoint: Checkpoint
    scores_before: dict[str, float]
    scores_after: dict[str, float]
    path: Path | None
    stop_reason: str
    held_out: bool
    history: list[TrainingProgress] = field(default_factory=list)
    learned: bool = True
    corrections_before: CorrectionCounts | None = None
    corrections_after: CorrectionCounts | None = None
    message: str = ""
    candidate: Checkpoint | None = None
    candidate_corrections: CorrectionCounts | None = None


def counts_dict(counts: CorrectionCounts | None) -> dict[str, int] | None:
    """Return the counts as a dict for the model card (``None`` stays ``None``)."""
    return None if counts is None else counts.to_dict()
