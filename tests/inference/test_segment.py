import numpy as np
import pytest

from napari_unet_tuner import InferenceConfig, InputError, ModelConfig, iter_segment, segment

from conftest import make_checkpoint


@pytest.fixture(scope="module")
def sharp_tiny_checkpoint():
    """A tiny random model whose outputs vary enough to make several objects."""
    import torch

    ckpt = make_checkpoint()
    model = ckpt.build_model()
    with torch.no_grad():
        model.final_conv.weight.mul_(50.0)
        model.final_conv.bias.zero_()
    return type(ckpt).from_model(model, ckpt.card)


SMALL_TILES = InferenceConfig(tile_shape=(32, 32), device="cpu")


def test_time_series_gives_labels_unique_across_frames(sharp_tiny_checkpoint):
    # The same frame three times: the real instance step finds the same objects
    # in each, numbered on from the frame before.
    from scipy import ndimage

    from napari_unet_tuner import InstanceConfig

    rng = np.random.default_rng(0)
    frame = ndimage.gaussian_filter(rng.normal(100, 10, (40, 50)), 2).astype(np.float32)
    img = np.stack([frame] * 3)
    prob = segment(
        frame, sharp_tiny_checkpoint, inference=SMALL_TILES, return_probabilities=True
    ).probabilities.astype(np.float32)
    # Thresholds that make objects of this random model's output.
    instances = InstanceConfig(
        threshold=float(1 - np.quantile(prob[0], 0.6)),
        seed_threshold=float(np.quantile(prob[1], 0.8)),
        min_size=3,
    )
    run = {"inference": SMALL_TILES, "instances": instances}
    single = segment(frame, sharp_tiny_checkpoint, **run).labels
    count = int(single.max())
    assert count >= 2
    result = segment(img, sharp_tiny_checkpoint, axes="TYX", **run)
    assert result.axes == "TYX" and result.labels.shape == (3, 40, 50)
    for t, labels in enumerate(result.labels):
        np.testing.assert_array_equal(labels, np.where(single > 0, single + t * count, 0))


def test_3d_model_segments_a_volume_and_returns_probabilities():
    ckpt = make_checkpoint(ModelConfig(spatial_dims=3, features=2, depth=1))
    vol = np.random.default_rng(0).random((9, 20, 24), dtype=np.float32)
    result = segment(
        vol, ckpt, inference=InferenceConfig(tile_shape=(8, 16, 16)), return_probabilities=True
    )
    assert result.labels.shape == (9, 20, 24) and result.axes == "ZYX"
    assert result.probabilities.shape == (3, 9, 20, 24)
    np.testing.assert_allclose(result.probabilities.astype(np.float32).sum(0), 1, atol=5e-3)


def test_channel_last_multichannel_keeps_axis_order(tiny_checkpoint):
    img = np.random.default_rng(0).random((30, 20, 3), dtype=np.float32)
    result = segment(img, tiny_checkpoint, return_probabilities=True)
    assert result.axes == "YX" and result.labels.shape == (30, 20)


def test_dask_and_zarr_inputs_match_numpy(tiny_checkpoint, tmp_path):
    da = pytest.importorskip("dask.array")
    zarr = pytest.importorskip("zarr")
    img = (np.random.default_rng(2).random((70, 90)) * 5000).astype(np.uint16)
    expected = segment(img, tiny_checkpoint, inference=SMALL_TILES, return_probabilities=True)
    lazy = segment(
        da.from_array(img, chunks=32),
        tiny_checkpoint,
        inference=SMALL_TILES,
        return_probabilities=True,
    )
    z = zarr.open(
        str(tmp_path / "img.zarr"), mode="w", shape=img.shape, chunks=(32, 32), dtype=img.dtype
    )
    z[:] = img
    stored = segment(z, tiny_checkpoint, inference=SMALL_TILES, return_probabilities=True)
    for other in (lazy, stored):
        np.testing.assert_array_equal(other.probabilities, expected.probabilities)


def test_progress_then_cancel(tiny_checkpoint):
    import time

    from napari_unet_tuner.inference.predictor import make_predictor

    batches = []
    predict = make_predictor(tiny_checkpoint.build_model(), "cpu")

    def counting(batch):
        batches.append(len(batch))
        return predict(batch)

    img = np.zeros((2, 64, 64), np.float32)
    run = iter_segment(img, tiny_checkpoint, axes="TYX", inference=SMALL_TILES, predictor=counting)
    records = [next(run) for _ in range(10)]
    assert [r.stage for r in records] == ["predict"] * 9 + ["instances"]
    assert records[0].tiles_total == 2 * 9 and records[0].planes == 2
    fractions = [r.fraction for r in records]
    assert fractions == sorted(fractions)
    predicted = sum(batches)
    assert predicted == 9  # the first plane only, so far
    run.close()
    time.sleep(0.3)  # nothing left running in the background predicts more tiles
    assert sum(batches) == predicted
    with pytest.raises(StopIteration):
        next(run)


def test_bad_input_is_reported_before_work(tiny_checkpoint):
    with pytest.raises(InputError, match="model reads 1 channel"):
        segment(np.zeros((2, 32, 32)), tiny_checkpoint, axes="CYX")
    with pytest.raises(ValueError, match="no CUDA"):
        segment(np.zeros((32, 32)), tiny_checkpoint, inference=InferenceConfig(device="cuda"))


def _intensity_predictor(seen):
    """A stand-in model: bright pixels are interior, a 2 px dark rim is boundary."""

    def predict(batch):
        seen.append(batch.shape[-2:])
        bright = (batch[:, 0] > 0.5).astype(np.float32)
        out = np.zeros((batch.shape[0], 3, *batch.shape[2:]), np.float32)
        out[:, 0], out[:, 1] = 1 - bright, bright
        return out

    return predict


@pytest.mark.parametrize("scale", [0.5, 2.0])
def test_scale_runs_the_model_on_a_resized_image_and_labels_match_the_image(
    tiny_checkpoint, scale
):
    from conftest import disc_labels

    truth = disc_labels((96, 128), [(30, 30), (60, 90), (70, 30)], radius=12)
    image = (truth > 0).astype(np.float32) * 1000 + 100
    seen = []
    result = segment(
        image,
        tiny_checkpoint,
        inference=InferenceConfig(tile_shape=(64, 64), scale=scale, device="cpu"),
        predictor=_intensity_predictor(seen),
        return_probabilities=True,
    )
    assert result.labels.shape == image.shape
    assert result.probabilities.shape == (3, *image.shape)
    # The model saw the resized plane: tiles cover about scale**2 of the pixels.
    covered = sum(h * w for h, w in seen)
    assert covered >= image.size * scale**2 * 0.9
    assert covered <= image.size * scale**2 * 2
    found = result.labels
    assert found.max() == 3
    for label in (1, 2, 3):
        mask = truth == label
        overlap = np.bincount(found[mask]).argmax()
        iou = (mask & (found == overlap)).sum() / (mask | (found == overlap)).sum()
        assert overlap > 0 and iou > 0.85


def test_scale_is_refused_where_it_is_not_supported(tiny_checkpoint, tmp_path):
    from napari_unet_tuner.inference.chunked import segment_to_zarr

    with pytest.raises(ValueError, match="scale"):
        InferenceConfig(scale=0.01)
    with pytest.raises(InputError, match="not available for zarr output"):
        segment_to_zarr(
            np.zeros((64, 64), np.float32),
            tmp_path / "out.zarr",
            tiny_checkpoint,
            inference=InferenceConfig(scale=0.5),
        )
    assert not (tmp_path / "out.zarr").exists()
