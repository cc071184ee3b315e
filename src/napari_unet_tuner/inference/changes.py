"""What a new model version changed: objects of a segmentation unlike the previous one's.

After fine-tuning, the new model is right on what the user corrected, but it
may also have changed objects nobody looked at: deleted junk like the junk
the user deleted (good), or split nuclei like the cluster the user split
(bad). Only the user can tell, so the review queue shows these changes first
(`review_queue`'s ``changes``).

A *new* object matches no previous object (IoU < `SAME_OBJECT_IOU`): added,
redrawn, split or merged. A *lost* object is a previous object whose place
is now mostly background; a previous object now split or merged is shown by
its new pieces, not again as lost.
"""

from __future__ import annotations

import numpy as np
import pandas as pd
from scipy import ndimage
from skimage.measure import regionprops_table

from napari_unet_tuner.inference.overlaps import best_ious

# At or above this IoU an object is the same object in both versions (the
# matching criterion of AP@0.5).
SAME_OBJECT_IOU = 0.5
# A previous object with less than this share of its pixels under objects of
# the new version is lost; with more, the new objects over it show the change.
LOST_COVER = 0.5


def changed_objects(
    previous: np.ndarray, labels: np.ndarray, reviewed: np.ndarray | None = None
) -> pd.DataFrame:
    """Objects of ``labels`` new against ``previous``, and objects of ``previous`` lost.

    Parameters
    ----------
    previous : numpy.ndarray of int
        Labels of the earlier version (e.g. the starting model's prediction).
    labels : numpy.ndarray of int
        Labels of the new version, of the same shape.
    reviewed : numpy.ndarray of bool, optional
        What the user already judged: objects mostly inside it are left out.

    Returns
    -------
    pandas.DataFrame
        One row per change, largest first: ``change`` ("new" or "lost"),
        ``label`` (the object's id in ``labels``; 0 for a lost one), ``area``
        and ``centroid-<axis>``.
    """
    previous, labels = np.asarray(previous), np.asarray(labels)
    if previous.shape != labels.shape:
        raise ValueError(
            f"the previous labels have shape {previous.shape} but the new ones {labels.shape}: "
            "compare two segmentations of the same image"
        )
    new = _table(labels, best_ious(labels, previous) < SAME_OBJECT_IOU)
    covered = ndimage.mean(labels > 0, previous, index=np.arange(int(previous.max()) + 1))
    lost_ids = np.asarray(covered) < LOST_COVER
    lost = _table(previous, lost_ids)
    lost["label"] = 0
    parts = []
    for change, table, source in (("new", new, labels), ("lost", lost, previous)):
        if reviewed is not None and len(table):
            # Share of each object inside the reviewed mask.
            inside = ndimage.mean(np.asarray(reviewed, bool), source, index=table["id"].to_numpy())
            table = table[np.asarray(inside) <= 0.5]
        parts.append(table.assign(change=change))
    changes = pd.concat(parts, ignore_index=True).drop(columns="id")
    columns = ["change", "label", "area", *[c for c in changes if c.startswith("centroid-")]]
    return changes.sort_values("area", ascending=False, kind="stable")[columns].reset_index(
        drop=True
    )


def _table(labels: np.ndarray, chosen: np.ndarray) -> pd.DataFrame:
    """Area and centroid of the objects of ``labels`` whose id is ``True`` in ``chosen``."""
    chosen = chosen.copy()
    chosen[0] = False
    ids = np.flatnonzero(chosen)
    if not len(ids):
        empty = {"id": [], "label": [], "area": []}
        empty.update({f"centroid-{a}": [] for a in range(labels.ndim)})
        return pd.DataFrame(empty)
    kept = np.where(chosen[labels], labels, 0)
    table = pd.DataFrame(regionprops_table(kept, properties=["label", "area", "centroid"]))
    return table.assign(id=table["label"])
