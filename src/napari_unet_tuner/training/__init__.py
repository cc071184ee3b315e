"""Fine-tuning on user annotations (corrections or sparse scribbles)."""

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
    evaluate,
    fine_tune,
    iter_fine_tune,
    masked_loss,
)

__all__ = [
    "IGNORE",
    "SCRIBBLE_BACKGROUND",
    "SCRIBBLE_UNLABELED",
    "FineTuneResult",
    "TrainingProgress",
    "annotation_to_targets",
    "check_annotation",
    "evaluate",
    "fine_tune",
    "iter_fine_tune",
    "masked_loss",
]
