import numpy as np
import pytest
import torch

from napari_unet_tuner import Checkpoint, ModelConfig, UNet, new_card, save_checkpoint

TINY = ModelConfig(features=4, depth=2, batch_norm=True)


def make_checkpoint(config: ModelConfig = TINY, seed: int = 0, **card) -> Checkpoint:
    torch.manual_seed(seed)
    model = UNet(config).eval()
    return Checkpoint.from_model(model, new_card(config, name=card.pop("name", "tiny"), **card))


@pytest.fixture
def tiny_checkpoint() -> Checkpoint:
    return make_checkpoint()


@pytest.fixture
def tiny_checkpoint_file(tmp_path, tiny_checkpoint):
    return save_checkpoint(tiny_checkpoint, tmp_path / "tiny.safetensors")


def disc_labels(shape=(64, 64), centers=((32, 22), (32, 42)), radius=11) -> np.ndarray:
    """Instance labels of discs; the default two touch along a vertical line."""
    yy, xx = np.mgrid[: shape[0], : shape[1]]
    labels = np.zeros(shape, np.int32)
    for i, (cy, cx) in enumerate(centers, start=1):
        disc = (yy - cy) ** 2 + (xx - cx) ** 2 <= radius**2
        labels[disc & (labels == 0)] = i
    return labels


@pytest.fixture(autouse=True)
def _private_config_dir(tmp_path, monkeypatch):
    """Recent-file lists go to a temporary folder, not the user's."""
    monkeypatch.setenv("UNET_TUNER_CONFIG_DIR", str(tmp_path / "config"))


@pytest.fixture
def tuner(make_napari_viewer, tmp_path, monkeypatch):
    """The widget docked in a real viewer, with a tiny model instead of the bundled one."""
    from napari_unet_tuner._widgets import model_panel
    from napari_unet_tuner._widgets.tuner import UNetTunerWidget

    path = save_checkpoint(make_checkpoint(), tmp_path / "tiny.safetensors")
    monkeypatch.setattr(model_panel, "default_checkpoint_path", lambda: path)
    viewer = make_napari_viewer()
    widget = UNetTunerWidget(viewer)
    viewer.window.add_dock_widget(widget)
    return widget
