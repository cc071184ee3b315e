"""A table of the segmented objects, each with a confidence, and the places it may have missed.

The table is what `SegmentationResult.objects` holds: one row per label,
with scikit-image's `regionprops_table` column names (``label``, ``area``,
``centroid-0`` ... one per axis of the labels, ``intensity_mean``), a
``confidence`` (0-1, higher = more likely right) and a ``review_rank``
(1 = look at it first). `possible_misses` lists unlabelled places where the
model saw foreground, each with a confidence that it is an object.

The confidence (`ConfidenceModel`) is a logistic regression over three
signals of each object, measured on real images (``benchmarks/bench_review.py``):

* ``interior_mean``: the model's mean interior probability over the object;
* ``size_deviation``: how far the object's log area lies from the median of
  its plane's objects, in median absolute deviations (merges are large,
  fragments and debris small);
* ``stability``: the mean IoU of the object with its best match when the
  instance thresholds are moved (`STABILITY_SHIFTS`): an object that
  appears, vanishes or changes shape with them sits on the model's doubt.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd
from scipy import ndimage
from scipy.special import expit
from scipy.stats import rankdata
from skimage.measure import regionprops_table

from napari_unet_tuner.config import InstanceConfig, OutputKind
from napari_unet_tuner.inference.instances import BACKGROUND, INTERIOR
from napari_unet_tuner.inference.stability import object_stability

# Pixels `label_means` sums at a time.
_MEAN_SLAB = 2**20

# Unlabelled regions whose foreground probability passes this are possible
# misses (the default threshold for objects is 0.9 on the default model).
MISS_THRESHOLD = 0.5

FEATURES = ("interior_mean", "size_deviation", "stability")


@dataclass(frozen=True)
class ConfidenceModel:
    """Logistic regression from measured signals to a chance (0-1).

    ``chance = 1 / (1 + exp(-(bias + sum(weights * (x - mean) / scale))))``
    over the columns ``features``, in that order.
    """

    features: tuple[str, ...]
    mean: tuple[float, ...]
    scale: tuple[float, ...]
    weights: tuple[float, ...]
    bias: float

    def __call__(self, table: pd.DataFrame) -> np.ndarray:
        """Return the chance (0-1) of each row of ``table``."""
        x = table[list(self.features)].to_numpy(float)
        z = (x - np.asarray(self.mean)) / np.asarray(self.scale)
        return expit(self.bias + z @ np.asarray(self.weights))


# Fitted by ``benchmarks/bench_review.py --fit`` on the default checkpoint's
# training images (HeLa left part, scratch assay 0-6, cells3d left half, CHO:
# 2652 objects, 362 wrong), never on the held-out images it is evaluated on.
DEFAULT_CONFIDENCE = ConfidenceModel(
    FEATURES,
    mean=(0.7971, 1.4348, 0.9114),
    scale=(0.0718, 1.892, 0.0986),
    weights=(0.1485, -0.4728, 0.7074),
    bias=2.1614,
)
# The chance that a possible miss is an object, from its mean foreground
# probability (fitted the same way: 66 of 233 possible misses were).
MISS_CONFIDENCE = ConfidenceModel(
    ("foreground_mean",), mean=(0.6912,), scale=(0.0788,), weights=(0.9579,), bias=-1.1221
)


def object_features(
    labels: np.ndarray,
    probabilities: np.ndarray,
    output_kind: OutputKind,
    instances: InstanceConfig,
) -> pd.DataFrame:
    """Measure the signals of `FEATURES` for every object of one plane or volume.

    Parameters
    ----------
    labels : numpy.ndarray
        Instance labels (0 background) of one plane or volume.
    probabilities : numpy.ndarray
        The model's ``(C, *labels.shape)`` probabilities they came from.
    output_kind : {"boundary3", "boundary3_distance", "foreground"}
        How to read the channels.
    instances : InstanceConfig
        The thresholds ``labels`` were made with.

    Returns
    -------
    pandas.DataFrame
        ``label`` and one column per feature, one row per object present.
    """
    ids = np.unique(labels)
    ids = ids[ids > 0]
    if len(ids) == 0:
        return _no_features()
    # Channels are read as they are (a 3D run's are float16): a float32 copy
    # of a 60 x 1024 x 1024 stack's probabilities is 0.75 GB.
    probabilities = np.asarray(probabilities)
    interior = probabilities[0] if output_kind == "foreground" else probabilities[INTERIOR]
    area = np.bincount(labels.ravel())[ids].astype(float)
    return pd.DataFrame(
        {
            "label": ids,
            "interior_mean": label_means(interior, labels, ids),
            "size_deviation": size_deviations(area),
            "stability": object_stability(labels, ids, probabilities, output_kind, instances),
        }
    )


def label_means(values: np.ndarray, labels: np.ndarray, ids: np.ndarray) -> np.ndarray:
    """Mean of ``values`` over each object ``ids`` of ``labels``, summed a slab at a time.

    As ``ndimage.mean``, whose float64 copy of ``values`` would be 0.5 GB
    for a 60 x 1024 x 1024 stack; a slab of `_MEAN_SLAB` pixels at a time
    keeps that to a few MB.
    """
    n = int(labels.max(initial=0)) + 1
    sums, counts = np.zeros(n), np.zeros(n)
    flat_values, flat_labels = values.reshape(-1), labels.reshape(-1)
    for start in range(0, flat_labels.size, _MEAN_SLAB):
        part = flat_labels[start : start + _MEAN_SLAB]
        sums += np.bincount(part, flat_values[start : start + _MEAN_SLAB], minlength=n)
        counts += np.bincount(part, minlength=n)
    ids = np.asarray(ids, np.int64)
    return sums[ids] / np.maximum(counts[ids], 1)


def size_deviations(area: np.ndarray, planes: Sequence[Any] | None = None) -> np.ndarray:
    """Distance of each object's log area from its plane's median, in median absolute deviations.

    ``planes``: which plane (or volume) each object lies in; ``None``: all in one.
    """
    area = np.asarray(area, float)
    log_area = np.log(np.maximum(area, 1.0))
    groups = np.zeros(len(area), np.int64)
    if planes is not None:
        groups = pd.factorize(pd.Series([str(plane) for plane in planes], dtype=object))[0]
    out = np.zeros(len(area))
    for group in np.unique(groups):
        members = groups == group
        median = np.median(log_area[members])
        spread = np.median(np.abs(log_area[members] - median)) + 0.05
        out[members] = np.abs(log_area[members] - median) / spread
    return out


def _no_features() -> pd.DataFrame:
    columns = {name: np.zeros(0) for name in FEATURES}
    return pd.DataFrame({"label": np.zeros(0, np.int32), **columns})


def object_table(
    labels: np.ndarray,
    features: pd.DataFrame,
    intensity: np.ndarray | None = None,
    confidence: ConfidenceModel = DEFAULT_CONFIDENCE,
) -> pd.DataFrame:
    """Build the per-object table of `SegmentationResult.objects`.

    Parameters
    ----------
    labels : numpy.ndarray
        Labels of one plane or volume (2D or 3D).
    features : pandas.DataFrame
        Their `object_features`.
    intensity : numpy.ndarray, optional
        The image there, the labels' shape plus channels last if any, for
        ``intensity_mean`` (``intensity_mean-<c>`` per channel).
    confidence : ConfidenceModel
        Maps the features to ``confidence``.

    Returns
    -------
    pandas.DataFrame
        ``label``, ``area``, ``centroid-<axis>``, ``intensity_mean`` (when
        ``intensity`` is given), the features, ``confidence`` and
        ``review_rank`` (1 = least confident), sorted by label; centroids
        in the axes of ``labels``.
    """
    table = pd.DataFrame(regionprops_table(labels, properties=["label", "area", "centroid"]))
    if intensity is not None:
        # Means as regionprops names them, without its float copy of the image.
        intensity = np.asarray(intensity)
        ids = table["label"].to_numpy()
        if intensity.ndim == labels.ndim:
            table["intensity_mean"] = label_means(intensity, labels, ids)
        else:
            for c in range(intensity.shape[-1]):
                table[f"intensity_mean-{c}"] = label_means(intensity[..., c], labels, ids)
    table = table.merge(features, on="label", how="left")
    table["confidence"] = confidence(table.fillna({"stability": 0.0}))
    table["review_rank"] = review_ranks(table["confidence"].to_numpy())
    return table


def review_ranks(confidence: np.ndarray) -> np.ndarray:
    """1 for the least confident, ties broken by order (stable)."""
    return rankdata(confidence, method="ordinal").astype(np.int64)


def possible_misses(
    labels: np.ndarray,
    probabilities: np.ndarray,
    output_kind: OutputKind,
    min_size: int,
) -> pd.DataFrame:
    """Unlabelled regions where the model saw foreground: places it may have missed.

    A region is a connected group of unlabelled pixels whose foreground
    probability is above `MISS_THRESHOLD`, at least ``min_size`` pixels,
    that does not touch a labelled object (a rim of an object is not a miss).

    Returns
    -------
    pandas.DataFrame
        ``area``, ``centroid-<axis>`` (axes of ``labels``),
        ``foreground_mean`` and ``confidence``: the chance it is an object
        (`MISS_CONFIDENCE`).
    """
    probabilities = np.asarray(probabilities)
    foreground = probabilities[0] if output_kind == "foreground" else 1 - probabilities[BACKGROUND]
    candidate = (foreground > MISS_THRESHOLD) & (labels == 0)
    regions, count = ndimage.label(candidate)
    columns = [
        "area",
        *[f"centroid-{a}" for a in range(labels.ndim)],
        "foreground_mean",
        "confidence",
    ]
    if count == 0:
        return pd.DataFrame(columns=columns)
    near_object = ndimage.binary_dilation(labels > 0)
    # Sums over the candidate pixels alone, by bincount: ndimage's per-label
    # statistics pass over every pixel (2 s on 4096 x 4096, now 0.5 s).
    where = np.nonzero(regions)
    region_of = regions[where]
    touches = np.bincount(region_of[near_object[where]], minlength=count + 1)[1:] > 0
    area = np.bincount(region_of, minlength=count + 1)[1:].astype(float)
    keep = ~touches & (area >= min_size)
    if not keep.any():
        return pd.DataFrame(columns=columns)
    table = {"area": area[keep]}
    for axis, coordinate in enumerate(where):
        sums = np.bincount(region_of, coordinate, minlength=count + 1)[1:]
        table[f"centroid-{axis}"] = sums[keep] / area[keep]
    sums = np.bincount(region_of, foreground[where].astype(float), minlength=count + 1)[1:]
    table["foreground_mean"] = sums[keep] / area[keep]
    table["confidence"] = MISS_CONFIDENCE(pd.DataFrame(table))
    return pd.DataFrame(table, columns=columns)


def raw_part(image: Any, axes: str, position: dict[str, int], part_axes: str) -> np.ndarray:
    """Return the raw values of one plane or volume: ``part_axes`` order, channels last."""
    raw = np.asarray(image[tuple(position.get(a, slice(None)) for a in axes)])
    rest = [a for a in axes if a not in position]
    # regionprops wants channels last; it names them intensity_mean-<c>.
    order = [rest.index(a) for a in part_axes] + ([rest.index("C")] if "C" in rest else [])
    return raw.transpose(order)


class ObjectCollector:
    """Gathers features and possible misses plane by plane (or volume by volume).

    Parameters
    ----------
    output_kind, instances
        How the labels were made from the probabilities.
    label_axes : str
        Axes of the whole result's labels (e.g. ``"TYX"``).
    """

    def __init__(self, output_kind: OutputKind, instances: InstanceConfig, label_axes: str):
        self.output_kind = output_kind
        self.instances = instances
        self.label_axes = label_axes
        self._objects: list[pd.DataFrame] = []
        self._misses: list[pd.DataFrame] = []

    def add(
        self,
        labels: np.ndarray,
        probabilities: np.ndarray,
        part_axes: str,
        position: dict[str, int],
        intensity: np.ndarray | None = None,
    ) -> None:
        """Measure one part: ``labels`` in ``part_axes`` order, at ``position`` on the others.

        ``intensity``: the raw image of the part, channels last if any.
        """
        features = object_features(labels, probabilities, self.output_kind, self.instances)
        table = object_table(labels, features, intensity)
        self._objects.append(self._placed(table, part_axes, position))
        misses = possible_misses(labels, probabilities, self.output_kind, self.instances.min_size)
        self._misses.append(self._placed(misses, part_axes, position))

    def _placed(self, table: pd.DataFrame, part_axes: str, position: dict[str, int]):
        """``table`` with its centroids on the result's label axes (the part's index on others)."""
        centroids = [c for c in table.columns if c.startswith("centroid-")]
        placed = table.drop(columns=centroids)
        at = list(placed.columns).index("area") + 1
        for axis, name in reversed(list(enumerate(self.label_axes))):
            value = (
                table[f"centroid-{part_axes.index(name)}"].to_numpy(float)
                if name in part_axes
                else np.full(len(table), float(position[name]))
            )
            placed.insert(at, f"centroid-{axis}", value)
        return placed

    def objects(self) -> pd.DataFrame:
        """Return the `object_table` of the whole result, ranked over all its parts."""
        if not self._objects:
            return object_table(np.zeros((1,) * len(self.label_axes), np.int32), _no_features())
        table = pd.concat(self._objects, ignore_index=True)
        table = table.sort_values("label", kind="stable").reset_index(drop=True)
        table["review_rank"] = review_ranks(table["confidence"].to_numpy())
        return table

    def possible_misses(self) -> pd.DataFrame:
        """All parts' possible misses, most likely nuclei first, numbered ``review_rank``."""
        misses = pd.concat(self._misses, ignore_index=True) if self._misses else pd.DataFrame()
        if misses.empty:
            columns = ["area", *[f"centroid-{a}" for a in range(len(self.label_axes))]]
            return pd.DataFrame(columns=[*columns, "foreground_mean", "confidence", "review_rank"])
        misses = misses.sort_values("confidence", ascending=False, kind="stable")
        misses = misses.reset_index(drop=True)
        misses["review_rank"] = np.arange(1, len(misses) + 1)
        return misses


def review_queue(
    objects: pd.DataFrame,
    misses: pd.DataFrame | None = None,
    changes: pd.DataFrame | None = None,
) -> pd.DataFrame:
    """Objects and possible misses in one order: the likeliest error first.

    An object's doubt is the chance it is wrong (1 - confidence); a possible
    miss's, the chance it is an object the labels lack (its confidence).
    ``changes`` (`napari_unet_tuner.inference.changes.changed_objects`: what
    a new model version changed) come first, largest first: a new object as
    an object, a lost one as a miss.

    Returns
    -------
    pandas.DataFrame
        ``kind`` ("object" or "miss"), ``label`` (0 for a miss), ``area``,
        ``centroid-<axis>``, ``doubt`` and ``change`` ("new", "lost" or ""),
        changes first, then by ``doubt`` (highest first).
    """
    centroids = [c for c in objects.columns if c.startswith("centroid-")]
    parts = [
        pd.DataFrame(
            {
                "kind": "object",
                "label": objects["label"].to_numpy(),
                "area": objects["area"].to_numpy(),
                **{c: objects[c].to_numpy() for c in centroids},
                "doubt": 1.0 - objects["confidence"].to_numpy(),
            }
        )
    ]
    if misses is not None and len(misses):
        parts.append(
            pd.DataFrame(
                {
                    "kind": "miss",
                    "label": 0,
                    "area": misses["area"].to_numpy(float),
                    **{c: misses[c].to_numpy(float) for c in centroids},
                    "doubt": misses["confidence"].to_numpy(float),
                }
            )
        )
    queue = pd.concat(parts, ignore_index=True)
    queue = queue.sort_values("doubt", ascending=False, kind="stable").assign(change="")
    if changes is None or not len(changes):
        return queue.reset_index(drop=True)
    doubt = dict(zip(queue["label"], queue["doubt"], strict=True))
    first = changes.assign(
        kind=np.where(changes["change"] == "new", "object", "miss"),
        doubt=[doubt.get(label, 1.0) if label else 1.0 for label in changes["label"]],
    )
    rest = queue[~((queue["kind"] == "object") & queue["label"].isin(changes["label"]))]
    return pd.concat([first, rest], ignore_index=True)
