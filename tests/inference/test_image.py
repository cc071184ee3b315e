import numpy as np
import pytest

from napari_unet_tuner import InputError, NormalizationConfig
from napari_unet_tuner.inference import ImageReader, infer_axes


@pytest.mark.parametrize(
    ("shape", "spatial_dims", "in_channels", "axes"),
    [
        ((64, 64), 2, 1, "YX"),
        ((64, 64, 3), 2, 1, "YXC"),
        ((64, 64, 3), 2, 3, "YXC"),
        ((2, 64, 64), 2, 2, "CYX"),
        ((10, 64, 64), 2, 1, "ZYX"),
        ((10, 64, 64), 3, 1, "ZYX"),
        ((5, 10, 64, 64), 2, 1, "TZYX"),
        ((10, 2, 64, 64), 2, 2, "ZCYX"),
        ((10, 64, 64, 4), 2, 1, "ZYXC"),
        ((2, 10, 2, 64, 64), 3, 2, "TZCYX"),
    ],
)
def test_axes_rule(shape, spatial_dims, in_channels, axes):
    assert infer_axes(shape, spatial_dims, in_channels) == axes


def test_axes_errors_say_what_is_wrong():
    with pytest.raises(InputError, match="expected 2 to 5"):
        infer_axes((4,))
    img = np.zeros((4, 8, 8))
    with pytest.raises(InputError, match="name 2 axes"):
        ImageReader(img, "YX", 2, 1)
    with pytest.raises(InputError, match="at most once"):
        ImageReader(img, "YYX", 2, 1)
    with pytest.raises(InputError, match="needs a Z axis"):
        ImageReader(img, "TYX", 3, 1)
    with pytest.raises(InputError, match="model reads 1 channel.*has 2"):
        ImageReader(np.zeros((2, 8, 8)), "CYX", 2, 1)
    with pytest.raises(InputError, match="dtype"):
        ImageReader(np.zeros((8, 8), complex), "YX", 2, 1)


def test_uint16_with_large_offset_is_normalized_to_unit_range():
    rng = np.random.default_rng(0)
    img = (33000 + rng.integers(0, 400, (128, 128))).astype(np.uint16)
    tile = ImageReader(img, "YX", 2, 1).read((), (slice(0, 128), slice(0, 128)))
    assert tile.dtype == np.float32 and tile.shape == (1, 128, 128)
    assert -0.1 < np.percentile(tile, 1) < 0.1
    assert 0.9 < np.percentile(tile, 99.8) < 1.1


def test_constant_image_gives_finite_zeros():
    tile = ImageReader(np.full((32, 32), 7, np.uint8), "YX", 2, 1).read(
        (), (slice(0, 32), slice(0, 32))
    )
    assert np.isfinite(tile).all() and (tile == 0).all()


def test_nan_is_a_clear_error():
    img = np.ones((32, 32), np.float32)
    img[3, 4] = np.nan
    with pytest.raises(InputError, match="NaN or infinite.*nan_to_num"):
        ImageReader(img, "YX", 2, 1).read((), (slice(0, 32), slice(0, 32)))


def test_rgb_goes_to_one_channel_models_as_grey():
    rng = np.random.default_rng(0)
    img = rng.integers(0, 256, (16, 16, 3)).astype(np.uint8)
    reader = ImageReader(img, "YXC", 2, 1)
    grey = reader.read((), (slice(0, 16), slice(0, 16)))
    assert grey.shape == (1, 16, 16)
    # The mean of the three channels, each normalized by its own percentiles.
    lo, hi = reader.time_point_statistics(())
    channels = [(img[..., c] - lo[c]) / (hi[c] - lo[c]) for c in range(3)]
    np.testing.assert_allclose(grey[0], np.mean(channels, axis=0), rtol=1e-5, atol=1e-6)
    # Not one channel alone: each one matters.
    for c in range(3):
        assert not np.allclose(grey[0], channels[c])


def test_statistics_are_shared_within_a_time_point():
    img = np.zeros((2, 3, 32, 32), np.float32)
    img[0, 1] = np.linspace(0, 100, 32 * 32).reshape(32, 32)
    img[1] = 5.0
    reader = ImageReader(img, "TZYX", 2, 1)
    full = (slice(0, 32), slice(0, 32))
    empty_plane = reader.read((0, 0), full)
    assert np.allclose(empty_plane, empty_plane.flat[0]) and empty_plane.max() <= 0.01
    assert reader.read((0, 1), full).max() > 0.9
    assert (reader.read((1, 2), full) == 0).all()


class CountingArray:
    """An array-like that records how many elements each read touches."""

    def __init__(self, data):
        self.data, self.shape, self.dtype, self.reads = data, data.shape, data.dtype, []

    def __getitem__(self, index):
        out = self.data[index]
        self.reads.append(out.size)
        return out


def test_lazy_arrays_are_read_tile_by_tile():
    from napari_unet_tuner.inference.tiling import predict_tiled

    data = CountingArray(np.random.default_rng(0).random((300, 300), dtype=np.float32))
    reader = ImageReader(data, "YX", 2, 1, NormalizationConfig(max_samples=5000))
    predict_tiled(lambda sl: reader.read((), sl), (300, 300), lambda b: b, 1, (64, 64))
    assert max(data.reads) <= 64 * 64
    assert len(data.reads) > 10


def test_a_few_bright_pixels_on_a_flat_background_span_the_unit_range():
    img = np.zeros((100, 100), np.uint16)
    img[10:13, 10:13] = 3000  # 9 pixels: under the top 0.2 %
    tile = ImageReader(img, "YX", 2, 1).read((), (slice(0, 100), slice(0, 100)))
    assert tile.max() == pytest.approx(1.0) and tile.min() == 0.0
