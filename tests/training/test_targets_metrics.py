import numpy as np
import pytest

from napari_unet_tuner import InputError
from napari_unet_tuner.training import IGNORE, annotation_to_targets, check_annotation
from napari_unet_tuner.training.metrics import average_precision, dice_iou

from conftest import disc_labels


def test_scribble_convention():
    ann = np.zeros((40, 40), np.uint16)
    ann[5:15, 5:15] = 2  # a whole painted object, surrounded by unannotated pixels
    ann[30:33, 0:40] = 1  # a background stroke
    ann[20:26, 20:26] = 3  # an object touching the background stroke? no: separate
    strokes = annotation_to_targets(ann, "scribbles", scribble_objects="strokes")
    assert (strokes[ann == 0] == IGNORE).all()
    assert (strokes[30:33] == 0).all()
    assert (strokes[7:13, 7:13] == 1).all()  # interior
    # A stroke's rim next to unannotated pixels is unknown, not boundary.
    assert strokes[5, 10] == IGNORE
    assert set(np.unique(strokes)) == {0, 1, IGNORE}
    # Objects painted whole: their rim is their boundary.
    whole = annotation_to_targets(ann, "scribbles")
    assert whole[5, 10] == 2 and (whole[7:13, 7:13] == 1).all()
    assert (whole[ann == 0] == IGNORE).all()


def test_corrections_boundaries_between_touching_objects_and_reviewed_region():
    ann = disc_labels()
    targets = annotation_to_targets(ann, "corrections")
    assert (targets[ann == 0] == 0).all() and (targets == 2).any()
    reviewed = np.zeros(ann.shape, bool)
    reviewed[:, :32] = True
    partial = annotation_to_targets(ann, "corrections", reviewed)
    assert (partial[:, 32:] == IGNORE).all()
    assert (partial[:, :32] == targets[:, :32]).all()


@pytest.mark.parametrize(
    ("annotation", "mode", "message"),
    [
        (np.zeros((32, 32), np.int32), "scribbles", "annotation is empty"),
        (np.full((32, 32), 2, np.int32), "scribbles", "no background"),
        (np.ones((32, 32), np.int32), "scribbles", "no object"),
        (np.zeros((32, 32), np.int32), "corrections", "no object"),
        (np.ones((32, 32), np.int32), "corrections", "no background"),
        (np.zeros((32, 32), np.float32), "corrections", "integer labels"),
        (np.zeros((16, 32), np.int32), "corrections", "shape"),
        (np.pad(np.array([[1]]), ((3, 28), (5, 26))), "corrections", "too little"),
        (np.pad(np.array([[1, 2]]), ((3, 28), (5, 25))), "scribbles", "too little"),
    ],
)
def test_bad_annotations_say_what_to_fix(annotation, mode, message):
    with pytest.raises(InputError, match=message):
        check_annotation(annotation, (32, 32), mode)


def test_average_precision_and_dice():
    truth = disc_labels((64, 64), [(16, 16), (48, 48)], radius=6)
    assert average_precision(truth, truth) == 1.0
    one_missing = np.where(truth == 2, 0, truth)
    assert average_precision(truth, one_missing) == pytest.approx(0.5)
    merged = (truth > 0).astype(np.int32)
    # Two equal objects merged: the merged one matches one of them at IoU 0.5, once.
    assert average_precision(truth, merged) == pytest.approx(0.5)
    assert average_precision(truth, merged, 0.75) == 0.0
    assert dice_iou(truth, merged) == (1.0, 1.0)
    shifted = np.roll(truth, 3, axis=1)
    assert (
        0 < average_precision(truth, shifted, 0.5) and average_precision(truth, shifted, 0.75) == 0
    )
    known = np.zeros_like(truth, bool)
    known[:32] = True
    assert average_precision(truth, one_missing, known=known) == 1.0


def test_distance_targets_peak_at_each_centre_and_skip_objects_of_unknown_extent():
    from napari_unet_tuner.inference import labels_to_classes
    from napari_unet_tuner.training.targets import DISTANCE_SCALE, classes_to_distance

    truth = disc_labels()  # two discs of radius 11 touching along x = 32
    classes = labels_to_classes(truth)
    distance = classes_to_distance(classes)
    assert distance.dtype == np.uint8
    # Each disc peaks at its own centre and falls to 0 on boundaries and background.
    assert distance[32, 22] == DISTANCE_SCALE
    assert distance[truth == 2].max() == DISTANCE_SCALE
    assert np.argmax(np.where(truth == 2, distance, 0)[32]) in range(42, 46)
    assert (distance[classes != 1] == 0).all()
    assert 0 < distance[32, 28] < distance[32, 25] < DISTANCE_SCALE
    # Where part of an object is not annotated its extent is unknown: that
    # object's distances are ignored, the fully known one keeps its own.
    partial = classes.copy()
    partial[:, 40:] = IGNORE
    cut = classes_to_distance(partial)
    assert (cut[(truth == 2) & (classes == 1)] == IGNORE).all()
    np.testing.assert_array_equal(cut[truth == 1], distance[truth == 1])
