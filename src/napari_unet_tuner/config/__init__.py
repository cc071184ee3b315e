"""Typed configuration objects, one per concern, each with a dict round trip.

The dicts are what a checkpoint stores as JSON, so every field is a plain
JSON value and ``from_dict`` rejects keys it does not know: a typo in a
hand-edited file is an error, not a silently ignored setting.
"""

from __future__ import annotations

from napari_unet_tuner.config.base import OutputKind
from napari_unet_tuner.config.inference import (
    PRECISIONS,
    RUNTIMES,
    SEGMENT_STACK_MODES,
    STACK_MODES,
    ChunkedConfig,
    InferenceConfig,
    InstanceConfig,
    Precision,
    Runtime,
    StackMode,
    parse_diameter,
    resolve_stack,
)
from napari_unet_tuner.config.model import (
    OUTPUT_DESCRIPTIONS,
    ModelCard,
    ModelConfig,
    NormalizationConfig,
)
from napari_unet_tuner.config.training import TrainingConfig

__all__ = [
    "OUTPUT_DESCRIPTIONS",
    "PRECISIONS",
    "RUNTIMES",
    "SEGMENT_STACK_MODES",
    "STACK_MODES",
    "ChunkedConfig",
    "InferenceConfig",
    "InstanceConfig",
    "ModelCard",
    "ModelConfig",
    "NormalizationConfig",
    "OutputKind",
    "Precision",
    "Runtime",
    "StackMode",
    "parse_diameter",
    "resolve_stack",
    "TrainingConfig",
]
