"""Guided review in the widget: the least confident objects one by one, a key each."""

import numpy as np
import pytest

from conftest import dim_disc_scene, dock_tuner

pytest.importorskip("napari")


@pytest.fixture
def reviewing(make_napari_viewer, disc_model, tmp_path, monkeypatch, qtbot):
    """The widget on a segmented scene of bright discs (found) and dim ones (missed)."""
    from napari_unet_tuner import with_card

    tuner = dock_tuner(
        make_napari_viewer(),
        with_card(disc_model, name="tiny"),
        tmp_path / "d.safetensors",
        monkeypatch,
    )
    image, truth, _ = dim_disc_scene(0)
    tuner.viewer.add_image(image, name="cells")
    tuner.segment_panel.run()
    qtbot.waitUntil(lambda: tuner.segment_panel.worker is None, timeout=60_000)
    return tuner, truth


def press(tuner, key: str) -> None:
    """Press a key on the canvas, as the user does with the corrections layer selected."""
    from qtpy.QtCore import Qt
    from qtpy.QtTest import QTest

    canvas = tuner.viewer.window._qt_viewer.canvas.native
    canvas.setFocus()
    QTest.keyClick(canvas, getattr(Qt.Key, f"Key_{key.upper()}"))


def test_the_review_steps_through_the_least_confident_objects_by_keys(reviewing, qtbot):
    tuner, truth = reviewing
    viewer = tuner.viewer
    review = tuner.annotate_panel.review
    prediction = viewer.layers["cells labels"]
    table = prediction.metadata["objects"]
    assert len(table) == prediction.data.max() > 0
    original = prediction.data.copy()

    review.keep()  # "Review next": the review starts on a new corrections layer
    layer = review.layer
    assert layer is viewer.layers.selection.active and layer is not prediction
    first = review.current
    assert first["doubt"] == review.queue["doubt"].max()
    # The view is centred on it.
    centre = np.asarray(viewer.camera.center)[-2:]
    np.testing.assert_allclose(centre, [first["centroid-0"], first["centroid-1"]], atol=1)
    assert "reviewed 0 of" in review.status.value

    # D deletes the object in view from the corrections layer, then shows the next.
    target = review.current
    if target["kind"] == "object":
        press(tuner, "d")
        qtbot.waitUntil(lambda: review.position >= 1, timeout=5000)
        assert not (layer.data == target["label"]).any()
        assert review.counts["deleted"] == 1
    else:
        review.keep()
    assert review.layer.metadata["reviewed"].any()

    # R hands the brush to the object in view; K takes it as fixed and moves on.
    while review.current is not None and review.current["kind"] != "object":
        review.keep()
    item = review.current
    press(tuner, "r")
    assert layer.mode == "paint" and layer.selected_label == item["label"]
    press(tuner, "k")
    assert review.counts["fixed"] == 1
    reviewed = layer.metadata["reviewed"]
    assert reviewed[int(item["centroid-0"]), int(item["centroid-1"])]
    assert not reviewed.all()
    assert "1 fixed" in review.status.value and "1 deleted" in review.status.value

    # Fine-tuning learns only what was reviewed (plus anything painted by hand).
    (annotated,) = tuner.train_panel.annotated_images()
    assert annotated.reviewed is not None
    np.testing.assert_array_equal(annotated.reviewed, reviewed)
    layer.data[0:3, 0:3] = 77  # a stroke outside the queue counts as reviewed too
    (annotated,) = tuner.train_panel.annotated_images()
    assert annotated.reviewed[1, 1] and annotated.reviewed.sum() > reviewed.sum()

    # The prediction itself was never modified.
    np.testing.assert_array_equal(prediction.data, original)

    # A new segmentation (as after fine-tuning) rebuilds the queue on a new layer.
    tuner.segment_panel.run()
    qtbot.waitUntil(lambda: tuner.segment_panel.worker is None, timeout=60_000)
    assert review.queue is None and "new segmentation" in review.status.value
    review.keep()
    assert review.layer is not layer and review.position == 0


def test_review_before_segmenting_says_what_to_do(make_napari_viewer, tmp_path, monkeypatch):
    from napari_unet_tuner._widgets import review_panel

    from conftest import make_checkpoint

    tuner = dock_tuner(
        make_napari_viewer(), make_checkpoint(), tmp_path / "t.safetensors", monkeypatch
    )
    errors = []
    monkeypatch.setattr(review_panel, "show_error", errors.append)
    tuner.viewer.add_image(np.zeros((32, 32), np.float32), name="empty")
    tuner.annotate_panel.review.keep()
    assert errors and "Segment the image first" in errors[0]
    assert tuner.annotate_panel.review.layer is None


def test_objects_a_new_model_version_changed_are_reviewed_first(
    make_napari_viewer, disc_model, tmp_path, monkeypatch, qtbot
):
    """A version that finds the discs the last one did not: those come first, judged."""
    import dataclasses

    from napari_unet_tuner import with_card

    model = with_card(disc_model, name="tiny")
    tuner = dock_tuner(make_napari_viewer(), model, tmp_path / "d.safetensors", monkeypatch)
    image, truth, _ = dim_disc_scene(0)
    tuner.viewer.add_image(image, name="cells")
    # The earlier version: an object size floor that drops every disc.
    instances = {**model.card.instances, "min_size": 10_000}
    earlier = dataclasses.replace(model, card=dataclasses.replace(model.card, instances=instances))
    tuner.segment_panel.run(earlier)
    qtbot.waitUntil(lambda: tuner.segment_panel.worker is None, timeout=60_000)
    # The user painted one disc into a corrections layer: judged already.
    painted = tuner.annotate_panel.make_corrections_layer()
    painted.data = np.where(truth == 1, 1, painted.data)
    tuner.segment_panel.run()
    qtbot.waitUntil(lambda: tuner.segment_panel.worker is None, timeout=60_000)
    prediction = tuner.viewer.layers["cells labels"]
    found = int(prediction.data.max())
    assert found > 1
    # Found in the segmentation's worker, against the earlier (empty) labels,
    # all but the painted disc.
    assert len(prediction.metadata["changes"]) == found - 1

    review = tuner.annotate_panel.review
    review.keep()
    changes = review.queue[review.queue["change"] != ""]
    # First in the queue.
    assert len(changes) == found - 1 and (changes["change"] == "new").all()
    assert (changes.index < found - 1).all()
    assert not (prediction.data[truth == 1][:, None] == changes["label"].to_numpy()).any()
    assert review.current["change"] == "new"
    review.delete()  # this change was wrong
    review.keep()  # this one right
    assert review.changes_judged == {"right": 1, "wrong": 1}
    assert f"{found - 1} objects changed since the previous segmentation" in review.status.value
    assert "1 judged right, 1 wrong" in review.status.value
