"""The scale annotated images are learned at; the object size of a model trained from scratch."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import replace

import numpy as np
import torch

from napari_unet_tuner.config import InferenceConfig
from napari_unet_tuner.inference.image import ImageReader, infer_axes
from napari_unet_tuner.inference.object_size import choose_object_size, median_diameter
from napari_unet_tuner.inference.predictor import make_predictor
from napari_unet_tuner.model.checkpoint import Checkpoint
from napari_unet_tuner.training.data import AnnotatedImage, Sample


def resolve_scales(
    annotated: Sequence[AnnotatedImage], checkpoint: Checkpoint | None, device: torch.device
) -> list[AnnotatedImage]:
    """Return the annotated images with ``"auto"`` scales replaced by numbers.

    ``"auto"`` is the scale segmenting the image with ``checkpoint`` uses
    (its automatic object size), so that the model learns objects at the
    size it will see them; 1.0 from scratch, for 3D models, and for models
    whose card gives no object size.
    """
    out = []
    predictor = None
    for item in annotated:
        if item.scale != "auto":
            out.append(item)
            continue
        if item.stack == "3d":  # 3D objects are segmented, so learned, at scale 1
            out.append(replace(item, scale=1.0))
            continue
        scale = 1.0
        if (
            checkpoint is not None
            and checkpoint.card.object_diameter is not None
            and checkpoint.model_config.spatial_dims == 2
        ):
            config = checkpoint.model_config
            if predictor is None:
                predictor = make_predictor(checkpoint.build_model(device), device)
            shape = tuple(int(s) for s in item.image.shape)
            reader = ImageReader(
                item.image,
                item.axes or infer_axes(shape, 2, config.in_channels),
                2,
                config.in_channels,
                checkpoint.card.normalization_config,
            )
            size = choose_object_size(
                reader, predictor, checkpoint, InferenceConfig(), checkpoint.card.instance_config
            )
            scale = 1.0 if size is None else size.scale
        out.append(replace(item, scale=scale))
    return out


def annotated_diameter(samples: Sequence[Sample]) -> float | None:
    """Median diameter of the annotated objects (``None`` if too few are whole).

    The object size of a model trained from scratch on them.
    """
    if not samples or samples[0].instances.ndim != 2:
        return None
    diameters = []
    for sample in samples:
        diameter, count = median_diameter(sample.instances)
        if diameter is not None:
            diameters += [diameter] * count
    return round(float(np.median(diameters)), 1) if diameters else None
