"""The U-Net and its checkpoint files."""

from napari_unet_tuner.model.checkpoint import Checkpoint, default_checkpoint_path, new_card
from napari_unet_tuner.model.loading import load_checkpoint
from napari_unet_tuner.model.saving import save_checkpoint
from napari_unet_tuner.model.torch_import import import_state_dict
from napari_unet_tuner.model.unet import UNet

__all__ = [
    "Checkpoint",
    "UNet",
    "default_checkpoint_path",
    "import_state_dict",
    "load_checkpoint",
    "new_card",
    "save_checkpoint",
]
