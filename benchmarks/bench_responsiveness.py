"""Longest event-loop stall in napari while the widget segments and fine-tunes.

    xvfb-run -a .venv/bin/python benchmarks/bench_responsiveness.py [--repeats 3] [--why]

A 10 ms Qt timer runs in the GUI thread; the longest gap between two of its
ticks is how long the viewer was frozen. Measured on the bundled samples with
the default model, each in a fresh napari session: docking the widget
(it imports torch in the background, then shows its panels) and pressing
Segment as soon as it shows, counted from before the docking; and docking,
segmenting, segmenting again, then fine-tuning on painted scribbles with the
live preview on, then painting bursts of strokes for 20 s with *Learn as I
correct* on. Side by side: a quiet machine, then one where two other
processes keep both cores busy; each kind of session ``--repeats`` times,
in turn (the table gives the median longest stall, the JSON every one).
The first segmentation of a session includes napari's first ``add_labels``
(vispy set-up inside napari); later runs update the layer in place.
Python's full garbage collections are counted: they hold the GIL, so the
GUI thread waits whichever thread runs them. With ``--why`` a watchdog
thread samples where the GUI thread is while it is frozen for more than
50 ms and prints the most frequent places. Writes results/responsiveness.json.
"""

from __future__ import annotations

import argparse
import collections
import gc
import json
import subprocess
import sys
import threading
import time
import traceback
from pathlib import Path

import numpy as np

import datasets

RESULTS = Path(__file__).parent / "results"


class StallMeter:
    def __init__(self):
        from qtpy.QtCore import QTimer

        self.last = time.perf_counter()
        self.gaps: list[float] = []
        # Python's full (generation 2) garbage collections hold the GIL for the
        # whole scan of every tracked object: the GUI thread waits, whichever
        # thread triggered them.
        self.full_collections: list[float] = []
        self._collection_start = 0.0
        gc.callbacks.append(self._on_collection)
        self.timer = QTimer()
        self.timer.setInterval(10)
        self.timer.timeout.connect(self._tick)
        self.timer.start()

    def _tick(self):
        now = time.perf_counter()
        self.gaps.append(now - self.last)
        self.last = now

    def _on_collection(self, phase: str, info: dict) -> None:
        if info["generation"] != 2:
            return
        if phase == "start":
            self._collection_start = time.perf_counter()
        else:
            self.full_collections.append(time.perf_counter() - self._collection_start)

    def watch(self, places: collections.Counter) -> None:
        """Sample the GUI thread's stack into ``places`` whenever it is frozen over 50 ms."""
        gui = threading.main_thread().ident

        def run():
            while self.timer.isActive():
                time.sleep(0.01)
                if time.perf_counter() - self.last > 0.05:
                    frame = sys._current_frames().get(gui)
                    if frame is not None:
                        stack = traceback.extract_stack(frame)[-12:]
                        places[
                            " < ".join(
                                f"{Path(f.filename).name}:{f.name}" for f in reversed(stack)
                            )
                        ] += 1

        threading.Thread(target=run, daemon=True).start()

    def stop(self) -> dict:
        self.timer.stop()
        gc.callbacks.remove(self._on_collection)
        gaps = np.array(self.gaps[1:]) * 1000
        return {
            "longest_ms": round(float(gaps.max()), 1),
            "p99_ms": round(float(np.percentile(gaps, 99)), 1),
            "ticks": len(gaps),
            "full_collections": len(self.full_collections),
            "longest_collection_ms": round(1000 * max(self.full_collections, default=0.0), 1),
        }


def _burn_cpus(count: int = 2) -> list:
    """Start ``count`` processes that spin a core each (another job on the machine)."""
    return [subprocess.Popen([sys.executable, "-c", "while True: pass"]) for _ in range(count)]


def one_session(load: str, why: bool, press: str) -> dict:
    """Dock the widget in a new viewer and time its stalls under ``load``.

    ``press`` is when the user presses Segment: ``"at_once"`` (while the
    widget still imports torch in the background) or ``"when_ready"``.
    """
    import napari
    from qtpy.QtWidgets import QApplication

    burners = _burn_cpus() if load == "busy" else []
    try:
        viewer = napari.Viewer(show=True)
        viewer.open_sample("napari-unet-tuner", "bacteria")
        app = QApplication.instance()
        for _ in range(20):
            app.processEvents()
        rows: dict = {}

        def frozen_at(places: collections.Counter) -> list:
            return [{"samples": n, "stack": place} for place, n in places.most_common(8)]

        # Counted from before docking: napari builds the dock widget on the GUI
        # thread, so a slow one freezes the viewer before anything shows.
        opening, opening_places = StallMeter(), collections.Counter()
        if why:
            opening.watch(opening_places)
        while len(opening.gaps) < 5:
            app.processEvents()
            time.sleep(0.002)
        # As in a user's session: nothing has imported torch before the docking.
        assert "torch" not in sys.modules, "the benchmark imported torch before docking"
        _, dock = viewer.window.add_plugin_dock_widget("napari-unet-tuner", "U-Net Tuner")
        widget = dock.wait_for_tuner()
        if press == "when_ready":
            rows["opening_the_widget"] = opening.stop()
            if why:
                rows["opening_the_widget"]["frozen_at"] = frozen_at(opening_places)

        def wait(panel):
            while panel.worker is not None:
                app.processEvents()
                time.sleep(0.002)
            # Let the results be shown and the timer tick once more, so a stall
            # while showing them is counted.
            end = time.perf_counter() + 0.3
            while time.perf_counter() < end:
                app.processEvents()
                time.sleep(0.002)

        def measure(name, panel, start):
            meter = StallMeter()
            places: collections.Counter = collections.Counter()
            if why:
                meter.watch(places)
            start()
            wait(panel)
            wait(widget.segment_panel)
            rows[name] = meter.stop()
            if why:
                rows[name]["frozen_at"] = frozen_at(places)

        if press == "at_once":
            # Segment pressed as soon as it shows; the row covers the docking too.
            widget.segment_panel.run()
            wait(widget.segment_panel)
            rows["first_segmentation_at_once"] = opening.stop()
            if why:
                rows["first_segmentation_at_once"]["frozen_at"] = frozen_at(opening_places)
        else:
            measure(
                "first_segmentation_when_ready", widget.segment_panel, widget.segment_panel.run
            )
        if press == "when_ready":
            from painting import paint_scribbles  # imports the core, so torch: not before

            _, masks = datasets.bacteria()
            # Again: the result now updates the existing layer in place.
            measure("segmentation_again", widget.segment_panel, widget.segment_panel.run)
            layer = widget.annotate_panel.make_scribble_layer()
            layer.data = paint_scribbles([masks[19]], n_objects=10, seed=0)[0]
            widget.train_panel.seconds.value = 30
            measure("fine_tuning_with_preview", widget.train_panel, widget.train_panel.run)
            measure(
                "painting_while_learning",
                widget.train_panel.live,
                lambda: paint_while_learning(widget, layer, masks[19], app),
            )
        viewer.close()
    finally:
        for burner in burners:
            burner.kill()
    return rows


def paint_while_learning(widget, layer, mask, app, bursts: int = 8) -> None:
    """With *Learn as I correct* on, bursts of 3 brush strokes 0.3 s apart, 2 s pauses; then off.

    Each burst is picked up (one copy of the layer) in the pause after it;
    training and the live previews run all along.
    """

    def pump(seconds: float) -> None:
        end = time.perf_counter() + seconds
        while time.perf_counter() < end:
            app.processEvents()
            time.sleep(0.002)

    live = widget.train_panel.live
    live.toggle.value = True
    rng = np.random.default_rng(0)
    ys, xs = np.nonzero(mask)
    layer.brush_size = 6
    label = int(layer.data.max()) + 1
    for _ in range(bursts):
        for _ in range(3):
            i = rng.integers(len(ys))
            layer.paint((int(ys[i]), int(xs[i])), label)
            label += 1
            pump(0.3)
        pump(2.0)
    live.toggle.value = False


def _summary(runs: list[dict]) -> dict:
    """One row from repeated sessions: the median longest stall, and every session's."""
    longest = [r["longest_ms"] for r in runs]
    return {
        "longest_ms": round(float(np.median(longest)), 1),
        "longest_ms_runs": longest,
        "p99_ms": round(float(np.median([r["p99_ms"] for r in runs])), 1),
        "full_collections": max(r["full_collections"] for r in runs),
        "longest_collection_ms": max(r["longest_collection_ms"] for r in runs),
        **({"frozen_at": runs[-1]["frozen_at"]} if "frozen_at" in runs[-1] else {}),
    }


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--why", action="store_true", help="sample the GUI thread when frozen")
    parser.add_argument("--repeats", type=int, default=3, help="sessions of each kind")
    parser.add_argument("--load", choices=["quiet", "busy"], help=argparse.SUPPRESS)
    parser.add_argument("--press", choices=["at_once", "when_ready"], help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.load:
        print(json.dumps(one_session(args.load, args.why, args.press)))
        return
    # Side by side, each load and moment in a fresh session, so each has its
    # first segmentation; sessions repeated in turn, as stalls vary run to run.
    sessions: dict = {load: collections.defaultdict(list) for load in ("quiet", "busy")}
    for _ in range(args.repeats):
        for load in sessions:
            for press in ("at_once", "when_ready"):
                command = [sys.executable, __file__, "--load", load, "--press", press]
                command += ["--why"] if args.why else []
                out = subprocess.run(command, check=True, capture_output=True, text=True).stdout
                for what, row in json.loads(out.strip().splitlines()[-1]).items():
                    sessions[load][what].append(row)
    report = {
        load: {what: _summary(runs) for what, runs in rows.items()}
        for load, rows in sessions.items()
    }
    RESULTS.mkdir(exist_ok=True)
    if not args.why:
        (RESULTS / "responsiveness.json").write_text(json.dumps(report, indent=2))
    print(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
