"""A model's training history, as recorded in its card, in words."""

from __future__ import annotations


def describe_training_run(run: dict) -> str:
    """Return one line in words for a training run recorded in a model card.

    When it ran, how long, how it stopped, and what it learned; used by
    ``unet-tuner info`` and the widget's model card.
    """
    parts = [
        str(run.get("started", "?")),
        f"{run.get('seconds', '?')} s",
        f"{run.get('steps', '?')} steps on {run.get('device', '?')}",
        f"stopped by {run.get('stop_reason', '?')}",
    ]
    parts += [f"{word} {right}/{total}" for word, right, total in fixed_counts(run)]
    if run.get("kept_anyway"):
        parts.append("kept by the user although the run learned nothing by its score")
    before, now = run.get("scores_before") or {}, run.get("scores_after") or {}
    ap_before, ap_after = before.get("ap50"), now.get("ap50")
    if isinstance(ap_after, float) and ap_after == ap_after:  # not NaN
        parts.append(f"held-out AP50 {ap_before:.2f} -> {ap_after:.2f}")
    return ", ".join(parts)


def fixed_counts(run: dict) -> list[tuple[str, int, int]]:
    """Return ``(words, right, total)`` for the corrected and deleted objects of a recorded run.

    Only the kinds the user made (a run with no deleted objects lists none).
    """
    after = run.get("corrections_after") or {}
    return [
        (word, after.get(right), after.get(kind))
        for kind, right, word in (
            ("corrected", "corrected_right", "corrected objects right"),
            ("deleted", "deleted_gone", "deleted objects gone"),
        )
        if after.get(kind)
    ]
