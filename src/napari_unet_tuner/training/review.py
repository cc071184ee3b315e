"""What a user reviewed: the pixels looked at, object by object, and everything painted.

A review (the widget's review panel, or a simulated reviewer) marks each
object or place it showed; the mask handed to fine-tuning
(`AnnotatedImage.reviewed`) is those pixels and `REVIEW_MARGIN` around them,
plus every pixel the user changed anywhere (it was looked at too).
"""

from __future__ import annotations

import numpy as np
from scipy import ndimage

# Pixels around a reviewed object that count as reviewed: its rim and the
# background next to it were in view too.
REVIEW_MARGIN = 4


def around(seen: np.ndarray) -> np.ndarray:
    """Return ``seen`` (bool) grown by `REVIEW_MARGIN` pixels: what was in view with it."""
    return ndimage.binary_dilation(seen, iterations=REVIEW_MARGIN)


def reviewed_region(
    reviewed: np.ndarray | None, annotation: np.ndarray, prediction: np.ndarray | None
) -> np.ndarray | None:
    """Return the mask to fine-tune on: what the review marked, and every change around it.

    ``None`` (all of the annotation is truth) when nothing was marked: a
    layer painted freely, without a review.
    """
    if reviewed is None or not reviewed.any():
        return None
    if prediction is None:
        return reviewed
    return reviewed | around(annotation != np.asarray(prediction))
