"""Annotate panel: one click makes a layer to correct or to scribble on."""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np
from magicgui.widgets import Container, Label, PushButton
from napari.utils.colormaps import DirectLabelColormap
from napari.utils.notifications import show_error

from napari_unet_tuner._widgets.layers import LAYER_TAG, labels_name, layer_array
from napari_unet_tuner._widgets.review_panel import ReviewPanel
from napari_unet_tuner.training.targets import SCRIBBLE_BACKGROUND, annotation_counts

if TYPE_CHECKING:
    import napari

    from napari_unet_tuner._widgets.tuner import UNetTunerWidget

_FIRST_OBJECT = SCRIBBLE_BACKGROUND + 1
_SCRIBBLE_COLORS = 256


def scribble_colormap(template: DirectLabelColormap | None = None) -> DirectLabelColormap:
    """Unannotated transparent, background grey, objects in napari's label colors."""
    colors = {
        None: (1.0, 0.8, 0.0, 1.0),
        0: (0, 0, 0, 0),
        SCRIBBLE_BACKGROUND: (0.55, 0.55, 0.55, 1.0),
    }
    if template is not None:
        for value in range(_FIRST_OBJECT, _SCRIBBLE_COLORS):
            colors[value] = tuple(template.map(value))
    return DirectLabelColormap(color_dict=colors)


class AnnotatePanel(Container):
    """Make an annotation layer for the image and show how much is annotated."""

    def __init__(self, tuner: UNetTunerWidget) -> None:
        super().__init__()
        self._tuner = tuner
        self._layer = None
        self.correct_button = PushButton(
            text="Correct the prediction",
            tooltip="Copy the prediction into a new layer to fix: erase, paint, split. "
            "The prediction itself is kept.",
        )
        self.scribble_button = PushButton(
            text="Scribble",
            tooltip="New empty layer: label 1 = background (grey), 2, 3, ... = one object each; "
            "unpainted pixels are ignored.",
        )
        self.summary = Label(
            value="nothing annotated yet", tooltip="Objects and pixels annotated."
        )
        self.correct_button.changed.connect(self.make_corrections_layer)
        self.scribble_button.changed.connect(self.make_scribble_layer)
        buttons = Container(
            widgets=[self.correct_button, self.scribble_button], layout="horizontal", labels=False
        )
        self.review = ReviewPanel(tuner)
        self.extend(
            [
                Label(value="<b>Review</b>: the least confident objects first"),
                self.review,
                Label(value="<b>Or paint freely</b>"),
                buttons,
                self.summary,
            ]
        )

    def make_corrections_layer(self) -> napari.layers.Labels | None:
        """Add a copy of the image's prediction, ready to paint on."""
        image = self._tuner.image_layer
        viewer = self._tuner.viewer
        if image is None or labels_name(image) not in viewer.layers:
            show_error("Segment the image first, then correct its prediction.")
            return None
        prediction = viewer.layers[labels_name(image)]
        layer = viewer.add_labels(
            np.array(prediction.data, copy=True),
            name=f"{image.name} corrections",
            scale=prediction.scale,
            translate=prediction.translate,
            # The prediction it started from: where they differ is what to learn.
            metadata={
                LAYER_TAG: True,
                "mode": "corrections",
                "image": image.name,
                "prediction": np.array(prediction.data, copy=True),
                # Learned at the scale the prediction was made at.
                "scale": prediction.metadata.get("scale", "auto"),
                "stack": prediction.metadata.get("stack", "planes"),
            },
        )
        return self._activate(layer, "corrections", int(np.max(layer.data)) + 1)

    def make_scribble_layer(self) -> napari.layers.Labels | None:
        """Add an empty scribble layer the size of the image, in paint mode."""
        image = self._tuner.image_layer
        if image is None:
            show_error("Open an image first: scribbles are painted over an image.")
            return None
        shape = layer_array(image)[0].shape[: image.ndim]
        layer = self._tuner.viewer.add_labels(
            np.zeros(shape, np.uint16),
            name=f"{image.name} scribbles",
            scale=image.scale,
            translate=image.translate,
            metadata={LAYER_TAG: True, "mode": "scribbles", "image": image.name},
        )
        layer.colormap = scribble_colormap(layer.colormap)
        return self._activate(layer, "scribbles", _FIRST_OBJECT)

    def _activate(self, layer, mode: str, label: int):
        viewer = self._tuner.viewer
        viewer.layers.selection.active = layer
        layer.mode = "paint"
        layer.selected_label = label
        layer.brush_size = 5
        layer.events.paint.connect(self.update_summary)
        layer.events.data.connect(self.update_summary)
        self._tuner.annotations_changed()
        self._layer = layer
        self.update_summary()
        return layer

    def update_summary(self, event=None) -> None:
        """Count annotated objects and pixels of the layer made last."""
        layer = self._layer
        if layer is None or layer not in self._tuner.viewer.layers:
            self.summary.value = "nothing annotated yet: make a layer to correct or scribble on"
            return
        mode = layer.metadata["mode"]
        objects, pixels = annotation_counts(layer.data, mode)
        if mode == "scribbles":
            self.summary.value = f"{objects} objects, {pixels} pixels annotated"
        else:
            reviewed = layer.metadata.get("reviewed")
            if reviewed is not None and reviewed.any():
                pixels = int(np.count_nonzero(reviewed))
            self.summary.value = f"{objects} objects ({pixels} pixels reviewed)"
