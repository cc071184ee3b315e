"""Screenshots of the real widget for the README, taken from a real napari window.

    xvfb-run -a -s "-screen 0 1600x1000x24" .venv/bin/python scripts/screenshots.py

Every shot is of a 1280 x 720 window, a laptop screen, with the tab of the
step it shows in front.

Writes docs/screenshots/: the nuclei sample segmented by the default model;
the hand-annotated DSB2018 image corrected (10 worst errors fixed by the
simulated user of benchmarks/painting.py) and after fine-tuning on the
corrections (60 s on the CPU), with what was learned; the bacteria sample
before fine-tuning, with painted scribbles, and after fine-tuning on them
(45 s); a 4096 x 4096 multiscale mosaic being segmented into a zarr folder,
half done; the cells3d nuclei Z-stack segmented into 3D objects, in napari's
3D view; the bacteria sample learned while scribbles are added (*Learn as I
correct*); the next DSB2018 image reviewed after fine-tuning, the objects
the new version changed first. ``--only zarr`` takes just the zarr shot,
``--only live`` the live one, ``--only changes`` the changes one, ``--only
loop`` all but the zarr, 3D, review, changes and live ones, ``--only
corrections`` the two corrections shots, ``--only 3d`` the 3D one.
"""

from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "benchmarks"))
OUT = ROOT / "docs" / "screenshots"

import numpy as np  # noqa: E402
from painting import correct_worst, paint_scribbles  # noqa: E402

import datasets  # noqa: E402


def main() -> None:
    import argparse

    import napari
    from qtpy.QtWidgets import QApplication

    parser = argparse.ArgumentParser()
    parser.add_argument(
        "--only", choices=["zarr", "loop", "corrections", "3d", "review", "changes", "live"]
    )
    only = parser.parse_args().only
    if only is None:
        # Each group in its own process: in one, Mesa's software OpenGL crashed
        # (a segfault in glDrawArrays) drawing the first shot after the zarr one.
        for group in ("3d", "zarr", "review", "changes", "live", "loop"):
            subprocess.run([sys.executable, __file__, "--only", group], check=True)
        return

    app = QApplication.instance() or QApplication([])
    OUT.mkdir(parents=True, exist_ok=True)

    def settle(panel=None, seconds=0.5):
        end = time.monotonic() + seconds
        while time.monotonic() < end or (panel is not None and panel.worker is not None):
            app.processEvents()
            time.sleep(0.01)

    def shot(viewer, name):
        settle()
        viewer.window._qt_window.grab().save(str(OUT / name))

    viewer = napari.Viewer(title="napari-unet-tuner")
    viewer.window._qt_window.resize(1280, 720)
    _, dock = viewer.window.add_plugin_dock_widget("napari-unet-tuner", "U-Net Tuner")
    widget = dock.wait_for_tuner()
    if only != "loop":
        shots = {
            "corrections": corrections_learned,
            "3d": objects_in_3d,
            "zarr": zarr_filling,
            "review": review_mode,
            "changes": review_changes,
            "live": learning_live,
        }
        shots[only](viewer, widget, settle, shot)
        viewer.close()
        return
    viewer.open_sample("napari-unet-tuner", "nuclei")
    widget.segment_panel.image.reset_choices()
    widget.show_tab(widget.segment_panel)
    widget.segment_panel.run()
    settle(widget.segment_panel)
    viewer.reset_view()
    shot(viewer, "nuclei_default_model.png")

    viewer.layers.clear()
    corrections_learned(viewer, widget, settle, shot)

    viewer.layers.clear()
    bacteria_segmented(viewer, widget, settle)
    shot(viewer, "bacteria_before.png")

    _, masks = datasets.bacteria()
    widget.show_tab(widget.annotate_panel)
    layer = widget.annotate_panel.make_scribble_layer()
    layer.data = paint_scribbles([masks[19]], n_objects=10, seed=1)[0]
    viewer.layers["bacteria labels"].visible = False
    shot(viewer, "bacteria_scribbles.png")

    widget.show_tab(widget.train_panel)
    widget.train_panel.seconds.value = 45
    widget.train_panel.run()
    settle(widget.train_panel)
    settle(widget.segment_panel, 1.0)
    layer.visible = False
    viewer.layers["bacteria labels"].visible = True
    shot(viewer, "bacteria_after.png")
    viewer.close()


def bacteria_segmented(viewer, widget, settle) -> None:
    """Open the bacteria sample, segment it with the default and zoom in."""
    viewer.open_sample("napari-unet-tuner", "bacteria")
    widget.segment_panel.image.reset_choices()
    widget.segment_panel.run()
    settle(widget.segment_panel)
    viewer.camera.center = (0, 380, 260)
    viewer.camera.zoom = 1.6


def dsb_segmented(viewer, widget, settle):
    """Open the hand-annotated DSB2018 image, segment it, show Annotate; return its truth."""
    image, truth = datasets.stardist_nuclei_2d()
    viewer.add_image(image, name="DSB nuclei", colormap="gray")
    widget.segment_panel.image.reset_choices()
    widget.segment_panel.image.value = viewer.layers["DSB nuclei"]
    widget.segment_panel.run()
    settle(widget.segment_panel)
    widget.show_tab(widget.annotate_panel)
    return truth


def corrections_learned(viewer, widget, settle, shot) -> None:
    """The hand-annotated DSB2018 image: 10 worst errors corrected, then learned."""
    truth = dsb_segmented(viewer, widget, settle)
    layer = widget.annotate_panel.make_corrections_layer()
    prediction = viewer.layers["DSB nuclei labels"].data
    layer.data = correct_worst(prediction, truth, 10)[0]
    layer.opacity = 0.8
    viewer.layers["DSB nuclei labels"].visible = False
    viewer.reset_view()
    shot(viewer, "corrections_painted.png")
    widget.show_tab(widget.train_panel)
    widget.train_panel.preview.value = False
    widget.train_panel.seconds.value = 60
    widget.train_panel.run()
    settle(widget.train_panel)
    settle(widget.segment_panel, 1.0)
    viewer.layers["DSB nuclei labels"].visible = True
    shot(viewer, "corrections_learned.png")
    viewer.layers.clear()


def review_mode(viewer, widget, settle, shot) -> None:
    """The DSB2018 image under review: six of the least confident objects judged, the next in view.

    Each is judged as the simulated reviewer of benchmarks/bench_review.py
    does: kept when it matches a reference nucleus, deleted when it covers
    none, redrawn as the reference nuclei under it otherwise.
    """
    truth = dsb_segmented(viewer, widget, settle)
    review = widget.annotate_panel.review
    review.keep()
    prediction = viewer.layers["DSB nuclei labels"].data
    viewer.layers["DSB nuclei labels"].visible = False
    for _ in range(6):
        judge_as_reference(review, prediction, truth)
    while review.current["kind"] != "object":
        review.keep()
    settle(seconds=1.0)
    shot(viewer, "review_mode.png")
    viewer.layers.clear()


def judge_as_reference(review, prediction, truth) -> None:
    """Judge the item in view as the simulated reviewer of benchmarks/bench_review.py.

    Kept when it matches a reference nucleus, deleted when it covers none,
    redrawn as the reference nuclei under it otherwise; at a place shown as
    a possible miss (or a lost object), the reference nucleus there is
    painted when no object of the prediction matches it.
    """
    item = review.current
    if item["kind"] != "object":
        at = tuple(int(round(item[f"centroid-{a}"])) for a in range(truth.ndim))
        nucleus = truth == truth[at] if truth[at] else None
        if nucleus is not None and not any(
            np.sum(nucleus & (prediction == p)) / np.sum(nucleus | (prediction == p)) >= 0.5
            for p in np.unique(prediction[nucleus])
            if p
        ):
            review.add()
            data = review.layer.data
            data[nucleus & (data == 0)] = review.layer.selected_label
            review.layer.data = data
        review.keep()
        return
    mine = prediction == item["label"]
    under = [t for t in np.unique(truth[mine]) if t]
    best = max(
        (np.sum(mine & (truth == t)) / np.sum(mine | (truth == t)) for t in under), default=0
    )
    if best >= 0.5:
        review.keep()
    elif not under:
        review.delete()
    else:
        review.redraw()
        data = review.layer.data
        data[mine] = 0
        for k, t in enumerate(under):
            data[truth == t] = item["label"] if k == 0 else data.max() + 1
        review.layer.data = data
        review.keep()


def review_changes(viewer, widget, settle, shot) -> None:
    """The next image after fine-tuning: what the new version changed, reviewed first.

    The version is fine-tuned as in benchmarks/bench_changes.py (the 20
    worst objects of the DSB2018 image's left half corrected, 60 s, seed 0);
    the right half, segmented by the default model and then by that
    version, is the next image; six of its changes are judged.
    """
    from bench_corrections import sets as loop_sets
    from bench_live import annotations, worst_objects

    from napari_unet_tuner import TrainingConfig, fine_tune, segment

    (image, truth), [(next_image, next_truth)] = loop_sets()["dsb"]
    start = widget.versions.active
    result = segment(image, start)
    steps = annotations(image, truth, result, worst_objects(result.labels, truth, 20))
    tuned = fine_tune([steps[-1]], start, TrainingConfig(max_seconds=60, seed=0))
    viewer.add_image(next_image, name="DSB nuclei, next image", colormap="gray")
    widget.segment_panel.image.reset_choices()
    widget.segment_panel.image.value = viewer.layers["DSB nuclei, next image"]
    for version in (None, tuned.checkpoint if tuned.learned else tuned.candidate):
        if version is not None:
            widget.versions.add(version)
            widget.model_panel.refresh()
        widget.segment_panel.run()
        settle(widget.segment_panel)
    widget.show_tab(widget.annotate_panel)
    review = widget.annotate_panel.review
    review.keep()
    prediction = viewer.layers["DSB nuclei, next image labels"].data
    for _ in range(6):
        judge_as_reference(review, prediction, next_truth)
    settle(seconds=1.0)
    shot(viewer, "review_changes.png")
    viewer.layers.clear()


def learning_live(viewer, widget, settle, shot) -> None:
    """The bacteria sample with *Learn as I correct* on: scribbles added while it trains."""
    bacteria_segmented(viewer, widget, settle)
    _, masks = datasets.bacteria()
    layer = widget.annotate_panel.make_scribble_layer()
    widget.show_tab(widget.train_panel)
    live = widget.train_panel.live
    live.toggle.value = True
    # The user adds scribbles every 8 s; each pause is learned as it comes.
    for objects in (3, 6, 10):
        layer.data = paint_scribbles([masks[19]], n_objects=objects, seed=1)[0]
        settle(seconds=8.0)
    settle(seconds=20.0)
    layer.opacity = 0.5
    shot(viewer, "learning_live.png")
    live.toggle.value = False
    settle(live)
    viewer.layers.clear()


def objects_in_3d(viewer, widget, settle, shot) -> None:
    """The cells3d nuclei stack (Z named, 0.29 um planes of 0.26 um pixels) as 3D objects."""
    image, _ = datasets.cells3d_nuclei()
    viewer.add_image(
        image, name="cells3d nuclei", scale=(0.29, 0.26, 0.26), axis_labels=("z", "y", "x")
    )
    panel = widget.segment_panel
    widget.show_tab(panel)
    panel.image.reset_choices()
    panel.image.value = viewer.layers["cells3d nuclei"]  # ticks "3D objects": Z is named
    panel.run()
    settle(panel, seconds=1.0)
    viewer.layers["cells3d nuclei"].visible = False
    viewer.dims.ndisplay = 3
    viewer.reset_view()
    viewer.camera.angles = (-20, 35, 130)
    viewer.camera.zoom *= 0.85
    shot(viewer, "objects_3d.png")


def zarr_filling(viewer, widget, settle, shot) -> None:
    """A big multiscale layer segmented into a zarr folder, shot while it fills."""
    import shutil
    import tempfile

    import dask.array as da
    import numpy as np
    from bench_segmentation import mosaic

    image = mosaic(4096)
    levels = [da.from_array(image[::f, ::f], chunks=1024) for f in (1, 2, 4)]
    limits = tuple(float(v) for v in np.percentile(image[::8, ::8], [1, 99.8]))
    viewer.add_image(levels, name="HeLa mosaic", multiscale=True, contrast_limits=limits)
    panel = widget.segment_panel
    widget.show_tab(panel)
    panel.image.reset_choices()
    panel.image.value = viewer.layers["HeLa mosaic"]
    panel.to_zarr.value = True
    folder = Path(tempfile.mkdtemp())
    panel.zarr_path.value = folder / "mosaic_labels.zarr"
    worker = panel.run()
    done = []
    worker.yielded.connect(lambda p: done.append(p.done) if p.stage == "segment" else None)
    while not done or done[-1] < 2:
        settle(seconds=0.2)
    # Where four 2048 x 2048 chunks meet: the top two written, the bottom two to come.
    viewer.camera.center = (2048, 2048)
    viewer.camera.zoom = 0.45
    shot(viewer, "zarr_filling.png")
    settle(panel)
    shutil.rmtree(folder)


if __name__ == "__main__":
    main()
