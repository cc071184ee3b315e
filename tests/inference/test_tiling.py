import numpy as np
import pytest

from napari_unet_tuner import InferenceConfig, load_checkpoint, segment
from napari_unet_tuner._sample_data import nuclei_sample
from napari_unet_tuner.inference import iter_predict_tiled, predict_tiled
from napari_unet_tuner.inference.tiling import fit_tile_shape, tile_starts
from napari_unet_tuner.model.checkpoint import default_checkpoint_path
from napari_unet_tuner.training.metrics import average_precision


@pytest.mark.parametrize(
    ("size", "tile", "overlap"),
    [(100, 32, 8), (32, 32, 8), (20, 32, 8), (257, 64, 16), (65, 64, 0), (1000, 256, 32)],
)
def test_tiles_cover_the_image_with_at_least_the_overlap(size, tile, overlap):
    starts = tile_starts(size, tile, overlap)
    assert starts[0] == 0
    assert starts[-1] + min(tile, size) == size
    assert all(b - a <= tile - overlap for a, b in zip(starts, starts[1:], strict=False))
    assert starts == sorted(set(starts))


def test_fit_tile_shape_rounds_to_model_multiple_and_clips():
    assert fit_tile_shape((1000, 70), (250, 256), 16) == (240, 64)
    assert fit_tile_shape((10, 500), (256, 256), 16) == (10, 256)
    with pytest.raises(ValueError, match="spatial axes"):
        fit_tile_shape((10, 10), (8, 8, 8), 4)


@pytest.mark.parametrize("shape", [(200, 150), (64, 64), (33, 97), (20, 40, 36)])
def test_blending_is_seamless_for_a_pointwise_predictor(shape):
    """With a predictor that changes nothing, tiling plus blending must return the input."""
    rng = np.random.default_rng(0)
    image = rng.random((1, *shape), dtype=np.float32)
    tile = (16,) * len(shape) if len(shape) == 3 else (48, 48)
    out = predict_tiled(
        lambda sl: image[(slice(None), *sl)],
        shape,
        lambda b: b * 2,
        1,
        tile,
        overlap=0.25,
        batch_size=3,
        out=np.empty((1, *shape), np.float32),
    )
    np.testing.assert_allclose(out, image * 2, rtol=1e-5)


def test_default_tiles_give_what_a_whole_image_pass_gives():
    """A trained model on real nuclei: tiling with the default overlap changes little.

    The former default (256-pixel tiles overlapping by 32, less than the
    network's field of view) differed by 0.11 here, and so does this test's
    sensitivity check; a shifted, flipped or constant output by far more.
    """
    checkpoint = load_checkpoint(default_checkpoint_path())
    ((image, _, _),) = nuclei_sample()
    image = image[:208, :576]  # whole multiples of 16: the whole-image pass needs no tiles

    def run(**inference):
        result = segment(
            image,
            checkpoint,
            # At the image's own scale: this is about tiles, not object size.
            inference=InferenceConfig(diameter=None, **inference),
            return_probabilities=True,
        )
        return result.labels, result.probabilities.astype(np.float32)

    whole_labels, whole = run(tile_shape=image.shape, overlap=0.0)
    labels, tiled = run()  # two 512-pixel tiles across
    assert np.abs(tiled - whole).max() < 0.03
    assert average_precision(whole_labels, labels, 0.5) == 1.0
    _, narrow = run(tile_shape=(256, 256), overlap=0.125)
    assert np.abs(narrow - whole).max() > 0.05


def test_progress_per_tile_and_cancel_between_tiles():
    calls = []

    def predictor(batch):
        calls.append(len(batch))
        return batch

    image = np.zeros((1, 100, 100), np.float32)
    run = iter_predict_tiled(
        lambda sl: image[(slice(None), *sl)], (100, 100), predictor, 1, (32, 32), 0.25
    )
    first = next(run)
    assert (first.done, first.total) == (1, 16)
    second = next(run)
    assert second.done == 2 and second.elapsed >= first.elapsed
    run.close()
    assert len(calls) == 2


@pytest.mark.parametrize("size", [727, 1026, 300, 257, 4096])
def test_balanced_tiles_cover_with_as_many_tiles_and_less_work(size):
    overlap = 0.125
    plain = fit_tile_shape((size,), (256,), 16)[0]
    balanced = fit_tile_shape((size,), (256,), 16, overlap)[0]
    assert balanced % 16 == 0 and balanced <= plain
    plain_starts = tile_starts(size, plain, round(plain * overlap))
    starts = tile_starts(size, balanced, round(balanced * overlap))
    assert len(starts) == len(plain_starts)
    assert starts[-1] + balanced == size
    assert all(
        b - a <= balanced - round(balanced * overlap)
        for a, b in zip(starts, starts[1:], strict=False)
    )
    if size == 727:  # four 208-pixel tiles instead of four of 256
        assert balanced == 208
