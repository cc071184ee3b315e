"""Every segmented object measured and ranked by confidence; possible misses listed."""

import numpy as np
import pandas as pd
import pytest
from skimage.measure import regionprops_table

from napari_unet_tuner import InferenceConfig, segment
from napari_unet_tuner.config import InstanceConfig
from napari_unet_tuner.inference.objects import (
    object_features,
    object_table,
    possible_misses,
    review_queue,
)

from conftest import dim_disc_scene, disc_labels

BOUNDARY3 = InstanceConfig(threshold=0.5, seed_threshold=0.5, min_size=15)


def probabilities_of(labels: np.ndarray, interior: dict[int, float]) -> np.ndarray:
    """boundary3 probabilities drawn from labels: each object's interior at its own level."""
    from napari_unet_tuner.inference.instances import labels_to_classes

    classes = labels_to_classes(labels)
    level = np.zeros(labels.shape, np.float32)
    for label, value in interior.items():
        level[labels == label] = value
    inside = classes == 1
    edge = classes == 2
    probs = np.zeros((3, *labels.shape), np.float32)
    probs[1][inside] = level[inside]
    probs[2][inside] = (1 - level[inside]) / 2
    probs[0][inside] = (1 - level[inside]) / 2
    probs[2][edge] = 0.8
    probs[0][edge] = 0.1
    probs[1][edge] = 0.1
    probs[0][labels == 0] = 1.0
    return probs


def test_an_object_the_model_doubts_ranks_before_clear_ones():
    labels = disc_labels((96, 96), [(20, 20), (20, 70), (70, 20), (70, 70)], radius=9)
    # Object 3 barely passes the seed threshold: it appears or vanishes with it.
    probs = probabilities_of(labels, {1: 0.95, 2: 0.95, 3: 0.55, 4: 0.95})
    features = object_features(labels, probs, "boundary3", BOUNDARY3)
    assert features["stability"].iloc[2] < features["stability"].iloc[0]
    table = object_table(labels, features)
    ranked = table.sort_values("review_rank")
    assert ranked["label"].iloc[0] == 3
    assert sorted(table["review_rank"]) == [1, 2, 3, 4]
    assert table["confidence"].between(0, 1).all()
    # An object twice as wide as the others is doubted before the clear ones.
    big = labels.copy()
    big[disc_labels((96, 96), [(70, 70)], radius=18) > 0] = 4
    big[big == 3] = 0
    probs = probabilities_of(big, {1: 0.95, 2: 0.95, 4: 0.95})
    table = object_table(big, object_features(big, probs, "boundary3", BOUNDARY3))
    assert table.set_index("label")["confidence"].idxmin() == 4


def test_the_table_of_a_segmentation_matches_its_labels(disc_model):
    image, _, _ = dim_disc_scene()
    result = segment(image, disc_model, inference=InferenceConfig(diameter=None))
    table = result.objects
    expected = pd.DataFrame(
        regionprops_table(
            result.labels,
            intensity_image=image,
            properties=("label", "area", "centroid", "intensity_mean"),
        )
    )
    assert len(table) == result.labels.max() > 0
    for column in expected:
        np.testing.assert_allclose(table[column], expected[column], rtol=1e-5)
    assert sorted(table["review_rank"]) == list(range(1, len(table) + 1))
    assert np.argmin(table["confidence"]) == np.argmin(table["review_rank"])
    off = segment(image, disc_model, inference=InferenceConfig(diameter=None, object_table=False))
    assert off.objects is None and off.possible_misses is None
    np.testing.assert_array_equal(off.labels, result.labels)


def test_a_time_series_table_says_which_frame_each_object_is_in(disc_model):
    frames = [dim_disc_scene(seed)[0] for seed in (0, 1)]
    series = np.stack(frames)
    result = segment(series, disc_model, axes="TYX", inference=InferenceConfig(diameter=None))
    table = result.objects
    frame_of = {label: t for t in range(2) for label in np.unique(result.labels[t]) if label}
    assert set(table["centroid-0"]) == {0.0, 1.0}
    for row in table.to_dict("records"):
        assert frame_of[row["label"]] == row["centroid-0"]


def test_channels_get_one_intensity_column_each(disc_model):
    image, _, _ = dim_disc_scene()
    rgb = np.stack([image, image * 2, image * 3], axis=-1)
    result = segment(rgb, disc_model, axes="YXC", inference=InferenceConfig(diameter=None))
    table = result.objects
    assert len(table) > 0
    np.testing.assert_allclose(table["intensity_mean-1"], 2 * table["intensity_mean-0"], rtol=1e-5)
    np.testing.assert_allclose(table["intensity_mean-2"], 3 * table["intensity_mean-0"], rtol=1e-5)


def test_possible_misses_are_unlabelled_foreground_apart_from_objects():
    labels = disc_labels((96, 96), [(20, 20)], radius=8)
    probs = probabilities_of(labels, {1: 0.95})
    faint = disc_labels((96, 96), [(70, 70)], radius=7) > 0
    probs[0][faint] = 0.3  # foreground 0.7: under a 0.9 threshold, but seen
    speck = disc_labels((96, 96), [(70, 20)], radius=1) > 0
    probs[0][speck] = 0.2
    rim = np.zeros((96, 96), bool)
    rim[20, 29:33] = True  # touches object 1: its edge, not a missed object
    probs[0][rim] = 0.2
    misses = possible_misses(labels, probs, "boundary3", min_size=15)
    assert len(misses) == 1
    assert misses["centroid-0"].iloc[0] == pytest.approx(70, abs=0.5)
    assert misses["centroid-1"].iloc[0] == pytest.approx(70, abs=0.5)
    assert misses["foreground_mean"].iloc[0] == pytest.approx(0.7)
    assert 0 < misses["confidence"].iloc[0] < 1


def test_the_review_queue_puts_the_likeliest_error_first():
    objects = pd.DataFrame(
        {
            "label": [1, 2, 3],
            "area": [100.0, 90.0, 80.0],
            "centroid-0": [10.0, 20.0, 30.0],
            "centroid-1": [5.0, 6.0, 7.0],
            "confidence": [0.9, 0.2, 0.6],
        }
    )
    misses = pd.DataFrame(
        {"area": [40.0], "centroid-0": [50.0], "centroid-1": [8.0], "confidence": [0.5]}
    )
    queue = review_queue(objects, misses)
    assert list(queue["kind"]) == ["object", "miss", "object", "object"]
    assert list(queue["label"]) == [2, 0, 3, 1]
    assert queue["doubt"].is_monotonic_decreasing


def test_best_ious_equal_the_dense_table():
    from scipy import ndimage

    from napari_unet_tuner.inference.overlaps import best_ious, iou_table

    rng = np.random.default_rng(0)
    for trial in range(12):
        field = ndimage.gaussian_filter(rng.random((90, 110)), 2)
        labels = ndimage.label(field > 0.5)[0]
        other = ndimage.label(field > 0.5 + 0.01 * (trial - 6))[0] if trial else labels * 0
        ious, _, predicted = iou_table(other, labels)
        expected = np.zeros(int(labels.max()) + 1)
        if ious.size:
            expected[predicted] = ious.max(axis=0)
        np.testing.assert_allclose(best_ious(labels, other), expected)


def test_stability_of_thousands_of_objects_needs_no_dense_table():
    """13,500 objects of an 8192 x 8192 image took 9.8 GB with an objects x objects table."""
    import tracemalloc

    from napari_unet_tuner.inference.instances import labels_to_classes
    from napari_unet_tuner.inference.stability import object_stability

    # 3600 small squares, 4 px apart: probabilities that give them back.
    labels = np.zeros((600, 600), np.int32)
    for i, (y, x) in enumerate(np.ndindex(60, 60), start=1):
        labels[10 * y + 2 : 10 * y + 8, 10 * x + 2 : 10 * x + 8] = i
    classes = labels_to_classes(labels)
    probabilities = np.stack([classes == c for c in range(3)]).astype(np.float32)
    instances = InstanceConfig(threshold=0.5, seed_threshold=0.5, min_size=4)
    ids = np.arange(1, labels.max() + 1)
    tracemalloc.start()
    stability = object_stability(labels, ids, probabilities, "boundary3", instances)
    peak = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    assert stability.shape == (3600,) and np.all((stability >= 0) & (stability <= 1))
    # A 3600 x 3600 int64 table alone is 104 MB.
    assert peak < 40 * 2**20
