"""What a new model version changed, and the review queue that shows it first."""

import numpy as np
import pandas as pd
import pytest
from skimage.draw import disk
from skimage.measure import regionprops_table

from napari_unet_tuner.inference.changes import changed_objects
from napari_unet_tuner.inference.objects import review_queue


def nuclei(shape=(120, 160)) -> np.ndarray:
    labels = np.zeros(shape, np.int32)
    for label, center in enumerate([(20, 20), (20, 70), (60, 40), (60, 110), (100, 80)], 1):
        labels[disk(center, 12, shape=shape)] = label
    return labels


def test_a_deleted_object_is_lost_and_a_split_one_shows_as_its_pieces():
    before = nuclei()
    after = before.copy()
    after[after == 2] = 0  # deleted
    after[(after == 4) & (np.arange(160)[None, :] >= 114)] = 9  # split unevenly
    after[disk((100, 140), 8, shape=after.shape)] = 7  # a new object
    changes = changed_objects(before, after)
    lost = changes[changes["change"] == "lost"]
    assert len(lost) == 1
    assert lost["label"].iloc[0] == 0
    assert (lost["centroid-0"].iloc[0], lost["centroid-1"].iloc[0]) == pytest.approx((20, 70))
    # The bigger piece of the split keeps IoU >= 0.5 with the nucleus: the smaller is new.
    assert set(changes.loc[changes["change"] == "new", "label"]) == {9, 7}
    # Objects that stayed the same (1, 3, 5 and the bigger piece, 4) are not changes.
    assert not set(changes["label"]) & {1, 3, 4, 5}
    assert changes["area"].is_monotonic_decreasing


def test_objects_the_user_reviewed_are_not_shown_again():
    before = nuclei()
    after = before.copy()
    after[after == 2] = 0
    after[after == 5] = 0
    reviewed = np.zeros(before.shape, bool)
    reviewed[:40, 50:95] = True  # around nucleus 2
    changes = changed_objects(before, after, reviewed)
    assert len(changes) == 1
    assert changes["centroid-0"].iloc[0] == pytest.approx(100)


def test_no_changes_between_equal_segmentations():
    assert changed_objects(nuclei(), nuclei()).empty


def test_labels_of_another_shape_are_refused_with_what_to_do():
    with pytest.raises(ValueError, match="same image"):
        changed_objects(nuclei(), nuclei((100, 100)))


def test_the_review_queue_shows_the_changes_first_and_each_object_once():
    before = nuclei()
    after = before.copy()
    after[after == 2] = 0
    after[disk((100, 140), 8, shape=after.shape)] = 7
    objects = pd.DataFrame(regionprops_table(after, properties=["label", "area", "centroid"]))
    objects["confidence"] = np.linspace(0.1, 0.9, len(objects))
    changes = changed_objects(before, after)
    queue = review_queue(objects, None, changes)
    assert list(queue["change"][:2]) == ["lost", "new"]  # largest first
    assert list(queue["kind"][:2]) == ["miss", "object"]
    assert queue["label"].iloc[1] == 7
    assert list(queue["label"]).count(7) == 1
    assert len(queue) == len(objects) + 1
    assert (queue["change"][2:] == "").all()
    assert queue["doubt"][2:].is_monotonic_decreasing
