"""A small live plot of training loss and validation AP@0.5, drawn with QPainter.

Drawn by hand rather than with matplotlib: a matplotlib redraw costs 100-150
ms of the GUI thread on a busy 2-core laptop (measured with
benchmarks/bench_responsiveness.py), more than the 100 ms the viewer may
freeze; two polylines cost about a millisecond.
"""

from __future__ import annotations

import math

from qtpy.QtCore import QPointF, Qt
from qtpy.QtGui import QColor, QPainter, QPen, QPolygonF
from qtpy.QtWidgets import QSizePolicy, QWidget

_LOSS_COLOR = QColor(31, 119, 180)
_AP_COLOR = QColor(255, 127, 14)
_MARGIN = 28


class LossPlot(QWidget):
    """Training loss per step (blue, left scale) and validation AP@0.5 (orange, 0 to 1)."""

    def __init__(self) -> None:
        super().__init__()
        self.setMinimumHeight(200)  # a curve one can read, still within a 720-px screen
        self.setSizePolicy(QSizePolicy.Policy.Expanding, QSizePolicy.Policy.Fixed)
        self.setToolTip(
            "Training loss (blue) and, per validation (orange), the annotation score: the "
            "share of the objects you reviewed that are right, corrected and unchanged alike "
            "(or held-out AP@0.5 when nothing is corrected)."
        )
        self.reset()

    def reset(self) -> None:
        """Clear the curves for a new run."""
        self.steps: list[int] = []
        self.losses: list[float] = []
        self.val_steps: list[int] = []
        self.val_ap: list[float] = []
        self.update()

    def add_step(self, step: int, loss: float) -> None:
        """Append a training loss."""
        if loss is not None and math.isfinite(loss):
            self.steps.append(step)
            self.losses.append(loss)
            self.update()

    def add_validation(self, step: int, ap50: float) -> None:
        """Append a validation score."""
        if math.isfinite(ap50):
            self.val_steps.append(step)
            self.val_ap.append(ap50)
            self.update()

    def paintEvent(self, event) -> None:  # noqa: N802 - Qt's name
        """Draw axes, the loss curve and the validation points."""
        painter = QPainter(self)
        painter.setRenderHint(QPainter.RenderHint.Antialiasing)
        w, h = self.width() - 2 * _MARGIN, self.height() - 2 * _MARGIN
        painter.setPen(QPen(self.palette().text().color(), 1))
        painter.drawRect(_MARGIN, _MARGIN, w, h)
        if not self.steps and not self.val_steps:
            painter.drawText(
                self.rect(), Qt.AlignmentFlag.AlignCenter, "loss and validation curves"
            )
            return
        last_step = max(self.steps[-1:] + self.val_steps[-1:] + [1])
        top_loss = max(self.losses) if self.losses else 1.0

        def point(step: float, value: float, top: float) -> QPointF:
            return QPointF(_MARGIN + w * step / last_step, _MARGIN + h * (1 - value / top))

        painter.setPen(QPen(_LOSS_COLOR, 1.5))
        painter.drawPolyline(
            QPolygonF(
                [point(s, v, top_loss) for s, v in zip(self.steps, self.losses, strict=True)]
            )
        )
        painter.setPen(QPen(_AP_COLOR, 2))
        painter.setBrush(_AP_COLOR)
        ap_points = [point(s, v, 1.0) for s, v in zip(self.val_steps, self.val_ap, strict=True)]
        painter.drawPolyline(QPolygonF(ap_points))
        for p in ap_points:
            painter.drawEllipse(p, 2.5, 2.5)
        painter.setPen(QPen(self.palette().text().color(), 1))
        painter.drawText(2, _MARGIN - 6, f"loss (max {top_loss:.2f})")
        painter.drawText(self.width() - 110, _MARGIN - 6, "score (0-1)")
        painter.drawText(_MARGIN, self.height() - 8, f"step 0 ... {last_step}")
        if self.val_ap:
            painter.drawText(self.width() - 110, self.height() - 8, f"last {self.val_ap[-1]:.2f}")
