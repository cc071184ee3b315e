"""The card of a fine-tuned model: what it inherits from its parent and how it was made."""

from __future__ import annotations

from dataclasses import asdict
from typing import Any

from napari_unet_tuner.config import ModelConfig
from napari_unet_tuner.model.checkpoint import ModelCard, new_card
from napari_unet_tuner.model.history import fixed_counts


def child_card(
    card: ModelCard,
    model_config: ModelConfig,
    run: dict[str, Any],
    instances: dict[str, Any],
    name: str | None,
    from_checkpoint: bool,
) -> ModelCard:
    """Return the card of a model trained from ``card``'s model by ``run``.

    Parameters
    ----------
    card : ModelCard
        The starting model's card (or the fresh card of a model trained
        from scratch): normalization, channels, description are inherited.
    model_config : ModelConfig
        The architecture.
    run : dict
        The training run, as recorded (its ``"parent"`` becomes the card's).
    instances : dict
        Instance settings chosen during the run.
    name : str or None
        The new model's name; by default the parent's with "(fine-tuned)".
    from_checkpoint : bool
        Whether the run started from a checkpoint rather than from scratch.
    """
    default_name = (
        f"{card.name} (fine-tuned)" if from_checkpoint else "U-Net (trained from scratch)"
    )
    # new_card stamps the creation time and package version; the rest is inherited.
    inherited = {k: v for k, v in asdict(card).items() if k not in ("created", "package_version")}
    inherited.update(
        name=name or default_name,
        description=describe_child(card, run, instances) if from_checkpoint else card.description,
        parent=run["parent"],
        training=(*card.training, run),
        instances=instances,
    )
    return new_card(model_config, **inherited)


STARTING_MODEL = "Started from: "
"""Where a child's description quotes the description of the model its line began with."""


def describe_child(parent: ModelCard, run: dict[str, Any], instances: dict[str, Any]) -> str:
    """Say what a fine-tuned model was trained and scored on, apart from its parent's claims.

    The parent's figures (e.g. a score on some data set) are the parent's:
    they are quoted as the starting model's, never as the child's.
    """
    annotation = run.get("annotation") or {}
    images = annotation.get("images") or []
    parts = [
        f"Fine-tuned from {parent.name} on {len(images) or 'some'} annotated image(s)"
        + (f" ({', '.join(images)})" if images else "")
        + f", {annotation.get('objects', '?')} objects."
    ]
    fixed = [f"{right} of {total} {word}" for word, right, total in fixed_counts(run)]
    if fixed:
        parts.append(f"On that annotation: {', '.join(fixed)}.")
    before, now = run.get("scores_before") or {}, run.get("scores_after") or {}
    if run.get("validation_held_out") and isinstance(now.get("ap50"), float):
        parts.append(
            f"Held-out objects of those images (never trained on): AP50 "
            f"{before.get('ap50', float('nan')):.2f} -> {now['ap50']:.2f}. "
            "Not scored on other images."
        )
    else:
        parts.append("Not scored on any image it was not trained on.")
    changed = [
        f"{key} {parent.instances.get(key)} -> {value}"
        for key, value in instances.items()
        if parent.instances.get(key) != value
    ]
    if changed:
        parts.append(f"Instance settings changed: {', '.join(changed)}.")
    root = parent.description.split(STARTING_MODEL, 1)[-1]
    parts.append(f"{STARTING_MODEL}{root}")
    return " ".join(parts)
