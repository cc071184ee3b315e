import pytest
from conftest import make_checkpoint

from napari_unet_tuner import ModelConfig, save_checkpoint


@pytest.fixture(autouse=True)
def _private_config_dir(tmp_path, monkeypatch):
    """Recent-file lists go to a temporary folder, not the user's."""
    monkeypatch.setenv("UNET_TUNER_CONFIG_DIR", str(tmp_path / "config"))


@pytest.fixture
def tuner(make_napari_viewer, tmp_path, monkeypatch):
    """The widget docked in a real viewer, with a tiny model instead of the bundled one."""
    from napari_unet_tuner._widgets import model_panel
    from napari_unet_tuner._widgets.tuner import UNetTunerWidget

    path = save_checkpoint(make_checkpoint(ModelConfig(features=4, depth=2)), tmp_path / "tiny.safetensors")
    monkeypatch.setattr(model_panel, "default_checkpoint_path", lambda: path)
    viewer = make_napari_viewer()
    widget = UNetTunerWidget(viewer)
    viewer.window.add_dock_widget(widget)
    return widget
