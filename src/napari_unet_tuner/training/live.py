"""Learning while the user corrects: fine-tuning on annotations that change between steps.

`LiveTrainer` is `iter_fine_tune`'s engine with a growing annotation, not a
second trainer. Each version of the annotations is prepared as a run is
(`prepare_run`: corrections found against the *starting* checkpoint's
prediction, validation planned); the model being trained and its
optimizer's state carry over from one version to the next, and `BestModel`
decides, on the current version, whether the model is better than the
starting one. Each time it is, the model is offered as a new version: an
``"offer"`` record whose ``snapshot`` is the checkpoint, with the card a
fine-tuning run would write. Nothing is saved.

A notebook does what the widget does::

    trainer = LiveTrainer(checkpoint)
    trainer.update([AnnotatedImage(image, annotation, prediction=labels)])
    for record in trainer.run():  # in a thread; update() and stop() from another
        ...
"""

from __future__ import annotations

import math
import threading
import time
from collections.abc import Generator, Sequence
from dataclasses import dataclass, replace
from typing import Any

import numpy as np

from napari_unet_tuner.config import TrainingConfig
from napari_unet_tuner.errors import InputError
from napari_unet_tuner.inference.device import cpu_threads
from napari_unet_tuner.model.checkpoint import Checkpoint
from napari_unet_tuner.training.best_model import BestModel
from napari_unet_tuner.training.data import AnnotatedImage
from napari_unet_tuner.training.preparation import PreparedRun, RunClock, prepare_run
from napari_unet_tuner.training.records import TrainingProgress
from napari_unet_tuner.training.trainer import (
    child_checkpoint,
    start_tracker,
    train_epoch,
    validate_and_consider,
)
from napari_unet_tuner.training.verdict import judge

# How often a trainer with nothing to learn yet looks for annotations.
_IDLE_WAIT = 0.2


@dataclass
class _Version:
    """One version of the annotations being learned: its run and what is best on it."""

    run: PreparedRun
    tracker: BestModel


class LiveTrainer:
    """Fine-tune a checkpoint continuously while its annotations change.

    Parameters
    ----------
    checkpoint : Checkpoint
        The starting model: corrections are read against its prediction,
        and a version is offered only when it beats this model.
    config : TrainingConfig, optional
        As for `iter_fine_tune`, except that there is no time budget (the
        trainer runs until `stop`) and the step size stays at
        ``learning_rate``.
    name : str, optional
        Name for the offered checkpoints' cards.

    Attributes
    ----------
    best : Checkpoint or None
        The last model offered (the best on the annotations of its time).
    problem : str or None
        Why the last annotations given could not be learned (the previous
        ones still are), or ``None``.
    version : int
        Which of the annotations given (1 = the first `update`) is being
        learned; 0 before any could be.
    """

    def __init__(
        self,
        checkpoint: Checkpoint,
        config: TrainingConfig | None = None,
        *,
        name: str | None = None,
    ) -> None:
        self.checkpoint = checkpoint
        self.config = replace(config or TrainingConfig(), final_learning_rate=None)
        self.name = name
        self.best: Checkpoint | None = None
        self.problem: str | None = None
        self.version = 0
        self._lock = threading.Lock()
        self._pending: tuple[list, Sequence[str | None] | None] | None = None
        self._versions_given = 0
        # Set by update() and stop(): the current epoch ends at the next step.
        self._interrupt = threading.Event()
        self._stopped = threading.Event()

    def update(
        self,
        pairs: Sequence[AnnotatedImage | tuple[Any, np.ndarray]],
        axes: Sequence[str | None] | None = None,
    ) -> None:
        """Give the whole current annotations; training takes them before its next step.

        Safe to call from any thread. Only the latest call counts: versions
        given while one is being prepared replace each other.
        """
        with self._lock:
            self._pending = (list(pairs), axes)
            self._versions_given += 1
        self._interrupt.set()

    def stop(self) -> None:
        """End `run` at the next step; `best` keeps the last model offered."""
        self._stopped.set()
        self._interrupt.set()

    def run(
        self, preview_every: float | None = None
    ) -> Generator[TrainingProgress, None, Checkpoint | None]:
        """Train until `stop`, yielding step, validation, preview and offer records.

        ``preview_every``: also yield a ``"preview"`` record with a weight
        snapshot this often (seconds), for a live view of the model. Returns
        `best`.
        """
        clock = RunClock(time.perf_counter(), math.inf)
        version: _Version | None = None
        with cpu_threads(self.config.num_threads):
            while not self._stopped.is_set():
                pending = self._take()
                if pending is not None:
                    fresh = self._prepare(version, *pending)
                    if fresh is not None:
                        version = fresh
                        yield from self._judged(version, clock, None)
                if version is None:
                    self._interrupt.wait(_IDLE_WAIT)
                    continue
                run = version.run
                loss = yield from train_epoch(
                    run, self.config, clock, version.tracker, self._interrupt, preview_every
                )
                if self._interrupt.is_set():
                    # New annotations (or stop): validating on the old ones is wasted.
                    continue
                run.epoch += 1
                yield from self._judged(version, clock, loss)
        return self.best

    def _take(self) -> tuple[list, Sequence[str | None] | None, int] | None:
        """Return the annotations given since the last call, if any."""
        with self._lock:
            pending, self._pending = self._pending, None
            if not self._stopped.is_set():
                self._interrupt.clear()
            return None if pending is None else (*pending, self._versions_given)

    def _prepare(
        self, previous: _Version | None, pairs: list, axes, number: int
    ) -> _Version | None:
        """Prepare a version of the annotations and carry the model being trained over."""
        try:
            run = prepare_run(pairs, self.checkpoint, self.config, None, axes)
        except InputError as error:
            self.problem = str(error)
            return None
        self.problem = None
        self.version = number
        # The model is the starting checkpoint here: its validation is "before".
        tracker = start_tracker(run)
        if previous is not None:
            old = previous.run
            run.model.load_state_dict(old.model.state_dict())
            run.optimizing.optimizer.load_state_dict(old.optimizing.optimizer.state_dict())
            run.step, run.epoch, run.history = old.step, old.epoch, old.history
        return _Version(run, tracker)

    def _judged(
        self, version: _Version, clock: RunClock, loss: float | None
    ) -> Generator[TrainingProgress, None, None]:
        """Validate the model being trained; offer it when it is the new best and learned."""
        run, tracker = version.run, version.tracker
        if run.step == 0:
            # Nothing trained yet: the model is the starting one, validated as "before".
            yield run.progress("validation", clock, tracker, loss, tracker.before)
            return
        best_before = tracker.best
        result = validate_and_consider(run, clock, tracker)
        yield run.progress("validation", clock, tracker, loss, result)
        if tracker.best is best_before:
            return
        verdict = judge(
            tracker.before, tracker.best, tracker.step, None, clock.elapsed(), run.step
        )
        if not verdict.learned:
            return
        details = {
            "seconds": round(clock.elapsed(), 1),
            "steps": run.step,
            "epochs": run.epoch,
            "stop_reason": "live",
            "annotation_version": self.version,
        }
        self.best = child_checkpoint(
            run, tracker.state, tracker.before, tracker.best, details, self.name, learned=True
        )
        record = run.progress("offer", clock, tracker, loss, tracker.best)
        yield replace(record, snapshot=self.best)
