import contextlib
import time

import numpy as np
import pytest
import torch

from napari_unet_tuner import Checkpoint, ModelConfig, UNet, new_card, save_checkpoint

TINY = ModelConfig(features=4, depth=2, batch_norm=True)


def make_checkpoint(config: ModelConfig = TINY, seed: int = 0, **card) -> Checkpoint:
    torch.manual_seed(seed)
    model = UNet(config).eval()
    return Checkpoint.from_model(model, new_card(config, name=card.pop("name", "tiny"), **card))


@pytest.fixture
def tiny_checkpoint() -> Checkpoint:
    return make_checkpoint()


@pytest.fixture
def tiny_checkpoint_file(tmp_path, tiny_checkpoint):
    return save_checkpoint(tiny_checkpoint, tmp_path / "tiny.safetensors")


def disc_labels(shape=(64, 64), centers=((32, 22), (32, 42)), radius=11) -> np.ndarray:
    """Instance labels of discs; the default two touch along a vertical line."""
    yy, xx = np.mgrid[: shape[0], : shape[1]]
    labels = np.zeros(shape, np.int32)
    for i, (cy, cx) in enumerate(centers, start=1):
        disc = (yy - cy) ** 2 + (xx - cx) ** 2 <= radius**2
        labels[disc & (labels == 0)] = i
    return labels


@pytest.fixture(autouse=True)
def _private_config_dir(tmp_path, monkeypatch):
    """Recent-file lists and cached runtimes go to a temporary folder, not the user's."""
    monkeypatch.setenv("UNET_TUNER_CONFIG_DIR", str(tmp_path / "config"))
    monkeypatch.setenv("UNET_TUNER_CACHE_DIR", str(tmp_path / "cache"))


def dock_tuner(viewer, checkpoint: Checkpoint, path, monkeypatch):
    """Dock the widget in ``viewer`` with ``checkpoint`` as its default model."""
    from napari_unet_tuner._widgets import model_panel
    from napari_unet_tuner._widgets.tuner import UNetTunerWidget

    path = save_checkpoint(checkpoint, path)
    monkeypatch.setattr(model_panel, "default_checkpoint_path", lambda: path)
    widget = UNetTunerWidget(viewer)
    viewer.window.add_dock_widget(widget)
    return widget


@pytest.fixture
def tuner(make_napari_viewer, tmp_path, monkeypatch):
    """The widget docked in a real viewer, with a tiny model instead of the bundled one."""
    return dock_tuner(
        make_napari_viewer(), make_checkpoint(), tmp_path / "tiny.safetensors", monkeypatch
    )


def disc_images(count: int = 3, shape=(96, 96)) -> list[tuple[np.ndarray, np.ndarray]]:
    """Bright discs on a noisy background, with their labels."""
    pairs = []
    for seed in range(count):
        rng = np.random.default_rng(seed)
        centers = [(int(y), int(x)) for y, x in rng.integers(12, min(shape) - 12, (6, 2))]
        labels = disc_labels(shape, centers, radius=7)
        image = (labels > 0) * 900 + 300 + rng.normal(0, 30, shape)
        pairs.append((image.astype(np.float32), labels))
    return pairs


@pytest.fixture(scope="session")
def disc_model() -> Checkpoint:
    """A tiny model trained from scratch to segment `disc_images` (a few seconds)."""
    from napari_unet_tuner import TrainingConfig, fine_tune

    # One epoch: its step count is fixed (later epochs lengthen to match the
    # validation's time, which varies on a busy machine). A budget far above
    # what 240 steps take, and float32 on every CPU: the same model on a
    # loaded machine and on one without bfloat16 (a 60 s budget cut the
    # steps short under load, and the model then missed one sphere).
    config = TrainingConfig(
        max_seconds=900,
        mixed_precision=False,
        max_epochs=1,
        steps_per_epoch=240,
        patch_shape=(64, 64),
        batch_size=4,
        learning_rate=3e-3,
        device="cpu",
    )
    result = fine_tune(disc_images(), None, config, model_config=ModelConfig(features=8, depth=2))
    return result.checkpoint


def dim_disc_scene(seed: int = 0) -> tuple[np.ndarray, np.ndarray, list[int]]:
    """Six bright discs and two dim ones (ids 7, 8), which `disc_model` misses.

    Returns the image, the true labels and the ids of the dim discs: a
    deliberate correction the model can learn in a few steps.
    """
    rng = np.random.default_rng(100 + seed)
    bright = [(20, 20), (20, 50), (50, 20), (50, 75), (80, 30), (80, 70)]
    dim = [(20, 80), (75, 50)] if seed % 2 == 0 else [(45, 48), (85, 10)]
    labels = disc_labels((96, 96), bright + dim, radius=7)
    intensity = np.where(labels >= 7, 250, 900) * (labels > 0)
    image = intensity + 300 + rng.normal(0, 30, labels.shape)
    return image.astype(np.float32), labels, [7, 8]


def touching_spheres(anisotropy: int, radius: int = 8):
    """Bright spheres (two pairs touching, one apart in Z), sampled every ``anisotropy`` planes."""
    centers = [(24, 20, 20), (24, 20, 36), (26, 44, 26), (26, 44, 42), (10, 70, 70)]
    zz, yy, xx = np.mgrid[:48, :88, :88]
    truth = np.zeros(zz.shape, np.int32)
    for i, (z, y, x) in enumerate(centers, start=1):
        ball = (zz - z) ** 2 + (yy - y) ** 2 + (xx - x) ** 2 <= radius**2
        truth[ball & (truth == 0)] = i
    truth = truth[::anisotropy]
    rng = np.random.default_rng(0)
    image = (truth > 0) * 900 + 300 + rng.normal(0, 30, truth.shape)
    return image.astype(np.float32), truth


def script_validations(monkeypatch, counts, fit_losses=None):
    """Make the validations of a fine-tuning run report ``counts`` in turn.

    ``counts``: one `CorrectionCounts` per validation (the first is the
    starting model's); each validation's annotation score is computed from
    its counts by `CorrectionCounts.score`, as the real validation does, so
    a scripted score can never disagree with the counts shown beside it.
    ``fit_losses``: the fit to the annotation at each validation (else 1).
    Returns the weights each validation saw, in order.
    """
    from dataclasses import replace

    from napari_unet_tuner.training import trainer

    seen = []
    real_evaluate, real_choose = trainer.evaluate, trainer.choose

    def fake_evaluate(model, *args):
        seen.append({k: v.detach().clone() for k, v in model.state_dict().items()})
        return real_evaluate(model, *args)

    def scripted(result):
        i = len(seen) - 1
        fit = 1.0 if fit_losses is None else fit_losses[i]
        scores = {
            **result.scores,
            "annotation_score": counts[i].score(),
            "ap50": float("nan"),
            "fit_loss": fit,
        }
        return replace(result, scores=scores, corrections=counts[i])

    def fake_choose(results):
        return scripted(real_choose(results))

    monkeypatch.setattr(trainer, "evaluate", fake_evaluate)
    monkeypatch.setattr(trainer, "choose", fake_choose)
    # The starting model's validation is read off the first results directly.
    real_start = trainer.BestModel.start.__func__

    def start(cls, before, best, model):
        return real_start(cls, scripted(before), scripted(best), model)

    monkeypatch.setattr(trainer.BestModel, "start", classmethod(start))
    return seen


def counts_scoring(score: float):
    """`CorrectionCounts` whose annotation score is ``score`` (a multiple of 0.01).

    All 10 corrections fixed, and ``100 * score - 10`` of 90 unchanged
    objects right: a score that falls loses unchanged objects.
    """
    from napari_unet_tuner.training.counting import CorrectionCounts

    return CorrectionCounts(
        corrected=10, corrected_right=10, unchanged=90, unchanged_right=round(100 * score) - 10
    )


@contextlib.contextmanager
def peak_memory():
    """Trace Python's allocations in the block; the list it gives holds the peak after it."""
    import tracemalloc

    peak: list[int] = []
    tracemalloc.start()
    try:
        yield peak
    finally:
        peak.append(tracemalloc.get_traced_memory()[1])
        tracemalloc.stop()


def wait_idle(qtbot, panel, timeout=60_000):
    """Wait until a panel's worker has finished and its results were shown."""
    qtbot.waitUntil(lambda: panel.worker is None, timeout=timeout)


class StallMeter:
    """Longest gap between ticks of a 10 ms Qt timer: how long the event loop froze."""

    def __init__(self):
        from qtpy.QtCore import QTimer

        self.last = time.perf_counter()
        self.longest = 0.0
        self.timer = QTimer()
        self.timer.setInterval(10)
        self.timer.timeout.connect(self._tick)
        self.timer.start()

    def _tick(self):
        now = time.perf_counter()
        self.longest = max(self.longest, now - self.last)
        self.last = now

    def stop(self):
        self.timer.stop()
        return self.longest


def corrected_discs(tuner, qtbot):
    """Segment `dim_disc_scene` in the widget and paint its truth into a corrections layer.

    Returns the image, the truth, the dim discs' ids and the corrections layer.
    """
    image, truth, dim = dim_disc_scene(0)
    tuner.viewer.add_image(image, name="cells")
    tuner.segment_panel.run()
    wait_idle(qtbot, tuner.segment_panel)
    corrections = tuner.annotate_panel.make_corrections_layer()
    corrections.data = truth.copy()
    return image, truth, dim, corrections


@pytest.fixture
def disc_tuner(make_napari_viewer, disc_model, tmp_path, monkeypatch):
    """The widget with a small model that finds bright discs and misses dim ones."""
    from napari_unet_tuner import with_card

    model = with_card(disc_model, name="tiny")
    return dock_tuner(make_napari_viewer(), model, tmp_path / "discs.safetensors", monkeypatch)
