"""What is alive after the warm-up is frozen out of full collections until a layer goes."""

import gc

import numpy as np
import pytest
from qtpy.QtWidgets import QWidget

from napari_unet_tuner._widgets.collector import CollectorFreeze


@pytest.fixture
def unfrozen():
    assert gc.get_freeze_count() == 0
    yield
    gc.unfreeze()  # whatever a failing test left frozen


def test_removing_a_layer_unfreezes_so_it_can_be_collected(make_napari_viewer, unfrozen):
    viewer = make_napari_viewer()
    layer = viewer.add_image(np.zeros((8, 8)))
    collector = CollectorFreeze(viewer)
    collector.freeze()
    assert collector.frozen and gc.get_freeze_count() > 0
    viewer.layers.remove(layer)
    assert not collector.frozen and gc.get_freeze_count() == 0
    collector.freeze()  # released once: never again, the layer may be garbage now
    assert gc.get_freeze_count() == 0


def test_a_layer_removed_before_the_freeze_means_no_freeze(make_napari_viewer, unfrozen):
    viewer = make_napari_viewer()
    viewer.add_image(np.zeros((8, 8)))
    collector = CollectorFreeze(viewer)
    viewer.layers.clear()  # while the imports ran
    collector.freeze()
    assert not collector.frozen and gc.get_freeze_count() == 0


def test_closing_the_window_unfreezes(make_napari_viewer, qtbot, unfrozen):
    collector = CollectorFreeze(make_napari_viewer())
    window = QWidget()
    qtbot.addWidget(window)
    collector.watch(window)
    qtbot.wait(10)  # it watches the window the widget is in once the event loop runs
    collector.freeze()
    assert gc.get_freeze_count() > 0
    window.close()
    assert gc.get_freeze_count() == 0


def test_a_second_freeze_leaves_the_first_owners(make_napari_viewer, unfrozen):
    viewer = make_napari_viewer()
    first, second = CollectorFreeze(viewer), CollectorFreeze(viewer)
    first.freeze()
    second.freeze()
    assert first.frozen and not second.frozen
    first.release()
    assert gc.get_freeze_count() == 0


@pytest.mark.parametrize("with_layer", [True, False])  # closing clears the layers first
def test_the_docked_widget_freezes_after_its_imports_and_closing_the_viewer_unfreezes(
    make_napari_viewer, qtbot, unfrozen, with_layer
):
    viewer = make_napari_viewer()
    if with_layer:
        viewer.add_image(np.zeros((32, 32), dtype=np.float32))
    _, widget = viewer.window.add_plugin_dock_widget("napari-unet-tuner", "U-Net Tuner")
    qtbot.waitUntil(lambda: widget.warm_up.done, timeout=60_000)
    assert widget.collector.frozen and gc.get_freeze_count() > 0
    viewer.close()
    assert gc.get_freeze_count() == 0
