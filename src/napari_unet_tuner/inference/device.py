"""Choosing the torch device, mixed precision and CPU threads."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import torch

from napari_unet_tuner.errors import ConfigError


def select_device(device: str | torch.device = "auto") -> torch.device:
    """Return the device to run on.

    Parameters
    ----------
    device : str or torch.device
        ``"auto"`` picks CUDA, then Apple MPS, then the CPU; anything else is
        passed to `torch.device` and checked to be available.

    Raises
    ------
    ValueError
        If the requested device does not exist on this machine.
    """
    if isinstance(device, str) and device == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda")
        if torch.backends.mps.is_available():
            return torch.device("mps")
        return torch.device("cpu")
    try:
        chosen = torch.device(device)
    except RuntimeError as exc:
        raise ConfigError(
            f"unknown device {device!r}: use 'auto', 'cpu', 'cuda' or 'mps'"
        ) from exc
    if chosen.type == "cuda" and not torch.cuda.is_available():
        raise ConfigError("device 'cuda' requested but no CUDA GPU is available; use 'cpu'")
    if chosen.type == "mps" and not torch.backends.mps.is_available():
        raise ConfigError("device 'mps' requested but Apple MPS is not available; use 'cpu'")
    return chosen


def available_devices() -> list[str]:
    """Return the device names usable here, best first (for a device selector)."""
    names = []
    if torch.cuda.is_available():
        names += [f"cuda:{i}" for i in range(torch.cuda.device_count())]
    if torch.backends.mps.is_available():
        names.append("mps")
    return [*names, "cpu"]


def inference_dtype(device: torch.device, precision: str = "auto") -> torch.dtype | None:
    """Return the number format a model runs in for inference (``None``: float32).

    ``"auto"``: float16 on CUDA and MPS, bfloat16 on CPUs that compute it
    natively (`cpu_computes_bf16`), float32 elsewhere: there bfloat16 is
    emulated and slower than float32. ``"bf16"`` and ``"fp32"`` force one.
    """
    if precision == "fp32":
        return None
    if precision == "bf16":
        return torch.bfloat16
    if device.type in ("cuda", "mps"):
        return torch.float16
    return torch.bfloat16 if cpu_computes_bf16() else None


def cpu_computes_bf16() -> bool:
    """Whether this CPU computes bfloat16 natively (AVX512-BF16 or AMX tiles).

    There, bfloat16 autocast roughly halves a training step; elsewhere
    bfloat16 is emulated and slower than float32.
    """
    checks = ("_is_avx512_bf16_supported", "_is_amx_tile_supported")
    return any(bool(getattr(torch.cpu, name, lambda: False)()) for name in checks)


def training_dtype(device: torch.device, enabled: bool = True) -> torch.dtype:
    """Return the precision training steps compute in: float16 on CUDA, bfloat16 on fit CPUs."""
    if enabled and device.type == "cuda":
        return torch.float16
    if enabled and device.type == "cpu" and cpu_computes_bf16():
        return torch.bfloat16
    return torch.float32


def training_autocast(
    device: torch.device, enabled: bool = True
) -> contextlib.AbstractContextManager:
    """Mixed precision for training steps, in `training_dtype`.

    On CUDA the loss must be scaled (`torch.amp.GradScaler`); bfloat16 has
    float32's range and needs no scaling.
    """
    dtype = training_dtype(device, enabled)
    if dtype == torch.float32:
        return contextlib.nullcontext()
    return torch.autocast(device_type=device.type, dtype=dtype)


@contextlib.contextmanager
def cpu_threads(num_threads: int | None) -> Iterator[None]:
    """Set torch's intra-op CPU threads for the duration of a run, then restore them."""
    if num_threads is None:
        yield
        return
    previous = torch.get_num_threads()
    torch.set_num_threads(max(1, int(num_threads)))
    try:
        yield
    finally:
        torch.set_num_threads(previous)
