"""Torch's libraries load before ``import torch``, and torch works after."""

import subprocess
import sys

import pytest

SCRIPT = """
import sys
from pathlib import Path
from napari_unet_tuner._widgets.torch_libraries import preload_torch_libraries

assert preload_torch_libraries()
assert "torch" not in sys.modules
maps = Path("/proc/self/maps").read_text()
assert "libtorch_cpu.so" in maps and "libtorch_python.so" in maps
import torch

from napari_unet_tuner.model.unet import UNet
from napari_unet_tuner.config import ModelConfig
config = ModelConfig(features=4, depth=2)
shape = tuple(UNet(config)(torch.zeros(1, 1, 16, 16)).shape)
assert shape == (1, config.out_channels, 16, 16), shape
assert not preload_torch_libraries()  # torch is imported: nothing to do
"""


@pytest.mark.skipif(sys.platform != "linux", reason="dlopen of ELF libraries: Linux only")
def test_libraries_load_without_torch_then_torch_runs_a_model():
    out = subprocess.run(
        [sys.executable, "-c", SCRIPT], capture_output=True, text=True, timeout=120
    )
    assert out.returncode == 0, out.stderr
