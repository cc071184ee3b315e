"""Learn as I correct: training in the background while the user paints."""

import numpy as np

from conftest import StallMeter, corrected_discs, dim_disc_scene, wait_idle


def test_painting_while_training_is_picked_up_and_never_changed(disc_tuner, qtbot):
    tuner = disc_tuner
    viewer = tuner.viewer
    image, truth, dim = dim_disc_scene(0)
    layer = viewer.add_image(image, name="cells")
    tuner.segment_panel.run()
    wait_idle(qtbot, tuner.segment_panel)
    corrections = tuner.annotate_panel.make_corrections_layer()
    live = tuner.train_panel.live

    # The first stroke: one dim disc the model missed.
    corrections.brush_size = 14
    ys, xs = np.nonzero(truth == dim[0])
    corrections.paint((int(ys.mean()), int(xs.mean())), 20)
    meter = StallMeter()
    live.toggle.value = True
    assert live.running
    qtbot.waitUntil(lambda: live.counts is not None and live.counts.to_fix >= 1, timeout=60_000)
    first_to_fix = live.counts.to_fix

    # A second stroke while training runs: picked up after the pause in painting.
    ys, xs = np.nonzero(truth == dim[1])
    corrections.paint((int(ys.mean()), int(xs.mean())), 21)
    painted = corrections.data.copy()
    qtbot.waitUntil(lambda: live.counts.to_fix > first_to_fix, timeout=60_000)
    # Each model that reproduces more corrections becomes one live version, active.
    qtbot.waitUntil(lambda: len(tuner.versions.versions) == 2, timeout=120_000)
    assert tuner.versions.active_index == 1
    assert tuner.versions.active.card.training[-1]["stop_reason"] == "live"

    # Off: training stops, the best so far stays active.
    live.toggle.value = False
    wait_idle(qtbot, live)
    stall = meter.stop()
    assert "best so far" in live.status.value
    assert len(tuner.versions.versions) == 2 and tuner.versions.active_index == 1
    # Fine-tuning in one go is possible again, and nothing the user made was changed.
    assert not live.running
    assert np.array_equal(corrections.data, painted)
    assert np.array_equal(layer.data, image)
    assert stall < 1.0  # generous bound for a loaded machine; the benchmark measures it


def test_one_fine_tuning_at_a_time(disc_tuner, qtbot):
    tuner = disc_tuner
    corrected_discs(tuner, qtbot)
    live = tuner.train_panel.live
    live.toggle.value = True
    assert tuner.train_panel.run() is None  # refused while live training is on
    live.toggle.value = False
    wait_idle(qtbot, live)
    assert tuner.train_panel.worker is None


def test_live_mode_without_annotations_waits_and_says_what_to_do(disc_tuner, qtbot):
    tuner = disc_tuner
    tuner.viewer.add_image(dim_disc_scene(0)[0], name="cells")
    live = tuner.train_panel.live
    live.toggle.value = True
    assert "Correct a prediction" in live.status.value
    live.toggle.value = False
    wait_idle(qtbot, live)
    assert len(tuner.versions.versions) == 1
