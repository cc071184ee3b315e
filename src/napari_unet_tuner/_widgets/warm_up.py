"""The heavy imports of a session, done once off the GUI thread, before any worker needs them."""

from __future__ import annotations

import functools
import gc
import logging
import threading
import time
from collections.abc import Callable, Generator
from typing import TYPE_CHECKING, Any

from napari.utils import progress
from qtpy.QtCore import QTimer

from napari_unet_tuner._widgets.torch_libraries import preload_torch_libraries

if TYPE_CHECKING:
    from qtpy.QtWidgets import QWidget

    from napari_unet_tuner.model.checkpoint import Checkpoint

logger = logging.getLogger(__name__)

WARM_UP_DESCRIPTION = "U-Net Tuner: loading torch"
# A full collection runs after this many young ones (Python's default: 10).
_NEVER = 2**31 - 1


def _import_what_the_first_run_needs() -> Checkpoint:
    """Import what the first run would otherwise import while the user waits.

    The first ``torch.optim.Adam`` of a process imports torch._dynamo and
    sympy (1.7 s here), and napari's first Labels layer imports pandas; done
    when the user presses a button, they froze the viewer for 280 ms and
    500 ms (benchmarks/bench_responsiveness.py). That first Labels layer
    also draws its brush overlays with vispy's agg lines, whose first
    instance computes its dash patterns in pure Python (140 ms on a busy
    machine; cached per process): computed here, without any GL. The tuner's
    own module imports torch and the core (2 s): `TunerDock` shows it after.

    Returns the default checkpoint, loaded here too: beside busy cores, its
    torch operations on the GUI thread took 70-360 ms.

    Torch's shared libraries are loaded first with the GIL released
    (`preload_torch_libraries`): loaded by the import, even in this thread,
    they froze the viewer 180-600 ms.
    """
    preload_torch_libraries()
    import pandas  # noqa: F401
    import torch
    from vispy.visuals.line.dash_atlas import DashAtlas

    torch.optim.Adam([torch.nn.Parameter(torch.zeros(1))])
    DashAtlas()
    import napari_unet_tuner._widgets.tuner  # noqa: F401
    from napari_unet_tuner.model.checkpoint import default_checkpoint_path
    from napari_unet_tuner.model.loading import load_checkpoint

    return load_checkpoint(default_checkpoint_path())


class ImportWarmUp:
    """Runs ``imports`` in a daemon thread as soon as it is made; workers wait for it.

    What ``imports`` returns (by default the default checkpoint) becomes
    ``result``.

    Two threads importing torch._dynamo at once can each see the other's
    half-imported modules (once: "partially initialized module
    'torch._dynamo' has no attribute 'decorators'" in every later
    fine-tune), so every worker starts with `wait` (`after`): only this
    thread imports them. A failed warm-up is logged in one line; the
    workers then import what they need themselves, one at a time.

    A daemon thread rather than a napari worker: it reports nothing, and a
    worker still running when the viewer closes dies on deleted Qt signals.

    Full garbage collections are paused while it imports: the imports add
    some 250,000 objects, and each full collection scans every object of
    the process holding the GIL (255 ms here, 375-560 ms on a busy
    machine). Left to Python, one ran in the middle of the imports and
    another soon after, on napari's first Labels layer. Young generations
    are still collected, so short-lived garbage does not pile up. Then
    ``freeze`` runs (`CollectorFreeze.freeze`), before full collections
    resume. ``delay_s``: how long the thread sleeps before it starts
    importing (workers wait for that too).
    """

    def __init__(
        self,
        imports: Callable[[], Any] = _import_what_the_first_run_needs,
        freeze: Callable[[], None] | None = None,
        delay_s: float = 0.0,
    ) -> None:
        self._imports = imports
        self._freeze = freeze
        self._delay_s = delay_s
        self._ended = threading.Event()
        self.error: BaseException | None = None
        self.result: Any = None
        threading.Thread(target=self._run, name="unet-tuner warm-up", daemon=True).start()

    def _run(self) -> None:
        time.sleep(self._delay_s)
        thresholds = gc.get_threshold()
        gc.set_threshold(thresholds[0], thresholds[1], _NEVER)
        try:
            self.result = self._imports()
            if self._freeze is not None:
                self._freeze()
        except Exception as error:  # noqa: BLE001 - any failure: the workers import themselves
            self.error = error
            logger.warning("napari-unet-tuner: warming up imports failed (%s); continuing", error)
        finally:
            gc.set_threshold(*thresholds)
            self._ended.set()

    @property
    def done(self) -> bool:
        """Whether the warm-up has ended (with or without an error)."""
        return self._ended.is_set()

    def wait(self) -> None:
        """Block until the warm-up has ended (call it from a worker, not the GUI thread)."""
        self._ended.wait()

    def after(self, function: Callable[..., Generator]) -> Callable[..., Generator]:
        """Return a generator function that first waits for the warm-up, then runs ``function``."""

        @functools.wraps(function)
        def run(*args: Any, **kwargs: Any) -> Generator:
            self.wait()
            return (yield from function(*args, **kwargs))

        return run


def show_progress(warm_up: ImportWarmUp, owner: QWidget) -> None:
    """Show a napari progress bar until ``warm_up`` ends (or ``owner`` is deleted).

    The user sees why a first run waits. The session's first progress bar
    also costs napari 60-100 ms on the GUI thread (its activity indicator
    appears): paid here, while the widget docks, not on the first Segment.
    """
    bar = progress(total=0, desc=WARM_UP_DESCRIPTION)
    timer = QTimer(owner)
    timer.setInterval(100)

    def close_when_done() -> None:
        if warm_up.done:
            timer.stop()
            bar.close()

    timer.timeout.connect(close_when_done)
    timer.start()
    owner.destroyed.connect(lambda *_: bar.close())
