"""CUDA checks: run on a machine with an NVIDIA GPU (``pytest -m gpu``), skipped elsewhere."""

import numpy as np
import pytest
import torch

from napari_unet_tuner import InferenceConfig, TrainingConfig, iter_fine_tune, segment

from conftest import disc_labels, make_checkpoint

pytestmark = [
    pytest.mark.gpu,
    pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU"),
]


def test_cuda_segmentation_matches_cpu():
    ckpt = make_checkpoint()
    image = np.random.default_rng(0).random((200, 300), dtype=np.float32)
    cpu = segment(image, ckpt, inference=InferenceConfig(device="cpu"), return_probabilities=True)
    gpu = segment(
        image,
        ckpt,
        inference=InferenceConfig(device="cuda", precision="fp32"),
        return_probabilities=True,
    )
    np.testing.assert_allclose(
        gpu.probabilities.astype(np.float32), cpu.probabilities.astype(np.float32), atol=2e-3
    )
    half = segment(
        image, ckpt, inference=InferenceConfig(device="cuda"), return_probabilities=True
    )
    assert np.isfinite(half.probabilities.astype(np.float32)).all()


def test_cuda_fine_tuning_with_mixed_precision():
    labels = disc_labels((96, 96), [(20, 20), (20, 50), (60, 30), (70, 70)], 9)
    image = ((labels > 0) * 900 + 300).astype(np.float32)
    config = TrainingConfig(max_seconds=30, max_epochs=2, steps_per_epoch=5, device="cuda")
    run = iter_fine_tune([(image, labels)], make_checkpoint(), config)
    records, result = [], None
    try:
        while True:
            records.append(next(run))
    except StopIteration as done:
        result = done.value
    trained = result.candidate or result.checkpoint
    record = trained.card.training[-1]
    assert record["device"].startswith("cuda")
    # float16 autocast with a loss scaler: the steps ran and their losses are finite.
    assert record["settings"]["training_precision"] == "float16"
    losses = [r.loss for r in records if r.kind == "step"]
    assert losses and all(np.isfinite(losses))
    assert all(
        v.device.type == "cpu" and v.dtype != torch.float16 for v in trained.state_dict.values()
    )


def test_chunked_run_uses_the_gpu_and_writes_the_same_objects(tmp_path):
    from napari_unet_tuner import ChunkedConfig, segment_to_zarr
    from napari_unet_tuner.labels_files import open_labels_zarr

    ckpt = make_checkpoint()
    labels = disc_labels((160, 160), [(40, 40), (40, 64), (100, 100), (120, 40)], 14)
    image = ((labels > 0) * 900 + 300).astype(np.float32)
    runs = {}
    for device in ("cpu", "cuda"):
        result = segment_to_zarr(
            image,
            tmp_path / f"{device}.zarr",
            ckpt,
            inference=InferenceConfig(device=device, precision="fp32"),
            chunked=ChunkedConfig(chunk_shape=(64, 64)),
        )
        runs[device] = (result, open_labels_zarr(result.path)[:])
    (cpu, cpu_labels), (gpu, gpu_labels) = runs["cpu"], runs["cuda"]
    assert gpu.chunks == cpu.chunks == 9
    assert abs(gpu.objects - cpu.objects) <= 1
    assert np.mean((gpu_labels > 0) == (cpu_labels > 0)) > 0.99
