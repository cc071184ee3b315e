"""The model's runtime: OpenVINO against torch, the converted-model cache, the probe, fallbacks."""

from __future__ import annotations

import json
import logging

import numpy as np
import pytest
import tifffile
import torch

from napari_unet_tuner import segment
from napari_unet_tuner.config import InferenceConfig, ModelConfig
from napari_unet_tuner.errors import ConfigError
from napari_unet_tuner.inference import openvino_runtime, predictor, runtime_probe
from napari_unet_tuner.inference.openvino_runtime import (
    converted_network,
    openvino_predictor,
    weights_digest,
)
from napari_unet_tuner.inference.predictor import build_predictor, make_predictor
from napari_unet_tuner.inference.runtime_probe import CHOICES_FILE, fastest
from napari_unet_tuner.model.checkpoint import default_checkpoint_path
from napari_unet_tuner.model.loading import load_checkpoint
from napari_unet_tuner.model.unet import UNet

pytest.importorskip("openvino")

SAMPLE = default_checkpoint_path().parent / "sample_nuclei.tif"


@pytest.fixture(scope="module")
def bundled_model() -> UNet:
    return load_checkpoint(default_checkpoint_path()).build_model("cpu").eval()


@pytest.fixture
def small_model() -> UNet:
    torch.manual_seed(0)
    return UNet(ModelConfig(features=4, depth=2)).eval()


def real_tile(shape=(208, 256)) -> np.ndarray:
    """A normalized crop of the bundled sample of nuclei, as a batch of one."""
    image = tifffile.imread(SAMPLE).astype(np.float32)[: shape[0], : shape[1]]
    low, high = np.percentile(image, (1, 99.8))
    return ((image - low) / (high - low))[None, None]


def test_openvino_matches_torch_on_a_real_tile(bundled_model, tmp_path):
    tile = real_tile()
    expected = make_predictor(bundled_model, "cpu", "fp32")(tile)
    fp32 = openvino_predictor(bundled_model, "fp32", tmp_path)(tile)
    assert fp32.shape == expected.shape and fp32.dtype == np.float32
    assert np.abs(fp32 - expected).max() < 1e-4
    bf16 = openvino_predictor(bundled_model, "bf16", tmp_path)(tile)
    # bfloat16 keeps 8 bits of mantissa: a few hundredths at most, the same foreground.
    assert np.abs(bf16 - expected).max() < 0.1
    assert ((bf16[:, 1] > 0.5) == (expected[:, 1] > 0.5)).mean() > 0.99


def test_openvino_pads_sizes_the_network_cannot_take_as_torch_does(small_model, tmp_path):
    batch = np.random.default_rng(1).random((2, 1, 37, 50), dtype=np.float32)
    expected = make_predictor(small_model, "cpu", "fp32")(batch)
    got = openvino_predictor(small_model, "fp32", tmp_path)(batch)
    assert got.shape == expected.shape == (2, 3, 37, 50)
    assert np.abs(got - expected).max() < 1e-5


def test_converted_network_is_cached_and_reused(small_model, tmp_path, monkeypatch):
    converted_network(small_model, tmp_path)
    entries = list((tmp_path / "openvino").glob("*.xml"))
    assert len(entries) == 1 and entries[0].with_suffix(".bin").is_file()

    def no_conversion(model):
        raise AssertionError("converted again although cached")

    monkeypatch.setattr(openvino_runtime, "_convert", no_conversion)
    batch = np.random.default_rng(2).random((1, 1, 32, 32), dtype=np.float32)
    got = openvino_predictor(small_model, "fp32", tmp_path)(batch)
    assert np.abs(got - make_predictor(small_model, "cpu", "fp32")(batch)).max() < 1e-5


def test_digest_follows_the_weights(small_model):
    digest = weights_digest(small_model)
    copy = UNet(small_model.config)
    copy.load_state_dict(small_model.state_dict())
    assert weights_digest(copy) == digest
    with torch.no_grad():
        copy.final_conv.bias.add_(1e-3)
    assert weights_digest(copy) != digest


def test_a_corrupt_or_foreign_cache_entry_is_converted_again(small_model, tmp_path, caplog):
    batch = np.random.default_rng(3).random((1, 1, 32, 32), dtype=np.float32)
    expected = make_predictor(small_model, "cpu", "fp32")(batch)
    converted_network(small_model, tmp_path)
    xml = next((tmp_path / "openvino").glob("*.xml"))

    xml.write_text(xml.read_text()[:200])  # truncated
    with caplog.at_level(logging.WARNING):
        got = openvino_predictor(small_model, "fp32", tmp_path)(batch)
    assert "unreadable" in caplog.text
    assert np.abs(got - expected).max() < 1e-5

    # Another model's network under this model's name: it must not run.
    torch.manual_seed(5)
    other = UNet(small_model.config).eval()
    converted_network(other, tmp_path)
    other_xml = next(p for p in (tmp_path / "openvino").glob("*.xml") if p != xml)
    xml.write_bytes(other_xml.read_bytes())
    xml.with_suffix(".bin").write_bytes(other_xml.with_suffix(".bin").read_bytes())
    caplog.clear()
    with caplog.at_level(logging.WARNING):
        got = openvino_predictor(small_model, "fp32", tmp_path)(batch)
    assert "other weights" in caplog.text
    assert np.abs(got - expected).max() < 1e-5


def test_probe_chooses_times_and_remembers(small_model, tmp_path, monkeypatch):
    run, choice = build_predictor(
        small_model, "cpu", "fp32", "auto", tile_shape=(64, 64), cache=tmp_path
    )
    assert choice.source == "probe"
    assert set(choice.speeds) == {"torch fp32", "openvino fp32"}
    assert all(v > 0 for v in choice.speeds.values())
    assert choice.label == fastest(choice.speeds)
    assert choice.conversion_seconds > 0  # converted now: its cost measured
    stored = json.loads((tmp_path / CHOICES_FILE).read_text())
    assert [entry["runtime"] for entry in stored.values()] == [choice.runtime]
    assert [entry["conversion_seconds"] for entry in stored.values()] == [
        choice.conversion_seconds
    ]

    def no_probe(*args, **kwargs):
        raise AssertionError("probed again although remembered")

    monkeypatch.setattr(predictor, "time_predictors", no_probe)
    again_run, again = build_predictor(
        small_model, "cpu", "fp32", "auto", tile_shape=(64, 64), cache=tmp_path
    )
    assert again.source == "remembered" and again.label == choice.label
    batch = np.random.default_rng(4).random((1, 1, 64, 64), dtype=np.float32)
    assert np.abs(again_run(batch) - run(batch)).max() < 1e-5


def test_a_damaged_choices_file_means_a_new_probe(small_model, tmp_path):
    (tmp_path / CHOICES_FILE).write_text("{not json")
    _, choice = build_predictor(
        small_model, "cpu", "fp32", "auto", tile_shape=(64, 64), cache=tmp_path
    )
    assert choice.source == "probe"
    assert json.loads((tmp_path / CHOICES_FILE).read_text())


def test_small_runs_take_torch_without_a_probe(small_model, tmp_path, monkeypatch):
    monkeypatch.setattr(predictor, "time_predictors", lambda *a, **k: pytest.fail("probed"))
    _, choice = build_predictor(small_model, "cpu", "auto", "auto", run_pixels=1e5, cache=tmp_path)
    assert (choice.runtime, choice.source) == ("torch", "small run")


def test_fastest_keeps_torch_on_a_near_tie():
    assert fastest({"torch fp32": 1.0, "openvino fp32": 1.03}) == "torch fp32"
    assert fastest({"torch fp32": 1.0, "openvino fp32": 1.2}) == "openvino fp32"
    assert fastest({"torch bf16": 3.0, "torch fp32": 1.0, "openvino fp32": 2.0}) == "torch bf16"


def test_missing_openvino_falls_back_to_torch(small_model, tmp_path, monkeypatch, caplog):
    monkeypatch.setattr(predictor, "openvino_available", lambda: False)
    with caplog.at_level(logging.WARNING):
        run, choice = build_predictor(small_model, "cpu", "fp32", "openvino", cache=tmp_path)
    assert (choice.runtime, choice.source) == ("torch", "fallback")
    assert "openvino]" in caplog.text  # says what to install
    _, auto = build_predictor(
        small_model, "cpu", "fp32", "auto", tile_shape=(64, 64), cache=tmp_path
    )
    assert auto.runtime == "torch"
    batch = np.random.default_rng(6).random((1, 1, 32, 32), dtype=np.float32)
    assert np.array_equal(run(batch), make_predictor(small_model, "cpu", "fp32")(batch))


def test_openvino_failing_falls_back_to_torch(small_model, tmp_path, monkeypatch, caplog):
    def broken(*args, **kwargs):
        raise RuntimeError("no CPU plugin")

    monkeypatch.setattr(predictor, "openvino_predictor", broken)
    with caplog.at_level(logging.WARNING):
        _, choice = build_predictor(small_model, "cpu", "fp32", "openvino", cache=tmp_path)
    assert choice.source == "fallback" and "no CPU plugin" in choice.note
    _, auto = build_predictor(
        small_model, "cpu", "fp32", "auto", tile_shape=(64, 64), cache=tmp_path
    )
    assert auto.runtime == "torch" and "no CPU plugin" in auto.note
    # A probe that could not time OpenVINO is not remembered.
    assert not (tmp_path / CHOICES_FILE).exists()


def test_openvino_failing_mid_run_hands_over_to_torch(small_model, tmp_path, monkeypatch):
    calls = []
    real = openvino_predictor(small_model, "fp32", tmp_path)

    def flaky(*args, **kwargs):
        def run(batch):
            calls.append(batch.shape)
            if len(calls) > 1:
                raise RuntimeError("out of memory")
            return real(batch)

        return run

    monkeypatch.setattr(predictor, "openvino_predictor", flaky)
    run, choice = build_predictor(small_model, "cpu", "fp32", "openvino", cache=tmp_path)
    batch = np.random.default_rng(7).random((1, 1, 32, 32), dtype=np.float32)
    expected = make_predictor(small_model, "cpu", "fp32")(batch)
    for _ in range(3):
        assert np.abs(run(batch) - expected).max() < 1e-5
    assert len(calls) == 2  # failed once, then torch for good


def test_segment_on_openvino_gives_torch_labels(tmp_path, monkeypatch):
    monkeypatch.setenv("UNET_TUNER_CACHE_DIR", str(tmp_path))
    image = tifffile.imread(SAMPLE)
    checkpoint = load_checkpoint(default_checkpoint_path())
    settings = {"precision": "fp32", "object_table": False, "diameter": None}
    on_torch = segment(image, checkpoint, inference=InferenceConfig(runtime="torch", **settings))
    on_openvino = segment(
        image, checkpoint, inference=InferenceConfig(runtime="openvino", **settings)
    )
    assert on_torch.runtime.label == "torch fp32"
    assert on_openvino.runtime.label == "openvino fp32"
    assert on_torch.labels.max() > 20
    # float32 outputs agree to 1e-6: the same objects, a pixel or two apart at most.
    same = (on_torch.labels > 0) == (on_openvino.labels > 0)
    assert same.mean() > 0.999
    assert abs(int(on_torch.labels.max()) - int(on_openvino.labels.max())) <= 1


def test_runtime_is_checked():
    with pytest.raises(ConfigError, match="runtime must be one of auto, torch, openvino"):
        InferenceConfig(runtime="onnx")


def test_the_machine_fingerprint_names_the_cpu_and_libraries():
    facts = runtime_probe.machine_fingerprint()
    assert facts["torch"] == torch.__version__
    assert facts["openvino"]
    assert isinstance(facts["native_bf16"], bool)


def test_openvino_runs_3d_models_as_torch_does(tmp_path):
    torch.manual_seed(0)
    model = UNet(ModelConfig(spatial_dims=3, features=4, depth=2)).eval()
    batch = np.random.default_rng(8).random((1, 1, 12, 20, 24), dtype=np.float32)
    expected = make_predictor(model, "cpu", "fp32")(batch)
    got = openvino_predictor(model, "fp32", tmp_path)(batch)
    assert got.shape == expected.shape == (1, 3, 12, 20, 24)
    assert np.abs(got - expected).max() < 1e-5


def test_new_weights_are_converted_only_where_it_pays(small_model, tmp_path):
    """A fine-tuned version needs its own conversion: not worth it on a small saving."""
    key = runtime_probe.choice_key(small_model.config, (64, 64), 1, "fp32")
    speeds = {"torch fp32": 1.0, "openvino fp32": 2.0}  # MP/s: 0.5 s saved per megapixel
    remembered = runtime_probe.RuntimeChoice(
        "openvino", "fp32", "probe", speeds, conversion_seconds=2.0
    )
    runtime_probe.remember_choice(key, remembered, tmp_path)
    settings = {"tile_shape": (64, 64), "cache": tmp_path}

    # 3 MP save 1.5 s < 2 s of conversion: torch, and nothing converted.
    _, choice = build_predictor(small_model, "cpu", "fp32", "auto", run_pixels=3e6, **settings)
    assert choice.label == "torch fp32" and "cost more than it saves" in choice.note
    assert not openvino_runtime.is_converted(small_model, tmp_path)
    # 10 MP save 5 s: converted.
    _, choice = build_predictor(small_model, "cpu", "fp32", "auto", run_pixels=1e7, **settings)
    assert choice.label == "openvino fp32"
    assert openvino_runtime.is_converted(small_model, tmp_path)
    # Once converted, even the small run takes OpenVINO.
    _, choice = build_predictor(small_model, "cpu", "fp32", "auto", run_pixels=3e6, **settings)
    assert choice.label == "openvino fp32"
