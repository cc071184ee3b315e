"""Choosing the model's runtime by measuring it: a short probe, remembered per machine.

Which runtime is fastest depends on the CPU: OpenVINO runs the bundled model
1.6x as fast as torch in float32 on an AVX2 CPU, the same as torch on a Xeon
with AMX tiles in bfloat16. So ``runtime="auto"`` times each candidate
(runtime and precision) on a batch of the run's tile shape and keeps the
fastest. The choice is remembered in ``runtime_choices.json`` in the cache
folder, keyed by this machine (CPU, its features, thread count, library
versions), the architecture (not the weights: a fine-tuned model runs at
the same speed), the tile shape, the batch size and the precision asked for.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import platform
import time
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path

import numpy as np
import torch

from napari_unet_tuner.config import ModelConfig
from napari_unet_tuner.inference.device import cpu_computes_bf16
from napari_unet_tuner.inference.openvino_runtime import openvino_version
from napari_unet_tuner.inference.tiling import Predictor
from napari_unet_tuner.io import cache_dir, write_json_atomic

logger = logging.getLogger(__name__)

CHOICES_FILE = "runtime_choices.json"
PROBE_ROUNDS = 2
"""Timed calls per candidate after one warm-up call; the fastest counts."""
SWITCH_MARGIN = 1.05
"""OpenVINO is chosen only when at least 5 % faster than torch's best: on a tie, torch."""
SMALL_RUN_PIXELS = 2_000_000
"""Runs smaller than this (model input pixels) take torch: about a second of model time,
less than a probe, or than converting a fine-tuned model's new weights."""


@dataclass(frozen=True)
class RuntimeChoice:
    """What runs the model, and why.

    Attributes
    ----------
    runtime : {"torch", "openvino"}
    precision : {"fp32", "bf16", "fp16"}
        ``"fp16"``: torch's float16 autocast on a GPU.
    source : str
        ``"given"`` (asked for), ``"probe"`` (measured now), ``"remembered"``
        (measured before on this machine), ``"small run"`` (torch without a
        probe), ``"only one"`` (``auto`` without OpenVINO installed) or
        ``"fallback"`` (OpenVINO asked for, but missing or failing).
    speeds : dict of str to float
        Megapixels per second of each candidate the probe timed, by `label`.
    probe_seconds : float
        What the probe cost (conversion included), when it ran now.
    conversion_seconds : float
        What converting the model to OpenVINO cost in the probe: a model with
        new weights (a fine-tuned version) pays it again, so `auto` keeps
        torch for a run too small to earn it back.
    note : str
        Why torch took over, for a fallback.
    """

    runtime: str
    precision: str
    source: str = "given"
    speeds: Mapping[str, float] = field(default_factory=dict)
    probe_seconds: float = 0.0
    note: str = ""
    conversion_seconds: float = 0.0

    @property
    def label(self) -> str:
        """``"<runtime> <precision>"``, e.g. ``"openvino bf16"``."""
        return f"{self.runtime} {self.precision}"

    def describe(self) -> str:
        """One line for a log: the runtime, and the measurements it was chosen on."""
        text = f"model runs on {self.label} ({self.source}"
        if self.speeds:
            timed = ", ".join(f"{k} {v:.2f}" for k, v in sorted(self.speeds.items()))
            text += f": {timed} MP/s"
        if self.probe_seconds:
            text += f"; probe {self.probe_seconds:.1f} s"
        text += ")"
        return f"{text}: {self.note}" if self.note else text


def candidate_precisions(precision: str) -> list[str]:
    """Return the precisions worth timing: bfloat16 only where the CPU computes it natively."""
    if precision != "auto":
        return [precision]
    return ["bf16", "fp32"] if cpu_computes_bf16() else ["fp32"]


def machine_fingerprint() -> dict[str, object]:
    """Return what makes one machine's timings differ from another's."""
    capability = getattr(torch.backends.cpu, "get_cpu_capability", lambda: "")()
    return {
        "cpu": _cpu_name(),
        "machine": platform.machine(),
        "system": platform.system(),
        "cpu_capability": capability,
        "native_bf16": cpu_computes_bf16(),
        "cores": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "torch": torch.__version__,
        "openvino": openvino_version(),
    }


def _cpu_name() -> str:
    """Return the CPU's model name (``/proc/cpuinfo`` on Linux, where `platform` gives none)."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor()


def choice_key(
    model_config: ModelConfig, tile_shape: tuple[int, ...], batch_size: int, precision: str
) -> str:
    """Return the key a choice is remembered under (see the module's docstring)."""
    facts = {
        "machine": machine_fingerprint(),
        "model": model_config.to_dict(),
        "tile_shape": list(tile_shape),
        "batch_size": batch_size,
        "precision": precision,
    }
    return hashlib.sha256(json.dumps(facts, sort_keys=True).encode()).hexdigest()[:24]


def remembered_choice(key: str, folder: Path | None = None) -> RuntimeChoice | None:
    """Return the choice remembered under ``key``, or ``None`` (also for a damaged file)."""
    entry = _read_choices(folder).get(key)
    try:
        choice = RuntimeChoice(**entry) if isinstance(entry, dict) else None
    except TypeError:
        return None
    if choice is None or choice.runtime not in ("torch", "openvino"):
        return None
    return replace(choice, source="remembered", probe_seconds=0.0, note="")


def remember_choice(key: str, choice: RuntimeChoice, folder: Path | None = None) -> None:
    """Add ``choice`` to the remembered ones (written atomically; failures only logged)."""
    path = Path(folder or cache_dir()) / CHOICES_FILE
    choices = _read_choices(folder)
    choices[key] = {k: v for k, v in asdict(choice).items() if k != "source"}
    try:
        write_json_atomic(path, choices)
    except OSError as exc:
        logger.warning("could not remember the runtime choice in %s: %s", path, exc)


def _read_choices(folder: Path | None) -> dict:
    path = Path(folder or cache_dir()) / CHOICES_FILE
    try:
        choices = json.loads(path.read_text())
    except (OSError, ValueError):
        return {}
    return choices if isinstance(choices, dict) else {}


def time_predictors(
    predictors: Mapping[str, Predictor], batch: np.ndarray, rounds: int = PROBE_ROUNDS
) -> dict[str, float]:
    """Megapixels per second of each predictor on ``batch``, best of ``rounds``.

    One warm-up call each first (OpenVINO and oneDNN pick kernels on it),
    then the candidates take turns, so a burst of load elsewhere on the
    machine slows them alike.
    """
    for predictor in predictors.values():
        predictor(batch)
    best = dict.fromkeys(predictors, float("inf"))
    for _ in range(rounds):
        for name, predictor in predictors.items():
            start = time.perf_counter()
            predictor(batch)
            best[name] = min(best[name], time.perf_counter() - start)
    megapixels = batch.shape[0] * int(np.prod(batch.shape[2:])) / 1e6
    return {name: megapixels / max(seconds, 1e-9) for name, seconds in best.items()}


def conversion_pays(choice: RuntimeChoice, run_pixels: float) -> bool:
    """Whether converting new weights for ``choice`` saves more than it costs on this run.

    The saving is estimated from the probe's speeds over ``run_pixels``
    (tile overlaps make the model see more: the estimate is on the safe side).
    """
    torch_speeds = [v for k, v in choice.speeds.items() if k.startswith("torch")]
    own = choice.speeds.get(choice.label)
    if not torch_speeds or not own:
        return True
    saving = run_pixels / 1e6 * (1 / max(torch_speeds) - 1 / own)
    return saving > choice.conversion_seconds


def fastest(speeds: Mapping[str, float]) -> str:
    """Return the label to run: the fastest, unless torch's best is within `SWITCH_MARGIN`."""
    best = max(speeds, key=speeds.get)
    torch_best = max((k for k in speeds if k.startswith("torch")), key=speeds.get, default=None)
    if torch_best is not None and speeds[best] < SWITCH_MARGIN * speeds[torch_best]:
        return torch_best
    return best
