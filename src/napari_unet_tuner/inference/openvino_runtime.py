"""OpenVINO as the model's runtime on the CPU: converted once per weights, cached on disk.

On CPUs where torch is slow (AVX2 without native bfloat16, and some with
AVX512-BF16), OpenVINO runs the same network 1.5-2x as fast with outputs
equal to torch's within 1e-6 in float32 (BENCHMARKS.md). Converting takes
about a second, so the converted network is kept in the cache folder
(`napari_unet_tuner.io.cache_dir`), named by a digest of the weights: a
fine-tuned model gets its own entry and can never run stale weights. The
entry is an OpenVINO IR (XML and binary weights, no code) and carries the
digest inside; an entry that cannot be read, or whose digest differs, is
converted again.
"""

from __future__ import annotations

import importlib.util
import logging
import os
import tempfile
import threading
import time
import warnings
from pathlib import Path
from typing import Any

import numpy as np
import torch

from napari_unet_tuner.inference.tiling import Predictor
from napari_unet_tuner.io import cache_dir
from napari_unet_tuner.model.checkpoint import state_dict_sha256
from napari_unet_tuner.model.unet import UNet, inference_copy

logger = logging.getLogger(__name__)

OPENVINO_PRECISION_HINTS = {"fp32": "f32", "bf16": "bf16"}
"""Our precision names and OpenVINO's ``INFERENCE_PRECISION_HINT`` for them."""
DIGEST_KEY = "unet_tuner_weights_sha256"
"""Where a converted network carries the digest of the weights it was made from."""
KEEP_ENTRIES = 20
"""Converted networks kept in the cache; older ones go (fine-tuning makes many)."""


def openvino_available() -> bool:
    """Whether OpenVINO is installed (``pip install napari-unet-tuner[openvino]``)."""
    return importlib.util.find_spec("openvino") is not None


def openvino_version() -> str | None:
    """Return the installed OpenVINO's version, or ``None``."""
    if not openvino_available():
        return None
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("openvino")
    except PackageNotFoundError:
        return None


def weights_digest(model: UNet) -> str:
    """SHA-256 of a model's architecture and weights (`state_dict_sha256`)."""
    return state_dict_sha256(model.state_dict(), model.config)


def is_converted(model: UNet, folder: Path | None = None) -> bool:
    """Whether the cache holds a converted network for ``model``'s weights."""
    return _entry(model, weights_digest(model), folder).is_file()


def _entry(model: UNet, digest: str, folder: Path | None) -> Path:
    """Return the cache entry (XML) for weights of this digest."""
    folder = Path(folder or cache_dir()) / "openvino"
    return folder / f"{digest[:32]}-{model.config.spatial_dims}d.xml"


class _Probabilities(torch.nn.Module):
    """The inference copy as one module whose forward returns probabilities."""

    def __init__(self, model: UNet) -> None:
        super().__init__()
        self.model = model

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.model.predict_proba(x)


def converted_network(model: UNet, folder: Path | None = None) -> tuple[Any, float]:
    """Return ``model`` as an OpenVINO network, from the cache or converted now.

    The network takes float32 ``(N, in_channels, *spatial)`` of any batch
    and any spatial size that is a multiple of ``model.config.size_multiple``
    and returns probabilities like `UNet.predict_proba`. Also returns the
    seconds spent converting (0 for a cache hit).

    Parameters
    ----------
    model : UNet
        Any device; converted from a float32 CPU copy, never changed.
    folder : Path, optional
        The cache folder; `napari_unet_tuner.io.cache_dir` by default.
    """
    import openvino as ov

    digest = weights_digest(model)
    xml = _entry(model, digest, folder)
    folder = xml.parent
    core = ov.Core()
    if xml.is_file():
        try:
            network = core.read_model(str(xml))
            if network.get_rt_info([DIGEST_KEY]).astype(str) == digest:
                os.utime(xml)
                return network, 0.0
            logger.warning("cached OpenVINO network %s is for other weights: converting", xml)
        except Exception as exc:  # a truncated or foreign file
            logger.warning("cached OpenVINO network %s unreadable (%s): converting", xml, exc)
    start = time.perf_counter()
    network = _convert(model)
    seconds = time.perf_counter() - start
    network.set_rt_info(digest, [DIGEST_KEY])
    try:
        _save_atomic(network, xml)
        _prune(folder)
    except OSError as exc:  # a read-only cache costs a conversion per run, nothing more
        logger.warning("could not cache the OpenVINO network in %s: %s", folder, exc)
    return network, seconds


def _convert(model: UNet) -> Any:
    """Trace the inference copy (batch norm folded) into an OpenVINO network."""
    import openvino as ov

    cfg = model.config
    fast = inference_copy(_cpu_float_copy(model))
    side = cfg.size_multiple * 2
    example = torch.zeros((1, cfg.in_channels, *([side] * cfg.spatial_dims)))
    shape = ov.PartialShape([-1, cfg.in_channels, *([-1] * cfg.spatial_dims)])
    # The tracer warns at the forward's shape checks and padding: they hold for
    # any input the predictor passes (padded to the multiple beforehand).
    with torch.no_grad(), warnings.catch_warnings():
        warnings.simplefilter("ignore", torch.jit.TracerWarning)
        return ov.convert_model(_Probabilities(fast).eval(), example_input=example, input=[shape])


def _cpu_float_copy(model: UNet) -> UNet:
    """``model`` itself when it is float32 on the CPU, else such a copy."""
    parameter = next(model.parameters())
    if parameter.device.type == "cpu" and parameter.dtype == torch.float32:
        return model
    import copy

    return copy.deepcopy(model).to("cpu", torch.float32)


def _save_atomic(network: Any, xml: Path) -> None:
    """Write the network's XML and weights beside ``xml``, renamed into place (XML last)."""
    import openvino as ov

    xml.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=xml.parent) as tmp:
        staged = Path(tmp) / xml.name
        ov.save_model(network, str(staged), compress_to_fp16=False)
        os.replace(staged.with_suffix(".bin"), xml.with_suffix(".bin"))
        os.replace(staged, xml)


def _prune(folder: Path) -> None:
    """Keep the `KEEP_ENTRIES` networks used last."""
    entries = sorted(folder.glob("*.xml"), key=lambda p: p.stat().st_mtime, reverse=True)
    for old in entries[KEEP_ENTRIES:]:
        old.with_suffix(".bin").unlink(missing_ok=True)
        old.unlink(missing_ok=True)


def openvino_predictor(
    model: UNet,
    precision: str = "fp32",
    folder: Path | None = None,
    network: Any = None,
    num_threads: int | None = None,
) -> Predictor:
    """Return a `Predictor` that runs ``model`` with OpenVINO on the CPU.

    Parameters
    ----------
    model : UNet
        The model; its weights are taken now (a model trained further needs
        a new predictor).
    precision : {"fp32", "bf16"}
        OpenVINO's inference precision. bfloat16 is for CPUs that compute it
        natively (`napari_unet_tuner.inference.device.cpu_computes_bf16`).
    folder : Path, optional
        The cache folder (`converted_network`).
    network : openvino.Model, optional
        ``model`` already converted (the probe converts once for all precisions).
    num_threads : int, optional
        CPU threads; OpenVINO's choice (the physical cores) by default.

    Raises
    ------
    ImportError
        If OpenVINO is not installed.
    """
    import openvino as ov

    if network is None:
        network, _ = converted_network(model, folder)
    settings = {
        "INFERENCE_PRECISION_HINT": OPENVINO_PRECISION_HINTS[precision],
        "PERFORMANCE_HINT": "LATENCY",
    }
    if num_threads is not None:
        settings["INFERENCE_NUM_THREADS"] = max(1, int(num_threads))
    compiled = ov.Core().compile_model(network, "CPU", settings)
    multiple = model.config.size_multiple
    # An infer request is not safe to share between threads: one per thread.
    requests = threading.local()

    def predictor(batch: np.ndarray) -> np.ndarray:
        request = getattr(requests, "request", None)
        if request is None:
            request = requests.request = compiled.create_infer_request()
        spatial = batch.shape[2:]
        padded = _pad_to_multiple(np.ascontiguousarray(batch, np.float32), multiple)
        outputs = request.infer([padded])[compiled.output(0)]
        return np.array(outputs[(..., *(slice(0, s) for s in spatial))], np.float32)

    return predictor


def _pad_to_multiple(batch: np.ndarray, multiple: int) -> np.ndarray:
    """Pad trailing spatial axes at their end as `UNet.forward` does (reflect, else edge)."""
    spatial = batch.shape[2:]
    extra = [(-s) % multiple for s in spatial]
    if not any(extra):
        return batch
    mode = "reflect" if all(e < s for e, s in zip(extra, spatial, strict=True)) else "edge"
    return np.pad(batch, [(0, 0), (0, 0), *((0, e) for e in extra)], mode=mode)
