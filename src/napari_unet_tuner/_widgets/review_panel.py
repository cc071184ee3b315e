"""Review panel: the model shows its least confident objects one by one; a key each to judge them.

The queue (`napari_unet_tuner.inference.objects.review_queue`) comes from the
segmentation's object table, kept on its labels layer. Reviewing works on a
corrections layer (made as the annotate panel makes one): *keep* (K) leaves
an object as it is, *delete* (D) erases it, *redraw* (R) hands the brush to
it, *add* (A) starts a new object at a possible miss. What was looked at,
and a few pixels around it, is recorded in the layer's ``reviewed`` mask:
fine-tuning takes only that as truth. After a segmentation by another model
version of the same image, the objects it changed come first
(`napari_unet_tuner.inference.changes`), and the status counts how many of
them the user judged right or wrong.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np
from magicgui.widgets import Container, Label, PushButton
from napari.utils.notifications import show_error

from napari_unet_tuner._widgets.layers import labels_name
from napari_unet_tuner.inference.objects import review_queue
from napari_unet_tuner.training.review import REVIEW_MARGIN, around

if TYPE_CHECKING:
    import napari
    import pandas as pd

    from napari_unet_tuner._widgets.tuner import UNetTunerWidget

KEYS = {"keep": "k", "delete": "d", "redraw": "r", "add": "a"}
# An object in view is zoomed to at least this many screen pixels across, but
# never past this many screen pixels per image pixel (its neighbours stay in view).
SHOWN_PIXELS = 60
MAX_ZOOM = 4.0
# Changes judged wrong before the status says the previous version may be better.
MOST_CHANGES_WRONG = 3


class ReviewPanel(Container):
    """Step through the objects the model doubts most, and judge each with a key."""

    def __init__(self, tuner: UNetTunerWidget) -> None:
        super().__init__(labels=False)
        self._tuner = tuner
        self.layer: napari.layers.Labels | None = None
        self.queue: pd.DataFrame | None = None
        self.position = -1
        self.counts = dict.fromkeys(("right", "fixed", "deleted", "added"), 0)
        # Of the changes since the previous segmentation: kept (right) or fixed (wrong).
        self.changes_judged = dict.fromkeys(("right", "wrong"), 0)
        self._pending: str | None = None  # "fixed" or "added" once the brush was handed over
        self._table = None
        self._largest_predicted = 0
        self.next_button = PushButton(
            text="Review next (K)",
            tooltip="Jump to the next object the model is least sure of (or a place it may "
            "have missed) and keep the current one as it is.",
        )
        self.delete_button = PushButton(text="Delete (D)", tooltip="Erase this object; next.")
        self.redraw_button = PushButton(
            text="Redraw (R)",
            tooltip="Paint or erase this object's outline with the brush, then Review next.",
        )
        self.add_button = PushButton(
            text="Add (A)",
            tooltip="A nucleus the model missed here: paint it as a new object, then Review next.",
        )
        self.next_button.changed.connect(self.keep)
        self.delete_button.changed.connect(self.delete)
        self.redraw_button.changed.connect(self.redraw)
        self.add_button.changed.connect(self.add)
        self.status = Label(value="segment an image, then review its least confident objects")
        self.status.native.setWordWrap(True)
        # Two to a row: three side by side are cut on a 1280 x 720 screen.
        rows = [
            Container(widgets=pair, layout="horizontal", labels=False)
            for pair in (
                [self.next_button, self.delete_button],
                [self.redraw_button, self.add_button],
            )
        ]
        self.extend([*rows, self.status])

    @property
    def current(self) -> dict | None:
        """The queue item in view (a dict of its row), if any."""
        if self.queue is None or not 0 <= self.position < len(self.queue):
            return None
        return self.queue.iloc[self.position].to_dict()

    def keep(self) -> None:
        """Take the current item as judged (kept, or fixed with the brush) and show the next."""
        if not self._ready():
            return
        item = self.current
        if item is not None:
            self._finish(item, self._pending or ("right" if item["kind"] == "object" else None))
        self._advance()

    def delete(self) -> None:
        """Erase the current object from the corrections layer, then show the next."""
        item = self.current
        if not self._ready() or item is None:
            return
        if item["kind"] == "object":
            part = self.layer.data[self._window(item)]  # a view: erased in the layer
            part[part == item["label"]] = 0
            self.layer.refresh()
        self._finish(item, "deleted" if item["kind"] == "object" else None)
        self._advance()

    def redraw(self) -> None:
        """Hand the brush to the current object: paint or erase its outline."""
        item = self.current
        if not self._ready() or item is None or item["kind"] != "object":
            return
        self._brush(int(item["label"]))
        self._pending = "fixed"

    def add(self) -> None:
        """Start a new object here (a missed nucleus): the brush gets a new label."""
        item = self.current
        if not self._ready() or item is None:
            return
        self._brush(int(np.max(self.layer.data)) + 1)
        self._pending = "added"

    def on_segmented(self) -> None:
        """Rebuild the queue from a new segmentation's table (after fine-tuning, too)."""
        self.queue, self.position, self._table = None, -1, None
        self._pending = None
        self.status.value = "new segmentation: press Review next for its least confident objects"

    def _ready(self) -> bool:
        """Start a review if none runs (or its layer is gone); False if it cannot start."""
        image = self._tuner.image_layer
        viewer = self._tuner.viewer
        name = None if image is None else labels_name(image)
        if name is None or name not in viewer.layers:
            show_error("Segment the image first: the review starts from its prediction.")
            return False
        prediction = viewer.layers[name]
        table = prediction.metadata.get("objects")
        if table is None:
            show_error(
                "This prediction has no object table to review (a field of view, or a run "
                "written to zarr): segment the whole image."
            )
            return False
        if self.queue is None or self._table is not table or self.layer not in viewer.layers:
            layer = self._tuner.new_corrections_layer()
            if layer is None:
                return False
            layer.metadata["reviewed"] = np.zeros(layer.data.shape, bool)
            for action, key in KEYS.items():
                layer.bind_key(key, lambda _layer, a=action: getattr(self, a)(), overwrite=True)
            self.layer, self._table, self.position = layer, table, -1
            self._largest_predicted = int(np.max(layer.metadata["prediction"]))
            self.queue = review_queue(
                table,
                prediction.metadata.get("possible_misses"),
                prediction.metadata.get("changes"),
            )
            self.counts = dict.fromkeys(self.counts, 0)
            self.changes_judged = dict.fromkeys(self.changes_judged, 0)
        return True

    def _advance(self) -> None:
        reviewed = self.layer.metadata["reviewed"]
        self.position += 1
        # Items already inside the reviewed area (a neighbour fixed together) are skipped.
        while self.current is not None and reviewed[self._point(self.current)]:
            self.position += 1
        self._pending = None
        item = self.current
        self._show_status()
        if item is None:
            return
        viewer = self._tuner.viewer
        world = self.layer.data_to_world(self._centroid(item))
        # The viewer's axes end with the layer's (other layers may have more).
        offset = viewer.dims.ndim - len(world)
        for axis in range(len(world)):
            if axis + offset not in viewer.dims.displayed:
                viewer.dims.set_point(axis + offset, world[axis])
        viewer.camera.center = tuple(world[d - offset] for d in viewer.dims.displayed)
        pixel = float(np.min(self.layer.scale[-2:]))
        across = 2 * np.sqrt(item["area"] / np.pi) * pixel
        wanted = min(SHOWN_PIXELS / max(across, 1e-6), MAX_ZOOM / pixel)
        viewer.camera.zoom = max(viewer.camera.zoom, wanted)
        self._highlight(item)
        self.layer.selected_label = int(item["label"]) or self.layer.selected_label
        self.layer.mode = "pan_zoom"
        viewer.layers.selection.active = self.layer

    def _finish(self, item: dict, outcome: str | None) -> None:
        """Mark the item's pixels (and its surroundings) reviewed; count the outcome."""
        window = self._window(item)
        if item["kind"] == "object":
            # The prediction the review started from (the image may be re-segmented since).
            prediction = self.layer.metadata["prediction"]
            seen = (prediction[window] == item["label"]) | (
                self.layer.data[window] == item["label"]
            )
        else:
            # The place shown, and any object painted new around it.
            seen = self.layer.data[window] > self._largest_predicted
            seen[
                tuple(int(p) - w.start for p, w in zip(self._point(item), window, strict=True))
            ] = True
        self.layer.metadata["reviewed"][window] |= around(seen)
        if outcome is not None:
            self.counts[outcome] += 1
        if item.get("change"):
            self.changes_judged["right" if outcome in (None, "right") else "wrong"] += 1

    def _highlight(self, item: dict) -> None:
        """Frame the item in view with a yellow box on a shapes layer of its own."""
        viewer = self._tuner.viewer
        centre = self._centroid(item)
        half = max(1.5 * np.sqrt(item["area"] / np.pi), 4.0)
        y, x = len(centre) - 2, len(centre) - 1
        box = []
        for dy, dx in ((-1, -1), (-1, 1), (1, 1), (1, -1)):
            point = centre.copy()
            point[y] += dy * half
            point[x] += dx * half
            box.append(point)
        name = f"{self.layer.name} review"
        # Two screen pixels wide at the zoom shown (the width is in data units).
        width = 2.0 / (viewer.camera.zoom * float(np.min(self.layer.scale[-2:])))
        if name in viewer.layers:
            viewer.layers[name].data = [np.array(box, float)]
            viewer.layers[name].edge_width = width
        else:
            viewer.add_shapes(
                [np.array(box, float)],
                shape_type="rectangle",
                edge_color="yellow",
                face_color="transparent",
                edge_width=width,
                name=name,
                scale=self.layer.scale,
                translate=self.layer.translate,
            )
        viewer.layers.selection.active = self.layer

    def _brush(self, label: int) -> None:
        self.layer.selected_label = label
        self.layer.mode = "paint"
        self._tuner.viewer.layers.selection.active = self.layer

    def _centroid(self, item: dict) -> np.ndarray:
        return np.array([item[f"centroid-{a}"] for a in range(self.layer.data.ndim)], float)

    def _point(self, item: dict) -> tuple[int, ...]:
        shape = self.layer.data.shape
        return tuple(
            int(np.clip(round(c), 0, s - 1))
            for c, s in zip(self._centroid(item), shape, strict=True)
        )

    def _window(self, item: dict) -> tuple[slice, ...]:
        """Return the region around an item: three times its size, on the last 2 or 3 axes."""
        spatial = 3 if self.layer.metadata.get("stack") == "3d" else 2
        radius = int(3 * np.sqrt(max(item["area"], 1.0)) + REVIEW_MARGIN)
        point = self._point(item)
        shape = self.layer.data.shape
        return tuple(
            slice(max(p - radius, 0), min(p + radius + 1, s))
            if axis >= len(shape) - spatial
            else slice(p, p + 1)
            for axis, (p, s) in enumerate(zip(point, shape, strict=True))
        )

    def _show_status(self) -> None:
        if self.queue is None:
            return
        objects = int((self.queue["kind"] == "object").sum())
        misses = len(self.queue) - objects
        done = min(max(self.position, 0), len(self.queue))
        c = self.counts
        text = (
            f"reviewed {done} of {objects} objects and {misses} possible misses, least "
            f"confident first · {c['fixed']} fixed · {c['deleted']} deleted · {c['added']} added"
        )
        changes = int((self.queue["change"] != "").sum())
        if changes:
            right, wrong = self.changes_judged["right"], self.changes_judged["wrong"]
            text = (
                f"{changes} objects changed since the previous segmentation come first: "
                f"{right} judged right, {wrong} wrong · {text}"
            )
            if wrong >= MOST_CHANGES_WRONG and wrong > right:
                text += (
                    " · most changes judged so far are wrong: the previous model version "
                    "may be the better one for this image"
                )
        if self.current is None:
            text += " · queue done"
        self.status.value = text
