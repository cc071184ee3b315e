"""Whether a fine-tuning run learned, and what it says to the user.

One rule and one set of words (the glossary of
`napari_unet_tuner.training.corrections`) for the command line, the widget
and the API: a run learned when its best model scores higher on what the
user reviewed (`CorrectionCounts.score`, or held-out AP for a labelling)
than the starting model. A run whose models got more corrections right
only by losing unchanged objects or adding false ones did not learn; its
verdict names that trade-off, and the model is offered to keep anyway.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from napari_unet_tuner.training.counting import CorrectionCounts
from napari_unet_tuner.training.validation import ValidationResult

# A fall in held-out Dice beyond this is said in the verdict even when AP
# holds: objects still found, but drawn larger or smaller than before.
DICE_DROP = 0.05


@dataclass(frozen=True)
class Verdict:
    """What a run learned.

    Attributes
    ----------
    learned : bool
        The best model is better than the starting one on what was reviewed.
    message : str
        The verdict in plain words.
    trade_off : bool
        Nothing was learned, but a model got more corrections right at the
        cost of other objects: it is offered to keep anyway.
    """

    learned: bool
    message: str
    trade_off: bool = False


def all_reproduced(result: ValidationResult) -> bool:
    """Whether every correction is fixed and every unchanged object right."""
    c = result.corrections
    return (
        c is not None and c.to_fix > 0 and c.fixed == c.to_fix and c.unchanged_right == c.unchanged
    )


def judge(
    before: ValidationResult,
    best: ValidationResult,
    best_step: int,
    candidate: ValidationResult | None,
    seconds: float,
    steps: int,
) -> Verdict:
    """Decide whether a run learned and say so.

    Parameters
    ----------
    before, best : ValidationResult
        The starting model's validation and the best one of the run.
    best_step : int
        Step of the best validation (0: the starting model).
    candidate : ValidationResult or None
        The run's model that got most corrections right, when it got more
        than the starting model.
    seconds, steps : float, int
        Length of the run.
    """
    # Learned means more of what the user reviewed (or of the held-out part of
    # a labelling) is right, not a loss that moved in its fourth decimal.
    learned = best.improves_on(before) or (best_step > 0 and not math.isfinite(best.rank()[0]))
    if learned:
        return Verdict(True, _describe_learned(before, best, seconds, steps))
    counts = before.corrections
    if counts is not None and counts.to_fix and all_reproduced(before):
        return Verdict(False, "nothing was learned: the model already got every correction right")
    if candidate is not None and candidate.corrections is not None and counts is not None:
        return Verdict(False, _describe_trade_off(before, candidate), trade_off=True)
    return Verdict(
        False,
        "nothing was learned: no model of the run got more of the corrections right than the "
        f"starting model ({steps} steps in {seconds:.0f} s); give it more time or correct "
        "more objects",
    )


def compare(before: CorrectionCounts, after: CorrectionCounts) -> str:
    """Each count before and after, e.g. ``corrected objects right 3/6 -> 6/6 · ...``."""
    parts = []
    for (name, old, total), (_, new, _) in zip(before.parts(), after.parts(), strict=True):
        parts.append(f"{name} {old}/{total}" + (f" -> {new}/{total}" if new != old else ""))
    if parts:
        parts[-1] += after.sample_note
    if before.false or after.false:
        change = f" -> {after.false}" if after.false != before.false else ""
        parts.append(f"new false objects {before.false}{change}")
    return " · ".join(parts)


def _describe_learned(
    before: ValidationResult, after: ValidationResult, seconds: float, steps: int
) -> str:
    counts = after.corrections
    if counts is not None and counts.to_fix and before.corrections is not None:
        text = f"learned in {seconds:.0f} s: {compare(before.corrections, counts)}"
        lost, added = _costs(before.corrections, counts)
        if lost or added:
            # Learned by the count, at a cost the count weighs as just as many
            # objects: on DSB2018 such a model did worse on the image's other half.
            costs = [f"lost {lost} unchanged object" + "s" * (lost > 1)] if lost else []
            if added:
                costs.append(f"added {added} false " + ("ones" if added > 1 else "one"))
            text += f" (it also {' and '.join(costs)}: look at what it changed before keeping it)"
    else:
        text = f"trained {steps} steps in {seconds:.0f} s"
    ap_before, ap_after = before.scores["ap50"], after.scores["ap50"]
    if math.isfinite(ap_before) and math.isfinite(ap_after):
        text += f"; held-out AP50 {ap_before:.2f} -> {ap_after:.2f}"
    dice_before, dice_after = (
        before.scores.get("dice", math.nan),
        after.scores.get("dice", math.nan),
    )
    if dice_before - dice_after > DICE_DROP:  # NaN compares False: no held-out part
        text += (
            f", but held-out Dice fell {dice_before:.2f} -> {dice_after:.2f}: the outlines "
            "of objects it was not trained on changed; look at them before keeping it"
        )
    return text


def _costs(before: CorrectionCounts, after: CorrectionCounts) -> tuple[int, int]:
    """Unchanged objects ``after`` lost and false objects it added, beyond ``before``'s (>= 0)."""
    lost = after.unchanged_lost - before.unchanged_lost
    return max(lost, 0), max(after.false - before.false, 0)


def _describe_trade_off(start: ValidationResult, offered: ValidationResult) -> str:
    before, candidate = start.corrections, offered.corrections
    costs = []
    lost, added = _costs(before, candidate)
    if lost:
        costs.append(f"lost {lost} of {candidate.unchanged} unchanged objects")
    if added:
        costs.append(f"added {added} false object" + ("s" if added > 1 else ""))
    if offered.held_out_fell(start):
        costs.append(
            f"held-out objects fell to AP50 {offered.scores['ap50']:.2f} "
            f"(from {start.scores['ap50']:.2f})"
        )
    cost = " and ".join(costs) or "got fewer of the other objects right"
    # Advice for what the user can see: lost objects are theirs to correct;
    # the false objects of a model they were not shown are not.
    if lost:
        advice = "Correct a few of the objects it lost and fine-tune again"
    elif before.deleted and not before.corrected and not before.unchanged:
        # Only deletions reviewed: deleting everything gets them all right.
        advice = (
            "You only deleted objects, so nothing tells it what to keep: also review a few "
            "objects it got right (keep them as they are) and fine-tune again"
        )
    else:
        advice = "Fine-tune again, longer or with a few more corrections"
    return (
        f"nothing was learned: a model got {candidate.fixed} of {candidate.to_fix} corrections "
        f"right ({before.fixed} before) but {cost}; kept the starting model. {advice}, or "
        "keep that model anyway"
    )
