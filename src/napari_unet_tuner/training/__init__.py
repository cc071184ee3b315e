"""Fine-tuning on user annotations (corrections or sparse scribbles)."""

from napari_unet_tuner.training.counting import CorrectionCounts
from napari_unet_tuner.training.data import AnnotatedImage
from napari_unet_tuner.training.live import LiveTrainer
from napari_unet_tuner.training.losses import masked_loss
from napari_unet_tuner.training.targets import (
    IGNORE,
    SCRIBBLE_BACKGROUND,
    SCRIBBLE_UNLABELED,
    annotation_to_targets,
    check_annotation,
)
from napari_unet_tuner.training.trainer import (
    FineTuneResult,
    TrainingProgress,
    fine_tune,
    iter_fine_tune,
)

__all__ = [
    "AnnotatedImage",
    "CorrectionCounts",
    "IGNORE",
    "LiveTrainer",
    "SCRIBBLE_BACKGROUND",
    "SCRIBBLE_UNLABELED",
    "FineTuneResult",
    "TrainingProgress",
    "annotation_to_targets",
    "check_annotation",
    "fine_tune",
    "iter_fine_tune",
    "masked_loss",
]
