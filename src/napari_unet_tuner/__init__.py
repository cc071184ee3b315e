"""Segment microscopy images with a U-Net and fine-tune it on what you paint.

The package never imports Qt or napari at import time: everything here can
run in a script or on a cluster node without a display.
"""

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
from napari_unet_tuner.inference import (
    SegmentationProgress,
    SegmentationResult,
    iter_segment,
    segment,
)
from napari_unet_tuner.inference.chunked import (
    ChunkedResult,
    ChunkProgress,
    iter_segment_to_zarr,
    segment_to_zarr,
)
from napari_unet_tuner.io import FileImage
from napari_unet_tuner.model import (
    Checkpoint,
    UNet,
    default_checkpoint_path,
    import_state_dict,
    load_checkpoint,
    new_card,
    save_checkpoint,
)
from napari_unet_tuner.model.checkpoint import with_card
from napari_unet_tuner.training import (
    AnnotatedImage,
    CorrectionCounts,
    FineTuneResult,
    TrainingProgress,
    fine_tune,
    iter_fine_tune,
)

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
    "with_card",
]
