"""Word-wrapped labels that get the height their lines need."""

from __future__ import annotations

from magicgui.widgets import Container, Label
from qtpy.QtWidgets import QSizePolicy


def insert_wrapping_label(container: Container, index: int, label: Label) -> None:
    """Put ``label``, word-wrapped, at ``index`` of ``container``'s Qt layout.

    magicgui gives its labels a fixed height and puts each widget of a
    labelled container in a row widget; neither passes a wrapped label's
    height-for-width on, so a sentence that wrapped to three lines got the
    height of two and overlapped the next one (the fine-tune result, in a
    dock 385 px wide). Placed straight in the layout with a policy that
    asks for its height at its width, it gets its lines at any dock width.
    """
    policy = QSizePolicy(QSizePolicy.Policy.Preferred, QSizePolicy.Policy.Minimum)
    policy.setHeightForWidth(True)
    label.native.setSizePolicy(policy)
    label.native.setWordWrap(True)
    container.native.layout().insertWidget(index, label.native)
