"""Predictors: a model wrapped as numpy in, probabilities out, on torch or OpenVINO."""

from __future__ import annotations

import contextlib
import logging
import time
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path

import numpy as np
import torch

from napari_unet_tuner.config import Precision, Runtime
from napari_unet_tuner.inference.device import inference_dtype
from napari_unet_tuner.inference.openvino_runtime import (
    converted_network,
    is_converted,
    openvino_available,
    openvino_predictor,
)
from napari_unet_tuner.inference.runtime_probe import (
    SMALL_RUN_PIXELS,
    RuntimeChoice,
    candidate_precisions,
    choice_key,
    conversion_pays,
    fastest,
    remember_choice,
    remembered_choice,
    time_predictors,
)
from napari_unet_tuner.inference.tiling import Predictor
from napari_unet_tuner.model.unet import UNet, inference_copy, memory_format

logger = logging.getLogger(__name__)

DEFAULT_CONVERSION_SECONDS = 1.0
"""Conversion cost assumed when the probe found the network already converted."""
MISSING_OPENVINO = "OpenVINO is not installed (pip install 'napari-unet-tuner[openvino]')"


def make_predictor(
    model: UNet,
    device: torch.device | str = "cpu",
    precision: Precision = "auto",
    runtime: Runtime = "torch",
) -> Predictor:
    """Wrap a model as a numpy-in, numpy-out `Predictor` of probabilities.

    ``runtime="torch"`` (the default here: training and its validation run
    on torch, as the weights change every step) runs the model's
    `inference_copy` (batch norm folded, channels-last layout): the same
    outputs, faster. The copy is taken now, so a model trained further
    needs a new predictor. ``precision`` as in `InferenceConfig.precision`:
    on the CPU the copy's weights are cast to bfloat16 once; on CUDA and
    MPS the copy runs under autocast. Other runtimes: `build_predictor`.
    """
    return build_predictor(model, device, precision, runtime)[0]


def build_predictor(
    model: UNet,
    device: torch.device | str = "cpu",
    precision: Precision = "auto",
    runtime: Runtime = "auto",
    *,
    tile_shape: tuple[int, ...] | None = None,
    batch_size: int = 1,
    run_pixels: float | None = None,
    num_threads: int | None = None,
    cache: Path | None = None,
) -> tuple[Predictor, RuntimeChoice]:
    """Return a `Predictor` for ``model`` and the `RuntimeChoice` it runs on.

    Parameters
    ----------
    model : UNet
        The model; its weights are taken now.
    device : torch.device or str
        OpenVINO is for the CPU; other devices run torch.
    precision : {"auto", "bf16", "fp32"}
        As in `InferenceConfig.precision`.
    runtime : {"auto", "torch", "openvino"}
        As in `InferenceConfig.runtime`.
    tile_shape : tuple of int, optional
        The tiles the run feeds the model, for the probe (``runtime="auto"``).
    batch_size : int
        Tiles per call, for the probe.
    run_pixels : float, optional
        About how many pixels the run will feed the model: below
        `SMALL_RUN_PIXELS`, ``"auto"`` takes torch (a converted network for
        new weights would cost more than it saves, as after each fine-tune).
    num_threads : int, optional
        CPU threads for OpenVINO (`InferenceConfig.num_threads`; torch's are
        set around the run by `napari_unet_tuner.inference.device.cpu_threads`).
    cache : Path, optional
        The cache folder (`napari_unet_tuner.io.cache_dir` by default).
    """
    device = torch.device(device)
    if device.type != "cpu" or runtime == "torch":
        return torch_predictor(model, device, precision), _torch_choice(device, precision, "given")
    if not openvino_available():
        if runtime == "openvino":
            logger.warning("%s: running torch", MISSING_OPENVINO)
        source = "fallback" if runtime == "openvino" else "only one"
        return torch_predictor(model, device, precision), _torch_choice(
            device, precision, source, MISSING_OPENVINO
        )
    if runtime == "openvino":
        chosen = candidate_precisions(precision)[0]
        predictor, failure = _openvino_or_torch(model, chosen, precision, num_threads, cache)
        if failure:
            return predictor, _torch_choice(device, precision, "fallback", failure)
        return predictor, RuntimeChoice("openvino", chosen)
    return _probed_predictor(
        model, precision, tile_shape, batch_size, run_pixels, num_threads, cache
    )


def _probed_predictor(
    model: UNet,
    precision: str,
    tile_shape: tuple[int, ...] | None,
    batch_size: int,
    run_pixels: float | None,
    num_threads: int | None,
    cache: Path | None,
) -> tuple[Predictor, RuntimeChoice]:
    """``runtime="auto"`` on the CPU: the remembered choice, else a probe (or torch)."""
    cfg = model.config
    tile_shape = tuple(tile_shape or (256,) * cfg.spatial_dims)
    if run_pixels is not None and run_pixels < SMALL_RUN_PIXELS:
        return torch_predictor(model, "cpu", precision), _torch_choice(
            torch.device("cpu"), precision, "small run"
        )
    key = choice_key(cfg, tile_shape, batch_size, precision)
    choice = remembered_choice(key, cache)
    if (
        choice is not None
        and choice.runtime == "openvino"
        and run_pixels is not None
        and not conversion_pays(choice, run_pixels)
        and not is_converted(model, cache)
    ):
        torch_label = fastest({k: v for k, v in choice.speeds.items() if k.startswith("torch")})
        choice = replace(
            choice,
            runtime="torch",
            precision=torch_label.split()[1],
            note="converting these new weights would cost more than it saves on this image",
        )
    if choice is not None and choice.runtime == "torch":
        return torch_predictor(model, "cpu", choice.precision), choice
    if choice is not None:
        predictor, _ = _openvino_or_torch(
            model, choice.precision, choice.precision, num_threads, cache
        )
        return predictor, choice
    start = time.perf_counter()
    candidates: dict[str, Predictor] = {}
    for each in candidate_precisions(precision):
        candidates[f"torch {each}"] = torch_predictor(model, "cpu", each)
    note = ""
    conversion = 0.0
    try:
        network, conversion = converted_network(model, cache)
        # A cache hit says nothing of the cost: about a second for the bundled model.
        conversion = conversion or DEFAULT_CONVERSION_SECONDS
        for each in candidate_precisions(precision):
            candidates[f"openvino {each}"] = openvino_predictor(
                model, each, network=network, num_threads=num_threads
            )
    except Exception as exc:  # OpenVINO failing leaves torch's candidates
        logger.warning("OpenVINO could not load the model (%s): timing torch alone", exc)
        note = f"OpenVINO failed: {exc}"
    batch = np.random.default_rng(0).standard_normal(
        (batch_size, cfg.in_channels, *tile_shape), dtype=np.float32
    )
    speeds = time_predictors(candidates, batch)
    runtime, chosen = fastest(speeds).split()
    choice = RuntimeChoice(
        runtime, chosen, "probe", speeds, time.perf_counter() - start, note, conversion
    )
    if not note:
        remember_choice(key, choice, cache)
    predictor = candidates[choice.label]
    if runtime == "openvino":
        predictor = _falling_back(predictor, lambda: torch_predictor(model, "cpu", precision))
    return predictor, choice


def _openvino_or_torch(
    model: UNet,
    precision: str,
    torch_precision: str,
    num_threads: int | None,
    cache: Path | None,
) -> tuple[Predictor, str]:
    """OpenVINO at ``precision``, torch taking over if it fails now or later; why it failed."""
    try:
        predictor = openvino_predictor(model, precision, cache, num_threads=num_threads)
    except Exception as exc:  # any failure of a third-party converter: torch runs
        logger.warning("OpenVINO could not load the model (%s): running torch", exc)
        return torch_predictor(model, "cpu", torch_precision), f"OpenVINO failed: {exc}"
    return _falling_back(predictor, lambda: torch_predictor(model, "cpu", torch_precision)), ""


def _falling_back(primary: Predictor, make_fallback: Callable[[], Predictor]) -> Predictor:
    """``primary``, replaced by ``make_fallback()`` for good once it raises."""
    fallback: list[Predictor] = []

    def predictor(batch: np.ndarray) -> np.ndarray:
        if not fallback:
            try:
                return primary(batch)
            except Exception as exc:  # a runtime failing mid-run: torch finishes it
                logger.warning("OpenVINO failed on a tile (%s): torch runs the rest", exc)
                fallback.append(make_fallback())
        return fallback[0](batch)

    return predictor


def _torch_choice(
    device: torch.device, precision: str, source: str, note: str = ""
) -> RuntimeChoice:
    """Return the `RuntimeChoice` describing `torch_predictor` at ``precision`` on ``device``."""
    dtype = inference_dtype(device, precision)
    names = {torch.bfloat16: "bf16", torch.float16: "fp16", None: "fp32"}
    return RuntimeChoice("torch", names.get(dtype, "fp32"), source, note=note)


def torch_predictor(
    model: UNet, device: torch.device | str = "cpu", precision: Precision = "auto"
) -> Predictor:
    """Return the torch `Predictor` of `make_predictor`."""
    device = torch.device(device)
    model = model.to(device).eval()
    fast = inference_copy(model)
    layout = memory_format(model.config.spatial_dims)
    dtype = inference_dtype(device, precision)
    # On the CPU the weights are cast once (autocast would cast them at every
    # call); on CUDA and MPS autocast keeps float32 where it matters.
    cast_once = dtype is not None and device.type == "cpu"
    if cast_once:
        fast = fast.to(dtype)
    input_dtype = dtype if cast_once else torch.float32

    def predictor(batch: np.ndarray) -> np.ndarray:
        autocast = (
            torch.autocast(device.type, dtype=dtype)
            if dtype is not None and not cast_once
            else contextlib.nullcontext()
        )
        with torch.inference_mode(), autocast:
            x = torch.from_numpy(batch).to(device, dtype=input_dtype, non_blocking=True)
            probabilities = fast.predict_proba(x.contiguous(memory_format=layout))
            return probabilities.float().contiguous().cpu().numpy()

    return predictor
