"""Chunked segmentation on dask: same labels as in memory, resumable, on a LocalCluster."""

import json
from dataclasses import replace

import numpy as np
import pytest
import torch
from scipy import ndimage

from napari_unet_tuner import Checkpoint, UNet, new_card
from napari_unet_tuner.config import ChunkedConfig, InferenceConfig, InstanceConfig
from napari_unet_tuner.inference import chunked as chunked_module
from napari_unet_tuner.inference.chunked import iter_segment_to_zarr, segment_to_zarr
from napari_unet_tuner.inference.chunked_output import WORK_DIR, is_complete
from napari_unet_tuner.inference.image import ImageReader
from napari_unet_tuner.inference.instances import probabilities_to_labels
from napari_unet_tuner.inference.predictor import make_predictor
from napari_unet_tuner.inference.tiling import fit_tile_shape, predict_tiled
from napari_unet_tuner.io import FileImage
from napari_unet_tuner.labels_files import open_labels_zarr

from conftest import TINY

zarr = pytest.importorskip("zarr")

CHUNK = (64, 64)
INFERENCE = InferenceConfig(tile_shape=(32, 32), batch_size=1)


@pytest.fixture(scope="module")
def sharp_checkpoint() -> Checkpoint:
    """A tiny random U-Net whose outputs vary enough over an image to make many objects."""
    torch.manual_seed(0)
    model = UNet(TINY).eval()
    with torch.no_grad():
        model.final_conv.weight.mul_(50.0)
        model.final_conv.bias.zero_()
    return Checkpoint.from_model(model, new_card(TINY, name="sharp"))


@pytest.fixture(scope="module")
def image() -> np.ndarray:
    rng = np.random.default_rng(0)
    return ndimage.gaussian_filter(rng.normal(100, 10, (150, 230)), 3).astype(np.float32)


def in_memory(image, checkpoint, block_shape=CHUNK):
    """Probabilities and labels of the whole image at once, with thresholds that make objects."""
    reader = ImageReader(image, "YX", 2, 1, checkpoint.card.normalization_config)
    predictor = make_predictor(checkpoint.build_model("cpu"), "cpu")
    tile_shape = fit_tile_shape(
        reader.spatial_shape, (32, 32), TINY.size_multiple, INFERENCE.overlap
    )
    prob = predict_tiled(
        lambda sl: reader.read((), sl),
        reader.spatial_shape,
        predictor,
        3,
        tile_shape,
        INFERENCE.overlap,
        1,
    )
    instances = InstanceConfig(
        threshold=float(1 - np.quantile(prob[0].astype(np.float32), 0.6)),
        seed_threshold=float(np.quantile(prob[1].astype(np.float32), 0.8)),
        min_size=5,
    )
    labels = probabilities_to_labels(prob, "boundary3", instances, block_shape=block_shape)
    return labels, instances


def same_up_to_renumbering(a: np.ndarray, b: np.ndarray) -> bool:
    pairs = np.unique(np.stack([a.ravel(), b.ravel()]), axis=1)
    return pairs.shape[1] == len(np.unique(a)) == len(np.unique(b)) and bool(
        np.all((pairs[0] == 0) == (pairs[1] == 0))
    )


def crosses_corner(labels: np.ndarray, y: int, x: int) -> bool:
    """Whether one object has pixels in all four chunks that meet at (y, x)."""
    quarters = [labels[:y, :x], labels[:y, x:], labels[y:, :x], labels[y:, x:]]
    common = set(np.unique(quarters[0])) - {0}
    for quarter in quarters[1:]:
        common &= set(np.unique(quarter))
    return bool(common)


def test_chunked_labels_equal_in_memory_labels(tmp_path, image, sharp_checkpoint):
    expected, instances = in_memory(image, sharp_checkpoint)
    assert expected.max() > 50
    # The test means something only if objects cross chunk faces and corners.
    assert any(crosses_corner(expected, y, x) for y in (64, 128) for x in (64, 128, 192))
    out = tmp_path / "labels.zarr"
    result = segment_to_zarr(
        image,
        out,
        sharp_checkpoint,
        axes="YX",
        inference=INFERENCE,
        instances=instances,
        chunked=ChunkedConfig(chunk_shape=CHUNK),
    )
    labels = open_labels_zarr(out)
    assert labels.chunks == CHUNK and labels.dtype == np.int32
    got = labels[:]
    assert same_up_to_renumbering(expected, got)
    assert result.objects == got.max() == len(np.unique(got)) - 1 == expected.max()
    assert result.chunks == 3 * 4 and result.resumed == 0
    assert is_complete(out) and not (out / WORK_DIR).exists()


def test_naive_per_chunk_labels_would_differ(image, sharp_checkpoint):
    """The stitching is needed: labelling chunk by chunk alone splits objects."""
    expected, instances = in_memory(image, sharp_checkpoint)
    whole, _ = in_memory(image, sharp_checkpoint, block_shape=(1024, 1024))
    naive = np.zeros_like(expected)
    crossing = set()
    for y in range(0, expected.shape[0], 64):
        for x in range(0, expected.shape[1], 64):
            block = expected[y : y + 64, x : x + 64]
            # Each chunk numbers its own objects (background stays 0).
            naive[y : y + 64, x : x + 64] = np.where(block > 0, block + naive.max(), 0)
            ids = set(np.unique(block)) - {0}
            inside = {i for i in ids if (expected == i).sum() == (block == i).sum()}
            crossing |= ids - inside
    # Objects of this image cross chunk borders, and labelling chunk by chunk
    # cuts each into one piece per chunk it lies in.
    assert crossing
    assert len(np.unique(naive)) - len(np.unique(expected)) >= len(crossing)
    assert not same_up_to_renumbering(expected, naive)
    # Blocked and whole-image watersheds agree almost everywhere (the halo is enough).
    assert np.mean((expected > 0) == (whole > 0)) > 0.99


def test_planes_of_a_stack_get_unique_labels(tmp_path, image, sharp_checkpoint):
    _, instances = in_memory(image, sharp_checkpoint)
    stack = np.stack([image, image[::-1]])
    result = segment_to_zarr(
        stack,
        tmp_path / "stack.zarr",
        sharp_checkpoint,
        axes="ZYX",
        inference=replace(INFERENCE, stack="planes"),
        instances=instances,
        chunked=ChunkedConfig(chunk_shape=CHUNK),
    )
    labels = open_labels_zarr(tmp_path / "stack.zarr")[:]
    assert result.axes == "ZYX" and labels.shape == stack.shape
    first, second = set(np.unique(labels[0])) - {0}, set(np.unique(labels[1])) - {0}
    assert first and second and not first & second
    assert max(second) == result.objects


def count_calls(monkeypatch, name):
    calls = []
    original = getattr(chunked_module, name)

    def counted(spec, chunk, arg):
        calls.append(chunk.index)
        return original(spec, chunk, arg)

    monkeypatch.setattr(chunked_module, name, counted)
    return calls


@pytest.mark.parametrize("stop_stage", ["segment", "relabel"])
def test_an_interrupted_run_resumes_without_redoing_finished_chunks(
    tmp_path, image, sharp_checkpoint, monkeypatch, stop_stage
):
    expected, instances = in_memory(image, sharp_checkpoint)
    out = tmp_path / "labels.zarr"
    kwargs = dict(
        axes="YX",
        inference=INFERENCE,
        instances=instances,
        chunked=ChunkedConfig(chunk_shape=CHUNK),
    )
    run = iter_segment_to_zarr(image, out, sharp_checkpoint, **kwargs)
    for progress in run:
        if progress.stage == stop_stage and progress.done == 5:
            break
    run.close()  # as an interrupted process: the run stops between chunks
    assert out.exists() and not is_complete(out)
    work = out / WORK_DIR
    assert json.loads((work / "manifest.json").read_text())["chunk_shape"] == [64, 64]
    finished = len(list(work.glob("segmented/*.npz"))), len(list(work.glob("relabelled/*")))

    segmented = count_calls(monkeypatch, "segment_chunk")
    relabelled = count_calls(monkeypatch, "relabel_chunk")
    result = segment_to_zarr(image, out, sharp_checkpoint, **kwargs)
    if stop_stage == "segment":
        assert 5 <= finished[0] < 12 and finished[1] == 0
        assert result.resumed == finished[0] and len(segmented) == 12 - finished[0]
        assert len(relabelled) == 12
    else:
        assert finished[0] == 12 and 5 <= finished[1] < 12
        assert result.resumed == 12 and segmented == [] and len(relabelled) == 12 - finished[1]
    assert same_up_to_renumbering(expected, open_labels_zarr(out)[:])
    assert is_complete(out)


def test_existing_outputs_are_never_overwritten_silently(tmp_path, image, sharp_checkpoint):
    out = tmp_path / "labels.zarr"
    kwargs = dict(axes="YX", inference=INFERENCE, chunked=ChunkedConfig(chunk_shape=CHUNK))
    segment_to_zarr(image, out, sharp_checkpoint, **kwargs)
    with pytest.raises(FileExistsError, match="finished result"):
        segment_to_zarr(image, out, sharp_checkpoint, **kwargs)
    # An interrupted run of other settings is not resumed with the wrong ones either.
    other = tmp_path / "other.zarr"
    run = iter_segment_to_zarr(image, other, sharp_checkpoint, **kwargs)
    next(run), next(run)
    run.close()
    with pytest.raises(FileExistsError, match="other settings"):
        segment_to_zarr(image[:, ::-1].copy(), other, sharp_checkpoint, **kwargs)
    result = segment_to_zarr(image, out, sharp_checkpoint, overwrite=True, **kwargs)
    assert result.resumed == 0 and is_complete(out)


@pytest.mark.slow
def test_a_local_cluster_gives_the_same_labels_from_a_zarr_file(tmp_path, image, sharp_checkpoint):
    expected, instances = in_memory(image, sharp_checkpoint)
    source = zarr.create_array(
        store=str(tmp_path / "image.zarr"), shape=image.shape, chunks=(50, 50), dtype="float32"
    )
    source[:] = image
    out = tmp_path / "labels.zarr"
    result = segment_to_zarr(
        FileImage(tmp_path / "image.zarr"),
        out,
        sharp_checkpoint,
        axes="YX",
        inference=INFERENCE,
        instances=instances,
        chunked=ChunkedConfig(chunk_shape=CHUNK, workers=2, memory_limit="1GB"),
    )
    assert result.chunks == 12
    assert same_up_to_renumbering(expected, open_labels_zarr(out)[:])


def test_ome_zarr_in_ome_zarr_out(tmp_path, image, sharp_checkpoint):
    from ome_zarr.writer import write_image

    group = zarr.open_group(str(tmp_path / "image.ome.zarr"), mode="w")
    write_image(image[None], group, axes="cyx", scaler=None)
    source = FileImage(tmp_path / "image.ome.zarr")
    assert source.ome and source.axes == "CYX" and source.shape == (1, *image.shape)
    out = tmp_path / "labels.ome.zarr"
    expected, instances = in_memory(image, sharp_checkpoint)
    result = segment_to_zarr(
        source,
        out,
        sharp_checkpoint,
        inference=INFERENCE,
        instances=instances,
        chunked=ChunkedConfig(chunk_shape=CHUNK),
        ome=True,
        scale=(0.5, 0.5),
    )
    labels = FileImage(out)
    assert result.axes == "YX" and labels.ome and labels.axes == "YX"
    assert labels.scale == (0.5, 0.5) and labels.shape == image.shape
    # What the OME-Zarr holds is the in-memory segmentation of the same image.
    assert expected.max() > 50 and same_up_to_renumbering(expected, np.asarray(labels[:]))


def test_a_3d_model_in_3d_chunks(tmp_path):
    from napari_unet_tuner import ModelConfig

    config = ModelConfig(spatial_dims=3, features=4, depth=1)
    torch.manual_seed(0)
    model = UNet(config).eval()
    with torch.no_grad():
        model.final_conv.weight.mul_(50.0)
        model.final_conv.bias.zero_()
    checkpoint = Checkpoint.from_model(model, new_card(config, name="sharp 3d"))
    rng = np.random.default_rng(0)
    volume = ndimage.gaussian_filter(rng.normal(100, 10, (20, 40, 36)), 2).astype(np.float32)
    reader = ImageReader(volume, "ZYX", 3, 1, checkpoint.card.normalization_config)
    prob = predict_tiled(
        lambda sl: reader.read((), sl),
        reader.spatial_shape,
        make_predictor(checkpoint.build_model("cpu"), "cpu"),
        3,
        # The tiles segmentation uses: (8, 16, 16) balanced over this volume.
        fit_tile_shape(
            reader.spatial_shape, (8, 16, 16), config.size_multiple, InferenceConfig.overlap
        ),
        InferenceConfig.overlap,
        1,
    )
    instances = InstanceConfig(
        threshold=float(1 - np.quantile(prob[0].astype(np.float32), 0.3)),
        seed_threshold=float(np.quantile(prob[1].astype(np.float32), 0.93)),
        min_size=5,
    )
    chunk = (8, 16, 16)
    expected = probabilities_to_labels(prob, "boundary3", instances, block_shape=chunk)
    result = segment_to_zarr(
        volume,
        tmp_path / "volume.zarr",
        checkpoint,
        inference=InferenceConfig(tile_shape=(8, 16, 16)),
        instances=instances,
        chunked=ChunkedConfig(chunk_shape=chunk),
    )
    assert result.chunks == 3 * 3 * 3 and expected.max() > 10
    assert same_up_to_renumbering(expected, open_labels_zarr(result.path)[:])


def test_a_zarr_run_says_when_segmentation_in_memory_would_resize(disc_model, tmp_path):
    from napari_unet_tuner import InferenceConfig, segment
    from napari_unet_tuner.model.checkpoint import with_card

    from conftest import disc_labels

    centers = [(y, x) for y in range(16, 192, 32) for x in range(16, 192, 32)]
    truth = disc_labels((192, 192), centers, radius=7)
    noise = np.random.default_rng(0).normal(0, 30, truth.shape)
    image = ((truth > 0) * 900 + 300 + noise).astype(np.float32)
    cpu = InferenceConfig(device="cpu")
    for model_diameter, resized in ((14.0, False), (40.0, True)):
        model = with_card(disc_model, object_diameter=model_diameter)
        in_memory = segment(image, model, inference=cpu)
        assert (in_memory.scale != 1.0) == resized
        result = segment_to_zarr(image, tmp_path / f"{model_diameter}.zarr", model, inference=cpu)
        assert bool(result.size_note) == resized
        if resized:
            assert f"resized x{in_memory.scale:.2f}" in result.size_note
            assert "about 14 px across" in result.size_note


def test_a_zarr_run_writes_the_object_table_an_in_memory_run_makes(tmp_path):
    import pandas as pd

    from napari_unet_tuner import InferenceConfig, segment
    from napari_unet_tuner._sample_data import nuclei_sample
    from napari_unet_tuner.model.checkpoint import default_checkpoint_path

    image = nuclei_sample()[0][0][:300, :300]
    settings = InferenceConfig(device="cpu", precision="fp32", diameter=None)
    in_memory = segment(image, default_checkpoint_path(), inference=settings).objects
    result = segment_to_zarr(
        image,
        tmp_path / "nuclei_labels.zarr",
        default_checkpoint_path(),
        inference=settings,
        chunked=ChunkedConfig(chunk_shape=(128, 128)),  # 9 chunks: objects cross borders
    )
    assert [p.name for p in result.tables] == [
        "nuclei_objects.csv",
        "nuclei_objects_possible_misses.csv",
    ]
    chunked = pd.read_csv(result.tables[0])
    assert list(chunked.columns) == list(in_memory.columns)
    assert len(chunked) == len(in_memory) == result.objects > 20
    by_place = ["centroid-0", "centroid-1"]
    a = in_memory.sort_values(by_place).reset_index(drop=True)
    b = chunked.sort_values(by_place).reset_index(drop=True)
    for column in ("area", "centroid-0", "centroid-1", "size_deviation"):
        np.testing.assert_allclose(b[column], a[column], rtol=1e-9, atol=1e-9)
    np.testing.assert_allclose(b["intensity_mean"], a["intensity_mean"], rtol=1e-5)
    np.testing.assert_allclose(b["interior_mean"], a["interior_mean"], atol=1e-4)
    # Stability is judged on each chunk plus its halo: nearly the same.
    np.testing.assert_allclose(b["stability"], a["stability"], atol=0.05)
    assert sorted(b["review_rank"]) == list(range(1, len(b) + 1))
    labels = open_labels_zarr(result.path)[:]
    for _, row in b.iterrows():
        assert (labels == row["label"]).sum() == row["area"]


def test_chunked_workers_run_the_runtime_chosen_for_the_run(
    tmp_path, image, sharp_checkpoint, monkeypatch
):
    pytest.importorskip("openvino")
    from napari_unet_tuner.inference import chunk_tasks

    _, instances = in_memory(image, sharp_checkpoint)
    built = []
    real = chunk_tasks.build_predictor

    def spy(*args, **kwargs):
        predictor, choice = real(*args, **kwargs)
        built.append(choice.label)
        return predictor, choice

    monkeypatch.setattr(chunk_tasks, "build_predictor", spy)
    labels = {}
    for runtime in ("torch", "openvino"):
        out = tmp_path / f"{runtime}.zarr"
        segment_to_zarr(
            image,
            out,
            sharp_checkpoint,
            axes="YX",
            inference=replace(INFERENCE, runtime=runtime, precision="fp32"),
            instances=instances,
            chunked=ChunkedConfig(chunk_shape=CHUNK),
        )
        labels[runtime] = open_labels_zarr(out)[:]
    # Every chunk task of each run built the run's runtime, none another.
    assert built.count("torch fp32") == built.count("openvino fp32") == 3 * 4
    # float32 on both: the same objects (a pixel may differ at a threshold).
    assert np.mean((labels["torch"] > 0) == (labels["openvino"] > 0)) > 0.999
    assert abs(int(labels["torch"].max()) - int(labels["openvino"].max())) <= 1
