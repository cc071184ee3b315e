"""What the user's silence says: background left alone is truth only where the model was sure.

A correction annotation starts as the prediction. Where the user changed
nothing, an object is an object they saw and accepted; but background they
left alone may be background they never looked at. Where the starting
model was sure of it (a low foreground probability), that costs nothing.
Where the model nearly found an object (a dim nucleus just under its
threshold), teaching it "background" there would teach it to drop the very
nuclei the user would add if they looked: the user who deletes five pieces
of junk and leaves a missed dim nucleus unpainted has not said that dim
nuclei are background. Those pixels are not trained on, and new objects
found there are not counted as false (`find_uncertain_background`).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING

import numpy as np
from scipy import ndimage

from napari_unet_tuner.training.targets import IGNORE

if TYPE_CHECKING:
    from napari_unet_tuner.training.data import Sample

# Grow the doubtful pixels by this much: the rim of a nearly-found nucleus is
# doubtful too.
_MARGIN = 2


def find_uncertain_background(
    samples: Sequence[Sample],
    foreground: Callable[[np.ndarray], np.ndarray],
    threshold: float,
) -> int:
    """Leave out of training the unchanged background where the starting model was unsure.

    Parameters
    ----------
    samples : sequence of Sample
        Samples of corrections with a known prediction (others are left as
        they are); their targets and correction maps are changed in place.
    foreground : callable
        Foreground probability of the starting model for a sample's image.
    threshold : float
        Unchanged background with a foreground probability at least this
        is left out (1.0 or more: none).

    Returns
    -------
    int
        Pixels left out.
    """
    if threshold >= 1.0:
        return 0
    left_out = 0
    for sample in samples:
        corrections = sample.corrections
        if corrections is None or corrections.scribbles or not corrections.fix_mask.any():
            continue
        silent = (sample.instances == 0) & ~corrections.fix_mask & (sample.targets != IGNORE)
        doubtful = ndimage.binary_dilation(
            foreground(sample.image) >= threshold, iterations=_MARGIN
        )
        doubtful &= silent
        sample.targets[doubtful] = IGNORE
        corrections.known[doubtful] = False
        left_out += int(np.count_nonzero(doubtful))
    return left_out
