"""Load torch's shared libraries without holding Python's GIL, before ``import torch``."""

from __future__ import annotations

import ctypes
import importlib.util
import logging
import os
import sys
from pathlib import Path

logger = logging.getLogger(__name__)

# In dependency order, with the flags torch itself loads them with: the global
# deps (libgomp) RTLD_GLOBAL, the rest as its extension module pulls them in.
_LIBRARIES = (
    ("libtorch_global_deps.so", os.RTLD_NOW | os.RTLD_GLOBAL),
    ("libc10.so", os.RTLD_NOW),
    ("libtorch_cpu.so", os.RTLD_NOW),
    ("libtorch.so", os.RTLD_NOW),
    ("libshm.so", os.RTLD_NOW),
    ("libtorch_python.so", os.RTLD_NOW),
)


def preload_torch_libraries() -> bool:
    """Map torch's libraries and run their static initialisers with the GIL released.

    ``import torch`` loads them from inside Python's import machinery, which
    holds the GIL throughout: 0.2-0.6 s in which napari's GUI thread cannot
    run, whichever thread imports. Calling the C library's ``dlopen`` through
    ctypes releases the GIL for the call, so the GUI keeps running; the
    import then finds them already loaded. Linux only; on any failure it
    stops, and ``import torch`` loads what is left as usual.

    Returns
    -------
    bool
        Whether every library was loaded here.
    """
    if sys.platform != "linux" or "torch" in sys.modules:
        return False
    spec = importlib.util.find_spec("torch")  # finds the package without importing it
    if spec is None or spec.origin is None:
        return False
    folder = Path(spec.origin).parent / "lib"
    try:
        dlopen = ctypes.CDLL(None).dlopen
    except (OSError, AttributeError):
        return False
    dlopen.restype = ctypes.c_void_p
    dlopen.argtypes = [ctypes.c_char_p, ctypes.c_int]
    for name, flags in _LIBRARIES:
        path = folder / name
        if not path.is_file() or not dlopen(os.fsencode(path), flags):
            logger.debug("napari-unet-tuner: %s not preloaded; import torch loads it", path)
            return False
    return True
