"""napari docks a panel at once; the tuner shows in it once torch is loaded off the GUI thread."""

import subprocess
import sys

import numpy as np

from napari_unet_tuner._widgets.dock import LOADING_TEXT
from napari_unet_tuner._widgets.tuner import UNetTunerWidget


def test_the_docked_module_imports_neither_torch_nor_the_core():
    code = (
        "import sys, napari_unet_tuner._widgets.dock; "
        "print(sorted(m for m in ('torch', 'skimage', 'napari_unet_tuner.inference') "
        "if m in sys.modules))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"


def test_the_dock_says_it_loads_then_holds_a_tuner_that_follows_the_layers(make_napari_viewer):
    viewer = make_napari_viewer()
    _, dock = viewer.window.add_plugin_dock_widget("napari-unet-tuner", "U-Net Tuner")
    assert dock.tuner is not None or dock[0].value == LOADING_TEXT
    tuner = dock.wait_for_tuner()
    assert isinstance(tuner, UNetTunerWidget) and tuner.warm_up is dock.warm_up
    assert list(dock) == [tuner]  # the loading line is gone
    assert tuner.model_panel.card.value  # the default model is loaded
    # napari tells the dock of new layers; the dock tells the tuner.
    layer = viewer.add_image(np.zeros((16, 16), dtype=np.float32), name="cells")
    assert tuner.segment_panel.image.value is layer
