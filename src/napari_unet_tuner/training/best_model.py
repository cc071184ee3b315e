"""The models a fine-tuning run keeps, and when it stops."""

from __future__ import annotations

import copy
from dataclasses import dataclass, field

import torch

from napari_unet_tuner.training.validation import ValidationResult
from napari_unet_tuner.training.verdict import all_reproduced

# Validations in a row at which every correction is fixed and every
# unchanged object right before a run stops: learned, and confirmed once.
PERFECT_TO_STOP = 2


def _weights(model: torch.nn.Module) -> dict:
    return copy.deepcopy(model.state_dict())


@dataclass
class BestModel:
    """The best validation of a run so far, its weights, and how long since it was beaten.

    Also keeps the *candidate*: the model that got most corrections right,
    when that is more than the starting model got, whatever it cost (the
    model a user may keep anyway when the run learned nothing).

    Attributes
    ----------
    before : ValidationResult
        The starting model's validation (with its own instance settings).
    best : ValidationResult
        The best validation so far (`ValidationResult.rank`).
    state : dict
        The best model's weights.
    step : int
        Step of the best validation (0: the starting model).
    since_best : int
        Validations since the best one (reset while the fit still improves).
    perfect_in_a_row : int
        Validations in a row at which everything reviewed was right.
    candidate, candidate_state
        The model that got most corrections right, if any got more than
        ``before``, and its weights.
    """

    before: ValidationResult
    best: ValidationResult
    state: dict
    step: int = 0
    since_best: int = 0
    perfect_in_a_row: int = 0
    best_fit: float = float("inf")
    candidate: ValidationResult | None = None
    candidate_state: dict | None = field(default=None, repr=False)

    @classmethod
    def start(
        cls, before: ValidationResult, best: ValidationResult, model: torch.nn.Module
    ) -> BestModel:
        """Track a run from the starting model's validations."""
        return cls(before, best, _weights(model), best_fit=best.scores["fit_loss"])

    def consider(self, result: ValidationResult, model: torch.nn.Module, step: int) -> None:
        """Take in the validation of ``model`` at ``step``."""
        # A model that lost the held-out objects is never the best, only offered.
        if result.rank() > self.best.rank() and not result.held_out_fell(self.before):
            self.best, self.state, self.step, self.since_best = result, _weights(model), step, 0
        elif result.scores["fit_loss"] < self.best_fit:
            # Still learning the annotation: on a labelling whose objects are
            # all reproduced, a sampled object flipping back and forth must not
            # end the run while the model keeps getting better at the rest.
            self.since_best = 0
        else:
            self.since_best += 1
        self.best_fit = min(self.best_fit, result.scores["fit_loss"])
        self.perfect_in_a_row = self.perfect_in_a_row + 1 if all_reproduced(result) else 0
        if _better_candidate(result, self.candidate, self.before):
            self.candidate, self.candidate_state = result, _weights(model)

    def unfinished(self) -> bool:
        """Whether a review's best model still misses some of its corrections."""
        counts = self.best.corrections
        return (
            not self.best.generalization_first
            and counts is not None
            and counts.fixed < counts.to_fix
        )


def _better_candidate(
    result: ValidationResult, candidate: ValidationResult | None, before: ValidationResult
) -> bool:
    """More corrections right than ``before`` and than ``candidate`` (ties: the higher rank)."""
    mine, start = result.corrections, before.corrections
    if mine is None or start is None or mine.fixed <= start.fixed:
        return False
    if candidate is None or candidate.corrections is None:
        return True
    # Ties on the corrections go to the better rank as a whole: of two models
    # that delete all the junk reviewed, the one that keeps more of the rest.
    return (mine.fixed, result.rank()) > (candidate.corrections.fixed, candidate.rank())


def stop_reason(tracker: BestModel, patience: int, stopped: bool, out_of_time: bool) -> str | None:
    """Why a run stops after a validation, or ``None`` to go on.

    Early stopping only once something was learned: a few corrections can
    take most of the budget, and stopping before would keep the parent
    unseen. And not while a review's corrections are not all fixed: the
    user gave the budget for them.
    """
    if stopped:
        return "stopped"
    if out_of_time:
        return "time"
    # Everything reviewed right, but the best is still the starting model (the
    # others lost the held-out objects): go on, a later model may keep them.
    if tracker.perfect_in_a_row >= PERFECT_TO_STOP and tracker.step > 0:
        return "learned"
    if tracker.step > 0 and tracker.since_best >= patience and not tracker.unfinished():
        return "early stopping"
    return None
