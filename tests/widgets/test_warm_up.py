"""Heavy imports run once off the GUI thread, and every worker waits for them."""

import logging
import threading

from napari.utils import progress
from qtpy.QtWidgets import QWidget

from napari_unet_tuner._widgets.warm_up import WARM_UP_DESCRIPTION, ImportWarmUp, show_progress


def test_a_worker_starts_only_after_the_warm_up_has_ended():
    release, order = threading.Event(), []

    def slow_imports():
        release.wait(5)
        order.append("imports")

    warm_up = ImportWarmUp(slow_imports)

    def work(n):
        order.append("work")
        yield n
        return n + 1

    run = warm_up.after(work)(1)
    result = []
    thread = threading.Thread(target=lambda: result.extend(run))
    thread.start()
    thread.join(0.2)
    assert thread.is_alive() and order == []  # still waiting for the imports
    release.set()
    thread.join(5)
    assert order == ["imports", "work"] and result == [1]


def test_a_failed_warm_up_is_one_line_and_workers_still_run(caplog):
    def broken():
        raise RuntimeError("operator onnx::RotaryEmbedding.opset23 does not exist")

    with caplog.at_level(logging.WARNING):
        warm_up = ImportWarmUp(broken)
        warm_up.wait()
    assert isinstance(warm_up.error, RuntimeError)
    (record,) = [r for r in caplog.records if "warming up" in r.getMessage()]
    assert record.exc_info is None and "RotaryEmbedding" in record.getMessage()

    def work():
        yield "ran"

    assert list(warm_up.after(work)()) == ["ran"]


def test_a_progress_bar_shows_until_the_warm_up_ends(qtbot):
    release = threading.Event()
    warm_up = ImportWarmUp(lambda: release.wait(5))
    owner = QWidget()
    qtbot.addWidget(owner)

    def bars():
        return [bar for bar in progress._all_instances if bar.desc == WARM_UP_DESCRIPTION]

    show_progress(warm_up, owner)
    qtbot.wait(300)
    assert len(bars()) == 1  # still importing
    release.set()
    qtbot.waitUntil(lambda: not bars(), timeout=3000)
