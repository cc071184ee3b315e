"""A segmentation's progress bar appears only when the work outlasts its delay."""

from napari.utils import progress
from qtpy.QtWidgets import QWidget

from napari_unet_tuner._widgets.delayed_progress import DelayedProgress


def _bars(description):
    return [bar for bar in progress._all_instances if bar.desc.startswith(description)]


def test_short_work_shows_no_bar(qtbot):
    owner = QWidget()
    qtbot.addWidget(owner)
    bar = DelayedProgress("Segmenting short", owner, delay_ms=200)
    bar.update_to(1, 2)
    bar.close()
    qtbot.wait(400)
    assert not bar.shown and not _bars("Segmenting short")


def test_long_work_shows_how_far_it_got_then_closes(qtbot):
    owner = QWidget()
    qtbot.addWidget(owner)
    bar = DelayedProgress("Segmenting long", owner, delay_ms=50)
    bar.update_to(3, 8)
    qtbot.waitUntil(lambda: bar.shown, timeout=2000)
    (shown,) = _bars("Segmenting long")
    assert (shown.n, shown.total) == (3, 8)
    bar.set_description("Segmenting long: ZX planes")
    bar.update_to(5, 8)
    assert shown.desc.startswith("Segmenting long: ZX planes") and shown.n == 5
    bar.close()
    assert not _bars("Segmenting long")


def test_no_bar_once_its_owner_is_gone(qtbot):
    owner = QWidget()
    bar = DelayedProgress("Segmenting orphan", owner, delay_ms=50)
    owner.deleteLater()
    qtbot.wait(200)
    assert not bar.shown and not _bars("Segmenting orphan")
