"""The checkpoint that ships with the package: small, described, and working on the sample."""

from pathlib import Path

import numpy as np
import pytest
import tifffile
from skimage.filters import gaussian, threshold_otsu

from napari_unet_tuner import ConfigError, InferenceConfig, load_checkpoint, segment
from napari_unet_tuner._sample_data import nuclei_sample
from napari_unet_tuner.model.checkpoint import default_checkpoint_path
from napari_unet_tuner.training.metrics import match_counts


def test_bundled_default_is_small_and_its_card_says_what_it_expects():
    path = default_checkpoint_path()
    assert path.stat().st_size < 5e6  # float16 storage
    card = load_checkpoint(path).card
    assert card.channel_names == ("nuclei",)
    for needed in ("pixels across", "object size", "hand-annotated", "Held-out AP@0.5"):
        assert needed in card.description
    assert "trackastra" in card.description
    assert card.object_diameter == 25.0
    assert card.training


def test_bundled_default_scores_on_a_held_out_frame_measured_now():
    # A fresh score on labels the model never saw, not the one its card records.
    ((image, _, _),) = nuclei_sample()
    truth = tifffile.imread(Path(__file__).parents[1] / "data" / "sample_nuclei_labels.tif")
    labels = segment(image, default_checkpoint_path()).labels
    tp, fp, fn = match_counts(truth, labels, 0.5)
    assert tp / (tp + fp + fn) > 0.6


def test_bundled_default_finds_the_nuclei_of_the_sample():
    ((image, _, _),) = nuclei_sample()
    labels = segment(image, default_checkpoint_path()).labels
    areas = np.bincount(labels.ravel())[1:]
    # Hoechst nuclei about 12 px across, some 90-100 in this frame.
    assert 60 <= labels.max() <= 150
    assert 60 <= np.median(areas) <= 300
    smooth = gaussian(image.astype(np.float32), 1.5, preserve_range=True)
    otsu = smooth > threshold_otsu(smooth)
    found = labels > 0
    dice = 2 * (otsu & found).sum() / (otsu.sum() + found.sum())
    assert dice > 0.75


def test_a_few_bright_nuclei_on_a_flat_background_are_each_one_object():
    # Fewer nuclear pixels than the top 0.2 %: the 1st and 99.8th percentiles
    # are both 0, and raw intensities of 3000 once made 15 objects of 3.
    image = np.zeros((512, 512), np.uint16)
    yy, xx = np.mgrid[:512, :512]
    for cy, cx in ((100, 100), (250, 380), (400, 200)):
        image[(yy - cy) ** 2 + (xx - cx) ** 2 <= 36] = 3000
    labels = segment(image, default_checkpoint_path()).labels
    assert labels.max() == 3
    for cy, cx in ((100, 100), (250, 380), (400, 200)):
        assert labels[cy, cx] > 0


def test_bfloat16_gives_the_labels_of_float32_on_the_sample():
    ((image, _, _),) = nuclei_sample()
    runs = {
        precision: segment(
            image,
            default_checkpoint_path(),
            inference=InferenceConfig(precision=precision, diameter=None),
            return_probabilities=True,
        )
        for precision in ("fp32", "bf16")
    }
    fp32, bf16 = runs["fp32"], runs["bf16"]
    difference = np.abs(fp32.probabilities.astype(np.float32) - bf16.probabilities)
    assert 0 < difference.max() < 0.1  # really another number format, and close
    tp, fp, fn = match_counts(fp32.labels, bf16.labels, 0.5)
    assert tp / (tp + fp + fn) > 0.97


def test_precision_is_checked_and_auto_follows_the_cpu(monkeypatch):
    import torch

    from napari_unet_tuner.inference import device as device_module

    with pytest.raises(ConfigError, match="precision must be one of auto, bf16, fp32"):
        InferenceConfig(precision="fp16")
    cpu = torch.device("cpu")
    monkeypatch.setattr(device_module, "cpu_computes_bf16", lambda: False)
    assert device_module.inference_dtype(cpu, "auto") is None
    assert device_module.inference_dtype(cpu, "bf16") == torch.bfloat16
    monkeypatch.setattr(device_module, "cpu_computes_bf16", lambda: True)
    assert device_module.inference_dtype(cpu, "auto") == torch.bfloat16
    assert device_module.inference_dtype(cpu, "fp32") is None
    assert device_module.inference_dtype(torch.device("cuda"), "auto") == torch.float16
