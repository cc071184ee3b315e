"""The card of a fine-tuned model: what it inherits from its parent and how it was made."""

from __future__ import annotations

from dataclasses import asdict
from typing import Any

from napari_unet_tuner.config import ModelConfig
from napari_unet_tuner.model.checkpoint import ModelCard, new_card


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
        parent=run["parent"],
        training=(*card.training, run),
        instances=instances,
    )
    return new_card(model_config, **inherited)
