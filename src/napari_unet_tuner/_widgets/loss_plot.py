"""A small live plot of training loss and validation AP@0.5."""

from __future__ import annotations

import time

from matplotlib.backends.backend_qtagg import FigureCanvasQTAgg
from matplotlib.figure import Figure

_MIN_REDRAW_SECONDS = 0.5


class LossPlot(FigureCanvasQTAgg):
    """Training loss per step (left axis) and validation AP@0.5 (right axis)."""

    def __init__(self) -> None:
        figure = Figure(figsize=(3.2, 1.8), dpi=90, layout="constrained")
        super().__init__(figure)
        self.setMinimumHeight(150)
        self._loss_axes = figure.add_subplot()
        self._ap_axes = self._loss_axes.twinx()
        self._last_draw = 0.0
        self.reset()

    def reset(self) -> None:
        """Clear the curves for a new run."""
        self.steps, self.losses, self.val_steps, self.val_ap = [], [], [], []
        for axes in (self._loss_axes, self._ap_axes):
            axes.clear()
        self._loss_axes.set_xlabel("step", fontsize=7)
        self._loss_axes.set_ylabel("loss", fontsize=7, color="tab:blue")
        self._ap_axes.set_ylabel("val AP@0.5", fontsize=7, color="tab:orange")
        self._ap_axes.set_ylim(0, 1)
        for axes in (self._loss_axes, self._ap_axes):
            axes.tick_params(labelsize=6)
        (self._loss_line,) = self._loss_axes.plot([], [], color="tab:blue", lw=1)
        (self._ap_line,) = self._ap_axes.plot([], [], "o-", color="tab:orange", ms=3, lw=1)
        self.draw_idle()

    def add_step(self, step: int, loss: float) -> None:
        """Append a training loss."""
        self.steps.append(step)
        self.losses.append(loss)
        self._redraw()

    def add_validation(self, step: int, ap50: float) -> None:
        """Append a validation score (drawn at once)."""
        self.val_steps.append(step)
        self.val_ap.append(ap50)
        self._redraw(force=True)

    def _redraw(self, force: bool = False) -> None:
        # Drawing every step would cost the event loop more than training gains from it.
        now = time.monotonic()
        if not force and now - self._last_draw < _MIN_REDRAW_SECONDS:
            return
        self._last_draw = now
        self._loss_line.set_data(self.steps, self.losses)
        self._ap_line.set_data(self.val_steps, self.val_ap)
        self._loss_axes.relim()
        self._loss_axes.autoscale_view()
        self._ap_axes.set_xlim(self._loss_axes.get_xlim())
        self.draw_idle()
