"""Automatic object size: the estimate, the scale it sets, and the pipeline around it."""

import numpy as np
import pytest
from scipy import ndimage
from skimage.transform import rescale

from napari_unet_tuner import InferenceConfig, load_checkpoint, segment
from napari_unet_tuner._sample_data import nuclei_sample
from napari_unet_tuner.config import parse_diameter
from napari_unet_tuner.errors import ConfigError, InputError
from napari_unet_tuner.inference.chunked_plan import check_chunked_inference
from napari_unet_tuner.inference.object_size import (
    estimate_object_size,
    median_diameter,
    scale_for,
)
from napari_unet_tuner.model.checkpoint import default_checkpoint_path

from conftest import disc_labels, make_checkpoint

MODEL_DIAMETER = 20.0


def disc_field(radius: float, shape=(256, 256), spacing: float = 3.0) -> np.ndarray:
    """A grid of separate discs of ``radius`` pixels."""
    step = int(spacing * radius)
    centers = [
        (y, x)
        for y in range(step // 2, shape[0] - step // 2, step)
        for x in range(step // 2, shape[1] - step // 2, step)
    ]
    return disc_labels(shape, centers, radius)


def fragmenting_model(image: np.ndarray) -> np.ndarray:
    """A stand-in for a model: finds bright objects, but cuts any larger than twice its size.

    Large objects come out as pieces about `MODEL_DIAMETER` across, as a
    U-Net cuts nuclei far larger than those it was trained on.
    """
    labels, _ = ndimage.label(image[0] > 0.5)
    yy, xx = np.mgrid[: labels.shape[0], : labels.shape[1]]
    cell = int(MODEL_DIAMETER)
    pieces = labels * 10_000 + (yy // cell) * 100 + xx // cell
    out = labels.copy()
    for index, box in enumerate(ndimage.find_objects(labels), start=1):
        if box is None:
            continue
        span = max(s.stop - s.start for s in box)
        if span > 2 * MODEL_DIAMETER:
            region = labels[box] == index
            out[box][region] = pieces[box][region]
    _, compact = np.unique(out, return_inverse=True)
    return compact.reshape(out.shape).astype(np.int32)


def test_median_diameter_counts_whole_objects_only():
    labels = disc_field(radius=7)
    diameter, count = median_diameter(labels)
    assert diameter == pytest.approx(14, abs=1)
    assert count == len(np.unique(labels)) - 1
    cut = labels[:, 3:]  # the first column of discs loses its left side
    assert median_diameter(cut)[1] < count
    assert median_diameter(disc_labels((64, 64), [(32, 32)], 7)) == (None, 1)


def test_scale_runs_near_sizes_as_they_are_and_resizes_far_ones():
    assert scale_for(None, 25) == 1.0
    assert scale_for(13, 25) == scale_for(25, 25) == scale_for(40, 25) == 1.0
    assert scale_for(100, 25) == pytest.approx(0.25)
    assert scale_for(6, 25) == pytest.approx(0.7 * 25 / 6)
    assert scale_for(1000, 25) == 0.1  # within what the pipeline accepts


@pytest.mark.parametrize("radius", [4, 10, 20, 40, 70])
def test_the_estimate_sees_through_pieces_the_model_cuts(radius):
    side = 512 if radius < 70 else 1400  # room for five whole discs
    image = (disc_field(radius, shape=(side, side)) > 0).astype(np.float32)[None]
    estimate = estimate_object_size(image, fragmenting_model, MODEL_DIAMETER)
    assert estimate.diameter == pytest.approx(2 * radius, rel=0.15)
    assert estimate.scale == pytest.approx(scale_for(estimate.diameter, MODEL_DIAMETER))


def test_nothing_to_measure_keeps_the_scale():
    empty = np.zeros((1, 256, 256), np.float32)
    estimate = estimate_object_size(empty, fragmenting_model, MODEL_DIAMETER)
    assert (estimate.diameter, estimate.scale) == (None, 1.0)


def test_the_default_finds_zoomed_nuclei_as_it_finds_them_unzoomed():
    checkpoint = load_checkpoint(default_checkpoint_path())
    ((image, _, _),) = nuclei_sample()
    plain = segment(image, checkpoint)
    # The scratch assay's nuclei are 11.7 px across (median of its labels).
    assert plain.object_size.diameter == pytest.approx(11.7, rel=0.15)
    count = plain.labels.max()
    for zoom, scales in ((4, (0.3, 0.7)), (0.5, (2.0, 4.0))):
        zoomed = rescale(image.astype(np.float32), zoom, order=1, anti_aliasing=zoom < 1)
        auto = segment(zoomed, checkpoint)
        assert auto.object_size.diameter == pytest.approx(
            zoom * plain.object_size.diameter, rel=0.2
        )
        assert scales[0] < auto.scale < scales[1]
        assert auto.labels.shape == zoomed.shape
        assert abs(int(auto.labels.max()) - count) < 0.15 * count
    fixed = segment(zoomed, checkpoint, inference=InferenceConfig(diameter=None))
    assert abs(int(fixed.labels.max()) - count) > 0.3 * count  # what auto size fixes


def test_diameter_is_checked_and_read_as_typed():
    assert parse_diameter(" Auto ") == "auto"
    assert parse_diameter("none") is None
    assert parse_diameter("32.5") == 32.5
    with pytest.raises(ValueError):
        parse_diameter("big")
    with pytest.raises(ConfigError, match="diameter must be"):
        InferenceConfig(diameter=0.5)
    with pytest.raises(ConfigError, match="either diameter"):
        InferenceConfig(diameter=30.0, scale=0.5)
    with pytest.raises(InputError, match="object size to auto"):
        check_chunked_inference(InferenceConfig(diameter=30.0))
    check_chunked_inference(InferenceConfig())  # auto: chunks run at scale 1


def test_a_given_diameter_needs_a_model_that_knows_its_size():
    unsized = make_checkpoint()
    image = np.zeros((64, 64), np.float32)
    assert segment(image, unsized).object_size is None  # auto: nothing to compare with
    with pytest.raises(InputError, match="does not say what object size"):
        segment(image, unsized, inference=InferenceConfig(diameter=30.0))
    sized = make_checkpoint(object_diameter=10.0)
    result = segment(image, sized, inference=InferenceConfig(diameter=40.0))
    assert result.scale == 0.25 and result.labels.shape == image.shape


def median_of_whole(labels):
    areas = np.bincount(labels.ravel())[1:9]  # ids 1-8: the discs
    areas = areas[areas > 0]
    return float(np.median(2 * np.sqrt(areas / np.pi)))


def test_painted_objects_are_measured_plane_by_plane():
    from napari_unet_tuner.inference.object_size import painted_diameter

    assert painted_diameter(np.zeros((2, 32, 32), np.int32)) is None
    # Fewer than MIN_OBJECTS whole: the one cut in half by the border counts too.
    few = disc_labels((64, 64), [(32, 32), (0, 32)], 7)
    halves = np.bincount(few.ravel())[1:]
    assert halves[1] < 0.6 * halves[0]  # the second is cut
    expected = np.median(2 * np.sqrt(halves / np.pi))
    assert painted_diameter(few) == pytest.approx(expected) and expected < 13
    # Enough whole ones: the cut one is left out.
    many = disc_labels((128, 128), [(20, 20), (20, 60), (60, 20), (60, 60), (100, 100)], 7)
    many[0:4, 100:110] = 9  # a sliver cut by the border
    assert painted_diameter(many) == pytest.approx(median_of_whole(many), abs=0.01)
    assert painted_diameter(many) == pytest.approx(14, abs=1)
    stack = np.stack([np.zeros((256, 256), np.int32), disc_field(radius=10)])
    assert painted_diameter(stack) == pytest.approx(20, abs=1)
