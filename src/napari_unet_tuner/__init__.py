"""Segment microscopy images with a U-Net and fine-tune it on what you paint.

The package never imports Qt or napari at import time: everything here can
run in a script or on a cluster node without a display.
"""

import importlib
from importlib.metadata import PackageNotFoundError, version

try:
    __version__ = version("napari-unet-tuner")
except PackageNotFoundError:  # running from a source tree that is not installed
    __version__ = "0.0.0+unknown"

from napari_unet_tuner.config import (
    ChunkedConfig,
    InferenceConfig,
    InstanceConfig,
    ModelCard,
    ModelConfig,
    NormalizationConfig,
    TrainingConfig,
)
from napari_unet_tuner.errors import CheckpointError, ConfigError, InputError, UnetTunerError

# The rest is imported on first use (PEP 562): ``unet-tuner --help`` and
# config-only scripts do not pay for torch, dask and scikit-image.
_LAZY = {
    "SegmentationProgress": "napari_unet_tuner.inference.pipeline",
    "SegmentationResult": "napari_unet_tuner.inference.pipeline",
    "iter_segment": "napari_unet_tuner.inference.pipeline",
    "segment": "napari_unet_tuner.inference.pipeline",
    "ChunkedResult": "napari_unet_tuner.inference.chunked",
    "ChunkProgress": "napari_unet_tuner.inference.chunked",
    "iter_segment_to_zarr": "napari_unet_tuner.inference.chunked",
    "segment_to_zarr": "napari_unet_tuner.inference.chunked",
    "FileImage": "napari_unet_tuner.io",
    "Checkpoint": "napari_unet_tuner.model.checkpoint",
    "default_checkpoint_path": "napari_unet_tuner.model.checkpoint",
    "load_checkpoint": "napari_unet_tuner.model.loading",
    "new_card": "napari_unet_tuner.model.checkpoint",
    "with_card": "napari_unet_tuner.model.checkpoint",
    "UNet": "napari_unet_tuner.model.unet",
    "save_checkpoint": "napari_unet_tuner.model.saving",
    "import_state_dict": "napari_unet_tuner.model.torch_import",
    "AnnotatedImage": "napari_unet_tuner.training.data",
    "CorrectionCounts": "napari_unet_tuner.training.corrections",
    "FineTuneResult": "napari_unet_tuner.training.records",
    "TrainingProgress": "napari_unet_tuner.training.records",
    "fine_tune": "napari_unet_tuner.training.trainer",
    "iter_fine_tune": "napari_unet_tuner.training.trainer",
    "LiveTrainer": "napari_unet_tuner.training.live",
}


def __getattr__(name: str):
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value  # later lookups skip this function
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_LAZY))


__all__ = [
    "AnnotatedImage",
    "CorrectionCounts",
    "Checkpoint",
    "ChunkProgress",
    "ChunkedConfig",
    "ChunkedResult",
    "FileImage",
    "iter_segment_to_zarr",
    "segment_to_zarr",
    "CheckpointError",
    "ConfigError",
    "InferenceConfig",
    "InputError",
    "InstanceConfig",
    "ModelCard",
    "ModelConfig",
    "NormalizationConfig",
    "SegmentationProgress",
    "SegmentationResult",
    "UNet",
    "UnetTunerError",
    "__version__",
    "import_state_dict",
    "iter_segment",
    "load_checkpoint",
    "new_card",
    "save_checkpoint",
    "segment",
    "TrainingConfig",
    "FineTuneResult",
    "TrainingProgress",
    "default_checkpoint_path",
    "fine_tune",
    "iter_fine_tune",
    "LiveTrainer",
    "with_card",
]
