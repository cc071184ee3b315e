"""Segmentation: tiled prediction over array-likes and instance labels."""

from napari_unet_tuner.inference.device import available_devices, select_device
from napari_unet_tuner.inference.image import ImageReader, infer_axes
from napari_unet_tuner.inference.instances import labels_to_classes, probabilities_to_labels
from napari_unet_tuner.inference.pipeline import (
    SegmentationProgress,
    SegmentationResult,
    iter_segment,
    segment,
)
from napari_unet_tuner.inference.predictor import build_predictor, make_predictor
from napari_unet_tuner.inference.runtime_probe import RuntimeChoice
from napari_unet_tuner.inference.tiling import iter_predict_tiled, predict_tiled

__all__ = [
    "ImageReader",
    "RuntimeChoice",
    "SegmentationProgress",
    "SegmentationResult",
    "available_devices",
    "build_predictor",
    "infer_axes",
    "iter_predict_tiled",
    "iter_segment",
    "labels_to_classes",
    "make_predictor",
    "predict_tiled",
    "probabilities_to_labels",
    "segment",
    "select_device",
]
