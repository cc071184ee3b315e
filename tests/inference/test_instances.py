import numpy as np
import pytest
from skimage.metrics import adapted_rand_error

from napari_unet_tuner import InstanceConfig
from napari_unet_tuner.inference import instances as inst
from napari_unet_tuner.inference import labels_to_classes, probabilities_to_labels

from conftest import disc_labels


def one_hot(classes, n=3):
    return np.eye(n, dtype=np.float32)[classes].transpose(2, 0, 1)


def match_iou(a, b):
    inter = np.logical_and(a, b).sum()
    return inter / np.logical_or(a, b).sum()


def test_touching_objects_come_out_as_separate_instances():
    truth = disc_labels()
    classes = labels_to_classes(truth)
    # The contact line between the two discs is boundary on both sides.
    assert (classes[truth > 0] > 0).all()
    assert (classes[32, 31:34] == 2).any()
    labels = probabilities_to_labels(one_hot(classes))
    assert labels.max() == 2
    for value in (1, 2):
        best = max(match_iou(truth == value, labels == other) for other in (1, 2))
        assert best > 0.9


def test_blockwise_watershed_matches_whole_image(monkeypatch):
    centers = [(y, x) for y in range(12, 200, 22) for x in range(12, 200, 21)]
    truth = disc_labels((200, 200), centers, radius=11)
    probs = one_hot(labels_to_classes(truth))
    rng = np.random.default_rng(0)
    probs = probs * 0.8 + rng.random(probs.shape, dtype=np.float32) * 0.2
    probs /= probs.sum(0, keepdims=True)
    whole = probabilities_to_labels(probs)
    monkeypatch.setitem(inst._BLOCK_SHAPE, 2, (37, 37))
    blocked = probabilities_to_labels(probs)
    error, *_ = adapted_rand_error(whole, blocked)
    assert error < 1e-3
    assert whole.max() == blocked.max() == len(centers)


def test_min_size_removes_small_objects_and_renumbers():
    truth = disc_labels((64, 64), [(10, 10), (40, 40), (55, 10)], radius=2)
    truth[30:50, 30:50] = 2
    probs = one_hot(labels_to_classes(truth))
    labels = probabilities_to_labels(probs, config=InstanceConfig(min_size=30))
    assert labels.max() == 1
    assert set(np.unique(labels)) == {0, 1}


def test_foreground_output_gives_connected_components():
    truth = disc_labels((64, 64), [(10, 10), (40, 40)], radius=5)
    prob = (truth > 0).astype(np.float32)[None]
    labels = probabilities_to_labels(prob, "foreground")
    assert labels.max() == 2 and labels.dtype == np.int32


def test_empty_prediction_gives_no_objects():
    probs = one_hot(np.zeros((32, 32), int))
    assert probabilities_to_labels(probs).max() == 0


@pytest.mark.parametrize(
    "bad",
    [{"threshold": 0}, {"seed_threshold": 1.5}, {"min_size": -1}, {"split_solidity": 1.2}],
)
def test_bad_instance_config(bad):
    with pytest.raises(ValueError):
        InstanceConfig(**bad)


def test_distance_output_splits_touching_objects_the_classes_merge():
    from napari_unet_tuner.training.targets import DISTANCE_SCALE, classes_to_distance

    truth = disc_labels()
    classes = labels_to_classes(truth)
    # Classes that miss the contact (interior across it), as a model does
    # when touching nuclei show no dark gap between them ...
    merged = np.where(truth > 0, 1, 0)
    probs = one_hot(merged)
    assert probabilities_to_labels(probs).max() == 1
    # ... while the distance to the edge still has one peak per object.
    distance = classes_to_distance(classes).astype(np.float32) / DISTANCE_SCALE
    probs4 = np.concatenate([probs, distance[None]])
    labels = probabilities_to_labels(probs4, "boundary3_distance")
    assert labels.max() == 2
    for value in (1, 2):
        best = max(match_iou(truth == value, labels == other) for other in (1, 2))
        assert best > 0.9
    # The seed threshold is a fraction of each object's radius.
    few = probabilities_to_labels(
        probs4, "boundary3_distance", InstanceConfig(seed_threshold=0.99, min_size=0)
    )
    assert few.max() == 2 and (few > 0).sum() == (labels > 0).sum()


def overlapping_balls(shape, centers, radius):
    """Union of balls (2D discs or 3D balls) with no boundary where they overlap."""
    grid = np.indices(shape)
    inside = np.zeros(shape, bool)
    for center in centers:
        offsets = [g - c for g, c in zip(grid, center, strict=True)]
        inside |= sum(o**2 for o in offsets) <= radius**2
    return inside


@pytest.mark.parametrize(
    ("shape", "centers"),
    [((64, 80), [(32, 28), (32, 50)]), ((40, 40, 56), [(20, 20, 18), (20, 20, 38)])],
)
def test_concave_seed_is_split_at_its_waist(shape, centers):
    # Two overlapping nuclei the model calls one interior blob (no boundary between).
    blob = overlapping_balls(shape, centers, radius=12)
    probs = np.stack([~blob, blob, np.zeros_like(blob)]).astype(np.float32)
    assert probabilities_to_labels(probs).max() == 1
    labels = probabilities_to_labels(probs, config=InstanceConfig(split_solidity=0.9))
    assert labels.max() == 2
    # The cut runs through the waist, halfway between the centres.
    axis_x = [c[-1] for c in centers]
    middle = (axis_x[0] + axis_x[1]) // 2
    left = labels[(*centers[0][:-1], slice(None, middle - 2))]
    right = labels[(*centers[0][:-1], slice(middle + 3, None))]
    assert set(left[left > 0]) != set(right[right > 0])
    assert (labels > 0).sum() == blob.sum()


def test_convex_seeds_are_not_split():
    # Elongated but convex: an ellipse, and a round disc beside it.
    yy, xx = np.mgrid[:64, :96]
    ellipse = ((yy - 32) / 8) ** 2 + ((xx - 30) / 24) ** 2 <= 1
    disc = (yy - 32) ** 2 + (xx - 78) ** 2 <= 10**2
    probs = one_hot((ellipse | disc).astype(int))
    labels = probabilities_to_labels(probs, config=InstanceConfig(split_solidity=0.9))
    assert labels.max() == 2


def test_raising_the_threshold_removes_objects_the_model_is_unsure_of():
    truth = disc_labels((64, 96), [(32, 20), (32, 70)], radius=10)
    probabilities = one_hot(labels_to_classes(truth))
    # The second object is interior by its classes, but 30 % background throughout.
    unsure = truth == 2
    probabilities[:, unsure] *= 0.7
    probabilities[0, unsure] += 0.3
    loose = probabilities_to_labels(probabilities, config=InstanceConfig(threshold=0.5))
    strict = probabilities_to_labels(probabilities, config=InstanceConfig(threshold=0.9))
    assert loose.max() == 2 and strict.max() == 1
    assert (strict[truth == 1] > 0).all() and not strict[unsure].any()
