import numpy as np
import pytest

from napari_unet_tuner import load_checkpoint

from conftest import (
    StallMeter,
    corrected_discs,
    dim_disc_scene,
    disc_labels,
    dock_tuner,
    make_checkpoint,
    touching_spheres,
    wait_idle,
)

pytest.importorskip("napari")


def cells_image():
    labels = disc_labels((96, 96), [(20, 20), (20, 44), (60, 30), (70, 70), (40, 75), (80, 15)], 9)
    rng = np.random.default_rng(0)
    return ((labels > 0) * 900 + 300 + rng.normal(0, 30, labels.shape)).astype(np.uint16), labels


def test_widget_opens_with_model_preselected(tuner):
    assert tuner.versions.active is not None
    assert "tiny" in tuner.model_panel.card.value
    assert tuner.model_panel.device.value == "cpu"


def test_whole_loop_segment_annotate_finetune_stop_rollback_save(disc_tuner, qtbot, tmp_path):
    tuner = disc_tuner
    viewer = tuner.viewer
    image, truth, _ = dim_disc_scene(0)
    layer = viewer.add_image(image, name="cells", scale=(0.5, 0.5), translate=(3, 4))
    original = image.copy()

    # Segment: a Labels layer named after the image, with its scale and translate.
    meter = StallMeter()
    tuner.segment_panel.run()
    wait_idle(qtbot, tuner.segment_panel)
    seg_stall = meter.stop()
    labels = viewer.layers["cells labels"]
    assert labels.data.shape == image.shape and labels.data.dtype == np.int32
    assert tuple(labels.scale) == (0.5, 0.5) and tuple(labels.translate) == (3, 4)

    # Re-running updates the same layer in place.
    tuner.segment_panel.run()
    wait_idle(qtbot, tuner.segment_panel)
    assert [ly.name for ly in viewer.layers].count("cells labels") == 1

    # Annotate: corrections copy the prediction; paint the truth in programmatically.
    corrections = tuner.annotate_panel.make_corrections_layer()
    assert corrections.mode == "paint"
    # The unedited prediction is never offered; the corrections layer is, chosen.
    assert tuner.train_panel.annotation.value == [corrections]
    assert [layer for _, layer in tuner.train_panel._annotation_choices()] == [corrections]
    corrections.data = truth.copy()  # the dim discs the model missed painted in
    assert "8 objects" in tuner.annotate_panel.summary.value

    # Fine-tune: the model reproduces the corrections and becomes a new active version.
    tuner.train_panel.seconds.value = 60  # it stops once every correction is reproduced
    tuner.train_panel.preview.value = False
    meter = StallMeter()
    tuner.train_panel.run()
    wait_idle(qtbot, tuner.train_panel)
    train_stall = meter.stop()
    status = tuner.train_panel.status.value
    assert len(tuner.versions.versions) == 2 and tuner.versions.active_index == 1, status
    assert status.startswith("learned"), status
    assert "corrected objects right" in tuner.train_panel.scores.value
    assert tuner.versions.active.card.parent["sha256"] == tuner.versions.versions[0].sha256
    # What the user sees next is the new result, not the painting over it.
    assert not corrections.visible
    # The image is re-segmented with the new model.
    wait_idle(qtbot, tuner.segment_panel)

    # Rollback, then save the active version to a file of the user's choice.
    tuner.model_panel.version.value = 0
    assert tuner.versions.active_index == 0
    saved = tuner.model_panel.save_active(tmp_path / "rolled_back.safetensors")
    assert load_checkpoint(saved).card.name == "tiny"
    tuner.model_panel.version.value = 1
    assert load_checkpoint(tuner.model_panel.save_active(tmp_path / "tuned")).card.training

    # The user's own image was never touched.
    assert np.array_equal(layer.data, original)
    # The event loop kept running (generous bound for a loaded CI machine; the
    # benchmark reports the real figure).
    assert seg_stall < 1.0 and train_stall < 1.0


def test_scribble_layer_and_field_of_view(tuner, qtbot):
    viewer = tuner.viewer
    image, _ = cells_image()
    viewer.add_image(image, name="cells")
    scribbles = tuner.annotate_panel.make_scribble_layer()
    assert scribbles.data.dtype == np.uint16 and not scribbles.data.any()
    assert scribbles.selected_label == 2
    assert tuner.train_panel.annotation.value == [scribbles]
    assert "(scribbles)" in tuner.train_panel._annotation_choices()[0][0]
    viewer.camera.zoom = 8
    tuner.segment_panel.run(field_of_view=True)
    wait_idle(qtbot, tuner.segment_panel)
    assert viewer.layers["cells labels"].data.shape == image.shape


def test_errors_are_notifications_not_crashes(tuner, qtbot, tmp_path, monkeypatch):
    from napari_unet_tuner._widgets import (
        annotate_panel,
        model_panel,
        segment_panel,
        train_panel,
        worker_errors,
    )

    messages = []
    for module in (segment_panel, model_panel, annotate_panel, train_panel, worker_errors):
        monkeypatch.setattr(module, "show_error", messages.append)
    viewer = tuner.viewer
    assert tuner.segment_panel.run() is None  # no image layer
    assert tuner.annotate_panel.make_corrections_layer() is None
    assert tuner.train_panel.run() is None
    assert "No image layer" in messages[0] and "Segment the image first" in messages[1]

    bad = tmp_path / "corrupt.safetensors"
    bad.write_bytes(b"\0" * 64)
    assert not tuner.model_panel.load(bad)
    assert "Cannot use corrupt.safetensors" in messages[-1]
    assert len(tuner.versions.versions) == 1

    image, _ = cells_image()
    viewer.add_image(image, name="cells")
    wrong = viewer.add_labels(np.zeros((10, 10), np.int32), name="wrong size")
    tuner.train_panel.reset_choices()
    assert tuner.train_panel.annotation.value == [wrong]  # a layer of the user's own
    errors = []
    # An expected error in the worker is a plain notification: nothing raised,
    # no traceback (napari would print one for any other error).
    with qtbot.capture_exceptions() as raised:
        worker = tuner.train_panel.run()
        worker.errored.connect(errors.append)
        wait_idle(qtbot, tuner.train_panel)
    assert "annotation has shape (10, 10)" in str(errors[0])
    assert raised == []
    assert "annotation has shape (10, 10)" in messages[-1]
    assert len(tuner.versions.versions) == 1


def test_sample_data_and_manifest():
    from napari_unet_tuner._sample_data import bacteria_sample, nuclei_sample

    for sample in (nuclei_sample, bacteria_sample):
        ((data, meta, kind),) = sample()
        assert kind == "image" and data.ndim == 2 and data.dtype == np.uint16 and data.std() > 0


def test_multiscale_dask_and_stack_layers(disc_tuner, qtbot):
    # A model that finds the discs: with an untrained one nothing is found and
    # the checks below would hold for empty labels.
    tuner = disc_tuner
    da = pytest.importorskip("dask.array")
    viewer = tuner.viewer
    image, _ = cells_image()
    pyramid = [da.from_array(image, chunks=48), da.from_array(image[::2, ::2], chunks=48)]
    viewer.add_image(pyramid, name="pyramid", multiscale=True)
    tuner.segment_panel.image.value = viewer.layers["pyramid"]
    tuner.segment_panel.run()
    wait_idle(qtbot, tuner.segment_panel)
    pyramid_labels = viewer.layers["pyramid labels"].data
    assert pyramid_labels.shape == image.shape and pyramid_labels.max() > 0

    stack = viewer.add_image(np.stack([image, image[::-1]]), name="stack")
    tuner.segment_panel.image.value = stack
    tuner.segment_panel.run()
    wait_idle(qtbot, tuner.segment_panel)
    labels = viewer.layers["stack labels"].data
    assert labels.shape == (2, 96, 96)
    # Both planes hold objects (the second is the first upside down), and
    # labels are unique over the stack: plane 1 continues plane 0's numbering.
    first, second = set(np.unique(labels[0])) - {0}, set(np.unique(labels[1])) - {0}
    assert first and len(second) == len(first)
    assert min(second) == max(first) + 1


def test_rgb_layer_and_field_of_view_on_a_stack(tuner, qtbot):
    viewer = tuner.viewer
    image, _ = cells_image()
    rgb = np.stack([image // 16] * 3, axis=-1).astype(np.uint8)
    layer = viewer.add_image(rgb, name="rgb", rgb=True)
    tuner.segment_panel.image.value = layer
    tuner.segment_panel.run()
    wait_idle(qtbot, tuner.segment_panel)
    assert viewer.layers["rgb labels"].data.shape == (96, 96)

    stack = viewer.add_image(np.stack([image, image[::-1], image[:, ::-1]]), name="stack")
    tuner.segment_panel.image.value = stack
    viewer.dims.set_current_step(0, 1)
    tuner.segment_panel.run(field_of_view=True)
    wait_idle(qtbot, tuner.segment_panel)
    labels = viewer.layers["stack labels"].data
    assert labels.shape == (3, 96, 96)
    assert not labels[0].any() and not labels[2].any()  # only the plane in view


def start_a_long_fine_tuning(tuner, qtbot):
    """Scribble every cell of an image and start a 10-minute fine-tuning; return its worker."""
    image, truth = cells_image()
    tuner.viewer.add_image(image, name="cells")
    layer = tuner.annotate_panel.make_scribble_layer()
    layer.data = np.where(truth > 0, truth + 1, 1).astype(np.uint16)
    tuner.train_panel.seconds.value = 600
    worker = tuner.train_panel.run()
    qtbot.waitUntil(lambda: len(tuner.train_panel.plot.steps) >= 1, timeout=30_000)
    return worker


def test_shutdown_abandons_a_running_fine_tuning(tuner, qtbot):
    worker = start_a_long_fine_tuning(tuner, qtbot)
    tuner.shutdown()
    assert not worker.is_running
    qtbot.waitUntil(lambda: tuner.train_panel.worker is None, timeout=10_000)
    assert len(tuner.versions.versions) == 1  # nothing kept from an abandoned run


def test_segment_a_multiscale_layer_into_a_zarr_backed_labels_layer(
    tuner, qtbot, tmp_path, monkeypatch
):
    da = pytest.importorskip("dask.array")
    from napari_unet_tuner._widgets import segment_panel
    from napari_unet_tuner.inference.chunked_output import is_complete

    viewer = tuner.viewer
    image, _ = cells_image()
    big = np.tile(image, (2, 3))
    pyramid = [da.from_array(big, chunks=64), da.from_array(big[::2, ::2], chunks=64)]
    # Segmenting must read tiles, never the whole level: a dask array that
    # counts how much of it is computed at once.
    reads = []
    level0 = pyramid[0].map_blocks(lambda b: reads.append(b.size) or b, dtype=big.dtype)
    viewer.add_image([level0, pyramid[1]], name="slide", multiscale=True)
    panel = tuner.segment_panel
    panel.image.value = viewer.layers["slide"]
    panel.to_zarr.value = True
    assert not panel.zarr_path.native.isHidden()

    errors = []
    monkeypatch.setattr(segment_panel, "show_error", errors.append)
    panel.zarr_path.value = tmp_path / "labels.tif"
    assert panel.run() is None and "ending in .zarr" in errors[-1]

    out = tmp_path / "slide_labels.zarr"
    panel.zarr_path.value = out
    small = {2: (96, 96), 3: (8, 96, 96)}
    monkeypatch.setattr("napari_unet_tuner.inference.chunked_plan.DEFAULT_CHUNK_SHAPE", small)
    panel.run()
    wait_idle(qtbot, panel)
    layer = viewer.layers["slide labels (slide_labels.zarr)"]
    assert layer.data.shape == big.shape and layer.data.chunks == (96, 96)
    assert is_complete(out) and layer.metadata["path"] == str(out)
    assert int(np.asarray(layer.data[:]).max()) < 1 << 30  # final ids, no provisional ones
    assert reads and max(reads) < big.size
    assert viewer.layers["slide"].data[0] is level0  # the user's layer is untouched


def segmented_a_quarter_size(viewer, qtbot, tmp_path, monkeypatch):
    """The widget with a model of 10-pixel objects, after segmenting 40-pixel ones (scale 1/4)."""
    sized = make_checkpoint(object_diameter=10.0)
    tuner = dock_tuner(viewer, sized, tmp_path / "sized.safetensors", monkeypatch)
    image, _ = cells_image()
    panel = tuner.segment_panel
    panel.image.value = tuner.viewer.add_image(image, name="big nuclei")
    panel.diameter.value = 40
    panel.run()
    wait_idle(qtbot, panel)
    return tuner


def test_object_size_keeps_labels_on_the_image_grid(
    make_napari_viewer, qtbot, tmp_path, monkeypatch
):
    from napari_unet_tuner._widgets import segment_panel

    messages = []
    monkeypatch.setattr(segment_panel, "show_error", messages.append)
    tuner = segmented_a_quarter_size(make_napari_viewer(), qtbot, tmp_path, monkeypatch)
    panel = tuner.segment_panel
    labels = tuner.viewer.layers["big nuclei labels"]
    assert labels.data.shape == (96, 96)
    assert labels.metadata["scale"] == 0.25
    assert "resized x0.25" in panel.size_note.value

    panel.to_zarr.value = True
    panel.zarr_path.value = tmp_path / "out.zarr"
    assert panel.run() is None
    assert "set the object size to auto" in messages[-1]
    assert not (tmp_path / "out.zarr").exists()


def test_corrections_and_scribbles_are_learned_at_the_scale_they_were_segmented_at(
    make_napari_viewer, qtbot, tmp_path, monkeypatch
):
    tuner = segmented_a_quarter_size(make_napari_viewer(), qtbot, tmp_path, monkeypatch)
    panel = tuner.segment_panel
    tuner.annotate_panel.make_corrections_layer()
    tuner.annotate_panel.make_scribble_layer()
    tuner.train_panel.reset_choices()
    scales = sorted(item.scale for item in tuner.train_panel.annotated_images())
    assert scales == [0.25, 0.25]  # corrections: the prediction's; scribbles: the image's
    panel.diameter.value = 0  # auto, nothing measured for this image: the trainer decides
    scales = sorted(str(item.scale) for item in tuner.train_panel.annotated_images())
    assert scales == ["0.25", "auto"]


def test_object_size_measured_from_painted_labels(tuner, monkeypatch):
    from napari_unet_tuner._widgets import segment_panel

    messages = []
    monkeypatch.setattr(segment_panel, "show_error", messages.append)
    panel = tuner.segment_panel
    image, labels = cells_image()  # discs of radius 9
    tuner.viewer.add_image(image, name="cells")
    assert panel.measure_painted() is None  # an image layer is selected
    assert "Select a Labels layer" in messages[-1]
    tuner.viewer.add_labels(np.zeros_like(labels), name="empty")
    assert panel.measure_painted() is None and "no objects" in messages[-1]
    tuner.viewer.add_labels(labels, name="painted")
    assert panel.measure_painted() == pytest.approx(18, abs=1)
    assert panel.diameter.value == 18
    assert panel.diameter_for(tuner.viewer.layers["cells"]) == 18.0


def test_every_annotation_of_the_session_is_learned_with_its_own_image(tuner, qtbot):
    viewer = tuner.viewer
    first, _ = cells_image()
    second = first[::-1].copy()
    layers = []
    for name, image in (("first", first), ("second", second)):
        tuner.segment_panel.image.value = viewer.add_image(image, name=name)
        tuner.segment_panel.run()
        wait_idle(qtbot, tuner.segment_panel)
        layers.append(tuner.annotate_panel.make_corrections_layer())
    # Both are listed and chosen, the prediction layers are not.
    assert tuner.train_panel.annotation.value == layers
    pairs = tuner.train_panel.annotated_images()
    assert np.array_equal(pairs[0].image, first) and np.array_equal(pairs[1].image, second)
    for pair, name in zip(pairs, ("first", "second"), strict=True):
        assert pair.mode == "corrections"
        assert np.array_equal(pair.prediction, viewer.layers[f"{name} labels"].data)
    # Leaving one out.
    tuner.train_panel.annotation.value = layers[1:]
    assert len(tuner.train_panel.annotated_images()) == 1


def test_an_image_closed_while_it_is_segmented_gets_no_labels_layer(tuner, qtbot):
    viewer = tuner.viewer
    image, _ = cells_image()
    layer = viewer.add_image(np.tile(image, (4, 4)), name="cells")
    worker = tuner.segment_panel.run()
    viewer.layers.remove(layer)
    wait_idle(qtbot, tuner.segment_panel)
    assert not worker.is_running
    assert [layer.name for layer in viewer.layers] == []


def test_closing_the_viewer_during_fine_tuning_raises_nothing(
    make_napari_viewer, qtbot, tmp_path, monkeypatch
):
    viewer = make_napari_viewer()
    tuner = dock_tuner(viewer, make_checkpoint(), tmp_path / "tiny.safetensors", monkeypatch)
    worker = start_a_long_fine_tuning(tuner, qtbot)
    errors = []
    worker.errored.connect(errors.append)
    viewer.close()
    qtbot.waitUntil(lambda: not worker.is_running, timeout=10_000)
    qtbot.wait(200)  # let any late signal reach a deleted widget
    assert errors == []


def test_cancel_stops_a_segmentation_and_adds_nothing(tuner, qtbot):
    viewer = tuner.viewer
    image, _ = cells_image()
    viewer.add_image(np.tile(image, (2, 8, 8)), name="big")  # 2 planes of 768 x 768
    panel = tuner.segment_panel
    worker = panel.run()
    aborted = []
    worker.aborted.connect(lambda: aborted.append(True))
    qtbot.waitUntil(lambda: worker.is_running, timeout=10_000)
    assert panel.cancel_button.enabled and not panel.run_button.enabled
    panel.cancel_button.native.click()  # as the user does
    wait_idle(qtbot, panel)
    assert aborted == [True]
    assert "big labels" not in viewer.layers
    assert panel.run_button.enabled and not panel.cancel_button.enabled


def test_the_widget_fits_a_1280_by_720_laptop_screen(tuner, qtbot):
    from magicgui.widgets import PushButton
    from qtpy.QtCore import QPoint, QRect

    window = tuner.viewer.window._qt_window
    window.showNormal()
    window.resize(1280, 720)
    qtbot.wait(300)
    assert window.height() <= 720 and window.width() <= 1280
    screen = QRect(QPoint(0, 0), window.size())
    for panel in tuner.panels:
        tuner.show_tab(panel)
        qtbot.wait(50)
        buttons = [w for w in _all_widgets(panel) if isinstance(w, PushButton)]
        assert buttons or panel is tuner.annotate_panel
        for button in buttons:
            if not button.visible:
                continue  # shown only when its option is on
            corner = button.native.mapTo(window, QPoint(0, 0))
            rect = QRect(corner, button.native.size())
            assert screen.contains(rect), f"{button.text} is off screen at {rect}"
            hint = button.native.sizeHint().width()
            assert button.native.width() >= hint, f"{button.text} is cut: {rect}, needs {hint}"
    # The image canvas keeps most of the width.
    assert tuner.native.width() <= 0.35 * window.width()


def test_long_messages_wrap_without_overlapping(tuner, qtbot):
    from qtpy.QtCore import QPoint

    window = tuner.viewer.window._qt_window
    window.showNormal()
    window.resize(1280, 720)
    panel = tuner.train_panel
    tuner.show_tab(panel)
    panel.status.value = "learned 20 of 25 corrections in 44 s"
    panel.scores.value = (
        "painted objects right 10/10 · background strokes clear 10/15 · new false objects 2"
    )
    tuner.native.setMaximumWidth(300)  # a dock narrowed by the user
    qtbot.wait(300)
    rows = [panel.status.native, panel.scores.native, panel.plot]
    tops = [w.mapTo(panel.native, QPoint(0, 0)).y() for w in rows]
    for label in rows[:2]:
        assert label.height() >= label.heightForWidth(label.width()), label.text()
    assert tops[0] + rows[0].height() <= tops[1]
    assert tops[1] + rows[1].height() <= tops[2]
    assert panel.scores.native.heightForWidth(panel.scores.native.width()) > 40  # it wraps


def _all_widgets(container):
    from magicgui.widgets import Container

    for widget in container:
        if isinstance(widget, Container):
            yield from _all_widgets(widget)
        else:
            yield widget


def test_export_for_bioimageio_then_open_the_package_again(tuner, qtbot, tmp_path, monkeypatch):
    pytest.importorskip("bioimageio.core")
    from napari_unet_tuner._widgets import model_panel, worker_errors

    infos, errors = [], []
    monkeypatch.setattr(model_panel, "show_info", infos.append)
    monkeypatch.setattr(model_panel, "show_error", errors.append)
    monkeypatch.setattr(worker_errors, "show_error", errors.append)
    image, _ = cells_image()
    tuner.viewer.add_image(image, name="cells")
    tuner.reset_choices()
    panel = tuner.model_panel
    package = tmp_path / "tiny.zip"
    panel.export_active(package)
    qtbot.waitUntil(lambda: panel.export_worker is None, timeout=120_000)
    assert errors == [] and "Exported tiny.zip" in infos[-1] and "test passed" in infos[-1]
    assert panel.load(package)
    assert len(tuner.versions.versions) == 2 and tuner.versions.active.path == package
    # Exporting the opened package onto itself refuses, in words, and keeps it.
    size = package.stat().st_size
    panel.export_active(package)
    qtbot.waitUntil(lambda: panel.export_worker is None, timeout=60_000)
    assert "would destroy the input" in errors[-1] and package.stat().st_size == size


def test_a_stack_opened_before_the_plugin_gets_3d_objects(
    make_napari_viewer, monkeypatch, tmp_path
):
    from conftest import dock_tuner, make_checkpoint

    viewer = make_napari_viewer()
    image, _ = touching_spheres(3)
    viewer.add_image(image, name="stack", axis_labels=("z", "y", "x"))
    tuner = dock_tuner(viewer, make_checkpoint(), tmp_path / "tiny.safetensors", monkeypatch)
    assert tuner.segment_panel.image.value.name == "stack"
    assert tuner.segment_panel.objects_3d.value


def test_a_stack_without_a_z_step_has_it_measured_and_shown(disc_tuner, qtbot):
    image, truth = touching_spheres(2)
    layer = disc_tuner.viewer.add_image(image, name="stack")  # napari's default scale: 1
    disc_tuner.reset_choices()
    panel = disc_tuner.segment_panel
    panel.image.value = layer
    panel.objects_3d.value = True
    assert panel.run() is not None
    wait_idle(qtbot, panel)
    assert len(np.unique(disc_tuner.viewer.layers["stack labels"].data)) - 1 == truth.max()
    assert "Z step ~2.0x" in panel.size_note.value
    np.testing.assert_array_equal(layer.data, image)  # the user's layer untouched


def test_a_z_stack_becomes_3d_objects_with_the_z_step_of_the_layer(disc_tuner, qtbot, tmp_path):
    image, truth = touching_spheres(3)
    disc_tuner.viewer.add_image(image[:, :40], name="planes")
    disc_tuner.viewer.add_image(
        image, name="stack", scale=(3.0, 1.0, 1.0), axis_labels=("z", "y", "x")
    )
    disc_tuner.reset_choices()
    panel = disc_tuner.segment_panel
    # 3D objects by default where the layer names its Z axis, not for plain arrays.
    panel.image.value = disc_tuner.viewer.layers["planes"]
    assert not panel.objects_3d.value
    panel.image.value = disc_tuner.viewer.layers["stack"]
    assert panel.objects_3d.value
    # The field of view in 3D: the visible XY region through every plane
    # (the whole image here: the test's canvas is not drawn, so not zoomed in).
    disc_tuner.viewer.dims.set_point(0, 24.0)
    panel.field_of_view.value = True
    assert panel.run() is not None
    wait_idle(qtbot, panel)
    in_view = disc_tuner.viewer.layers["stack labels"].data
    assert np.count_nonzero(in_view.any(axis=(1, 2))) > 3  # objects through several planes
    assert len(np.unique(in_view)) - 1 == truth.max()  # 3D objects, not one per plane
    panel.field_of_view.value = False
    worker = panel.run()
    wait_idle(qtbot, panel)
    labels = disc_tuner.viewer.layers["stack labels"].data
    assert worker is not None and labels.shape == truth.shape
    assert len(np.unique(labels)) - 1 == truth.max() == 5

    # Corrected in 3D, the labels teach the 2D model in XY, XZ and YZ.
    corrections = disc_tuner.annotate_panel.make_corrections_layer()
    corrections.data = np.where(corrections.data == corrections.data.max(), 0, corrections.data)
    (annotated,) = disc_tuner.train_panel.annotated_images()
    assert (annotated.stack, annotated.anisotropy, annotated.scale) == ("3d", 3.0, 1.0)
    disc_tuner.train_panel.seconds.value = 10
    disc_tuner.train_panel.preview.value = False
    assert disc_tuner.train_panel.run() is not None
    wait_idle(qtbot, disc_tuner.train_panel)
    # A verdict either way; a failed run says a bare "no new version".
    status = disc_tuner.train_panel.status.value
    assert status.startswith(("learned", "no new version: nothing was learned")), status
    wait_idle(qtbot, panel)

    # The same 3D objects into a zarr folder, band by band and chunk by chunk.
    panel.to_zarr.value = True
    panel.zarr_path.value = tmp_path / "stack.zarr"
    assert panel.run() is not None
    wait_idle(qtbot, panel)
    layer = disc_tuner.viewer.layers["stack labels (stack.zarr)"]
    assert layer.metadata["stack"] == "3d" and layer.data.shape == truth.shape
    assert len(np.unique(np.asarray(layer.data))) - 1 == truth.max()


def test_a_traded_model_is_offered_and_kept_only_when_asked(disc_tuner, qtbot, monkeypatch):
    from napari_unet_tuner.training.counting import CorrectionCounts

    from conftest import script_validations

    tuner = disc_tuner
    _, truth, _, corrections = corrected_discs(tuner, qtbot)
    painted = corrections.data.copy()
    # The run's models get both corrections right but lose 3 of 6 unchanged discs.
    start = CorrectionCounts(corrected=2, unchanged=6, unchanged_right=6)
    traded = CorrectionCounts(corrected=2, corrected_right=2, unchanged=6, unchanged_right=3)
    script_validations(monkeypatch, [start] + [traded] * 500)
    tuner.train_panel.seconds.value = 5
    tuner.train_panel.preview.value = False
    tuner.train_panel.run()
    wait_idle(qtbot, tuner.train_panel)
    panel = tuner.train_panel
    assert len(tuner.versions.versions) == 1, panel.status.value  # no new version
    assert "lost 3 of 6 unchanged objects" in panel.status.value
    # What the panel shows is the model kept: the starting one.
    assert panel.scores.value == start.describe()
    assert not panel.keep_button.native.isHidden()
    panel.keep_button.changed.emit(True)
    assert len(tuner.versions.versions) == 2 and tuner.versions.active_index == 1
    assert tuner.versions.active.card.training[-1]["kept_anyway"] is True
    assert panel.keep_button.native.isHidden() and "kept anyway" in panel.status.value
    qtbot.wait(100)  # the image is segmented again with the kept model
    wait_idle(qtbot, tuner.segment_panel)
    assert np.array_equal(corrections.data, painted)  # the user's layer untouched


def test_a_large_image_gets_the_runtime_measured_here(tuner, qtbot):
    """The widget runs `auto`: a probe in the worker, what ran named in the size note's tooltip."""
    pytest.importorskip("openvino")
    image = np.tile(cells_image()[0], (24, 24))[:1536, :1536]  # 2.4 megapixels
    before = image.copy()
    tuner.viewer.add_image(image, name="mosaic")
    panel = tuner.segment_panel
    panel.run()
    wait_idle(qtbot, panel, timeout=120_000)
    labels = tuner.viewer.layers["mosaic labels"]
    assert labels.data.shape == image.shape
    assert np.array_equal(tuner.viewer.layers["mosaic"].data, before)
    tooltip = panel.size_note.tooltip
    assert "model runs on" in tooltip and "probe" in tooltip and "MP/s" in tooltip
