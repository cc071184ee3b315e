"""Model panel: choose, inspect, roll back and save checkpoints."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
from magicgui.widgets import ComboBox, Container, FileEdit, Label, PushButton
from napari.qt.threading import create_worker
from napari.utils import progress
from napari.utils.notifications import show_error, show_info

from napari_unet_tuner._sample_data import nuclei_sample
from napari_unet_tuner._widgets.layers import layer_array
from napari_unet_tuner._widgets.worker_errors import report_errors_plainly
from napari_unet_tuner._widgets.wrapping_label import insert_wrapping_label
from napari_unet_tuner.errors import UnetTunerError
from napari_unet_tuner.inference.device import available_devices
from napari_unet_tuner.model.checkpoint import default_checkpoint_path
from napari_unet_tuner.model.history import describe_training_run
from napari_unet_tuner.model.loading import load_checkpoint
from napari_unet_tuner.model.saving import save_checkpoint
from napari_unet_tuner.versions import recent_checkpoints, remember_checkpoint

if TYPE_CHECKING:
    from napari_unet_tuner._widgets.tuner import UNetTunerWidget
    from napari_unet_tuner.model.checkpoint import Checkpoint

_NO_RECENT = "(recent files)"


class ModelPanel(Container):
    """Which model is active, what it is, and on which device it runs."""

    def __init__(self, tuner: UNetTunerWidget) -> None:
        super().__init__()
        self._tuner = tuner
        self.version = ComboBox(
            label="model",
            choices=self._version_choices,
            tooltip="Versions of this session; pick an earlier one to roll back.",
        )
        self.version.changed.connect(self._on_version_selected)
        self.open_file = FileEdit(
            label="open",
            mode="r",
            filter="Checkpoints (*.safetensors *.zip *.pt *.pth)",
            tooltip="Load a checkpoint (.safetensors, a bioimage.io package this plugin "
            "exported, or a PyTorch state dict imported safely).",
        )
        self.open_file.changed.connect(self._on_file_chosen)
        self.recent = ComboBox(
            label="recent",
            choices=self._recent_choices,
            tooltip="Checkpoints you used lately.",
        )
        self.recent.changed.connect(self._on_recent_selected)
        self.device = ComboBox(
            label="device",
            choices=available_devices(),
            tooltip="Where segmentation and fine-tuning run; a GPU is preselected when present.",
        )
        self.card = Label(value="")
        self.save_button = PushButton(
            text="Save active model...", tooltip="Write the active version to a new file."
        )
        self.save_button.changed.connect(self._on_save_clicked)
        self.export_button = PushButton(
            text="Export for bioimage.io...",
            tooltip="Write the active version as a bioimage.io model package (.zip) for "
            "deepImageJ, ilastik, QuPath or BiaPy, tested with bioimageio.core; the open "
            "image (or the nuclei sample) becomes its test image and cover.",
        )
        self.export_button.changed.connect(self._on_export_clicked)
        self.export_worker = None
        # One above the other: side by side, their texts were cut in a 385-px dock.
        buttons = Container(widgets=[self.save_button, self.export_button], labels=False)
        self.extend([self.version, self.open_file, self.recent, self.device, buttons])
        insert_wrapping_label(self, len(self) - 1, self.card)

    def _version_choices(self, _widget=None) -> list[tuple[str, int]]:
        versions = self._tuner.versions
        return [(versions.describe(i), i) for i in range(len(versions.versions))]

    def _recent_choices(self, _widget=None) -> list[tuple[str, str]]:
        return [(_NO_RECENT, "")] + [(p.name, str(p)) for p in recent_checkpoints()]

    def load_default(self, loaded: Checkpoint | None = None) -> None:
        """Preselect the checkpoint that ships with the package (``loaded``: already read)."""
        if loaded is not None:
            self._tuner.versions.add(loaded)
            self.refresh()
            return
        try:
            self.load(default_checkpoint_path(), remember=False)
        except UnetTunerError as exc:
            show_error(f"U-Net Tuner: {exc}")

    def load(self, path: str | Path, remember: bool = True) -> bool:
        """Load a checkpoint file as a new active version; errors become notifications."""
        try:
            checkpoint = load_checkpoint(path)
        except (UnetTunerError, OSError) as exc:
            show_error(f"Cannot use {Path(path).name}: {exc}")
            return False
        self._tuner.versions.add(checkpoint)
        if remember:
            remember_checkpoint(path)
        self.refresh()
        return True

    def refresh(self) -> None:
        """Show the active version in the list and its card."""
        versions = self._tuner.versions
        with self.version.changed.blocked():
            self.version.reset_choices()
            if versions.versions:
                self.version.value = versions.active_index
        with self.recent.changed.blocked():
            self.recent.reset_choices()
        active = versions.active
        self.card.value = "" if active is None else _card_summary(active)
        self.card.tooltip = "" if active is None else _card_details(active)

    def save_active(self, path: str | Path) -> Path | None:
        """Write the active version to ``path`` (never over its parent)."""
        active = self._tuner.versions.active
        if active is None:
            show_error("No model to save.")
            return None
        try:
            written = save_checkpoint(active, path, overwrite=True)
        except OSError as exc:
            show_error(f"Not saved: {exc}")
            return None
        remember_checkpoint(written)
        show_info(f"Saved {written}")
        return written

    def _on_version_selected(self, index: int | None) -> None:
        if index is not None and index != self._tuner.versions.active_index:
            self._tuner.versions.activate(index)
            self.refresh()

    def _on_file_chosen(self, path: Path) -> None:
        if path and Path(path).is_file():
            self.load(path)

    def _on_recent_selected(self, path: str) -> None:
        if path:
            self.load(path)

    def _on_save_clicked(self) -> None:
        from qtpy.QtWidgets import QFileDialog

        path, _ = QFileDialog.getSaveFileName(
            self.native, "Save model", "model.safetensors", "Checkpoints (*.safetensors)"
        )
        if path:
            self.save_active(path)

    def export_active(self, path: str | Path):
        """Export the active version to ``path`` in a worker; return the worker (None if none)."""
        active = self._tuner.versions.active
        if active is None:
            show_error("No model to export.")
            return None
        worker = create_worker(
            _export_and_check,
            self._tuner.warm_up,
            active,
            Path(path),
            self._sample_image(),
            _start_thread=False,
            _ignore_errors=True,
        )
        report_errors_plainly(worker)
        bar = progress(total=0, desc=f"Exporting {active.card.name} for bioimage.io")
        worker.returned.connect(_report_export)
        worker.finished.connect(lambda: self._export_done(bar))
        self.export_worker = worker
        self.export_button.enabled = False
        worker.start()
        return worker

    def _sample_image(self):
        """Return the open image's first plane (else the nuclei sample) for the package's test."""
        layer = self._tuner.image_layer
        if layer is None or layer.rgb:
            return nuclei_sample()[0][0]
        data, _ = layer_array(layer)
        spatial = self._tuner.versions.active.model_config.spatial_dims
        return np.asarray(data[(0,) * (data.ndim - spatial)])

    def _export_done(self, bar) -> None:
        bar.close()
        self.export_worker = None
        self.export_button.enabled = True

    def _on_export_clicked(self) -> None:
        from qtpy.QtWidgets import QFileDialog

        path, _ = QFileDialog.getSaveFileName(
            self.native, "Export for bioimage.io", "model.zip", "bioimage.io packages (*.zip)"
        )
        if path:
            self.export_active(path)


def _export_and_check(warm_up, checkpoint, path: Path, sample) -> tuple[Path, bool, str]:
    """Wait for the session's imports, then write and test the package (never over a file)."""
    from napari_unet_tuner.model.bioimageio_export import export_and_check

    warm_up.wait()
    return export_and_check(checkpoint, path, sample, overwrite=False)


def _report_export(result: tuple[Path, bool, str]) -> None:
    written, passed, words = result
    if passed:
        show_info(f"Exported {written.name} for bioimage.io (bioimageio.core test {words}).")
    else:
        show_error(f"Exported {written.name}, but bioimageio.core's test did not pass: {words}")


def _card_summary(checkpoint) -> str:
    """Return one line saying what the model is (the whole card is in the tooltip)."""
    card = checkpoint.card
    cfg = checkpoint.model_config
    trained = f" · fine-tuned {len(card.training) - 1}x" if len(card.training) > 1 else ""
    return f"<b>{card.name}</b> · {cfg.spatial_dims}D · {', '.join(card.channel_names)}{trained}"


def _card_details(checkpoint) -> str:
    """Return the card in words for the tooltip: description, input, architecture, runs."""
    card = checkpoint.card
    cfg = checkpoint.model_config
    lines = [
        card.name,
        card.description,
        f"Input: {', '.join(card.channel_names)} ({card.input_axes}), {cfg.spatial_dims}D, "
        f"pixel size {card.pixel_size or 'unknown'}.",
        f"U-Net of depth {cfg.depth} with {cfg.features} features.",
    ]
    lines += [f"Trained {describe_training_run(run)}." for run in card.training[-3:]]
    return "\n".join(line for line in lines if line)
