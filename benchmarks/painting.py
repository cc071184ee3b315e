"""Simulated user painting: sparse scribbles from full instance masks.

What a biologist does in napari with a brush: fill about ``n_objects``
objects completely (one label each) and draw a few thick background strokes,
some of them running between objects, leaving everything else unannotated.
"""

from __future__ import annotations

import numpy as np
from scipy import ndimage
from skimage.draw import line

from napari_unet_tuner.training.targets import SCRIBBLE_BACKGROUND


def paint_scribbles(
    masks: list[np.ndarray], n_objects: int = 20, strokes_per_image: int = 4, seed: int = 0
) -> list[np.ndarray]:
    """Return one scribble annotation per mask: 0 unannotated, 1 background, 2.. objects."""
    rng = np.random.default_rng(seed)
    ids = [(i, v) for i, m in enumerate(masks) for v in np.unique(m) if v]
    chosen = [ids[k] for k in rng.permutation(len(ids))[:n_objects]]
    out = [np.zeros(m.shape, np.uint16) for m in masks]
    for value, (i, v) in enumerate(chosen, start=2):
        out[i][masks[i] == v] = value
    for i, mask in enumerate(masks):
        foreground = ndimage.binary_dilation(mask > 0, iterations=2)
        near = ndimage.binary_dilation(mask > 0, iterations=40)
        for k in range(strokes_per_image):
            # Half the strokes near the objects (where mistakes are), half anywhere.
            pool = np.argwhere(near & ~foreground) if k % 2 == 0 else np.argwhere(~foreground)
            a, b = pool[rng.integers(len(pool), size=2)]
            rr, cc = line(*a, *b)
            stroke = np.zeros(mask.shape, bool)
            stroke[rr, cc] = True
            stroke = ndimage.binary_dilation(stroke, iterations=3) & ~foreground
            out[i][stroke & (out[i] == 0)] = SCRIBBLE_BACKGROUND
    return out
