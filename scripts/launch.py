"""Open napari with the U-Net Tuner docked, a sample image loaded and the default model selected.

.venv/bin/python scripts/launch.py                      # interactive
.venv/bin/python scripts/launch.py --sample bacteria
.venv/bin/python scripts/launch.py --screenshot out.png # segment, grab the window, quit
"""

from __future__ import annotations

import argparse
from pathlib import Path


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--sample", choices=["nuclei", "bacteria"], default="nuclei")
    parser.add_argument("--screenshot", type=Path, help="segment, save a window screenshot, quit")
    args = parser.parse_args()

    import napari
    from qtpy.QtCore import QTimer

    viewer = napari.Viewer(title="napari-unet-tuner")
    viewer.open_sample("napari-unet-tuner", args.sample)
    _, dock = viewer.window.add_plugin_dock_widget("napari-unet-tuner", "U-Net Tuner")
    if args.screenshot is None:
        napari.run()
        return
    widget = dock.wait_for_tuner()

    def grab_when_done() -> None:
        if widget.segment_panel.worker is not None:
            QTimer.singleShot(200, grab_when_done)
            return
        args.screenshot.parent.mkdir(parents=True, exist_ok=True)
        viewer.window._qt_window.grab().save(str(args.screenshot))
        viewer.close()

    viewer.window._qt_window.resize(1400, 900)
    widget.segment_panel.run()
    QTimer.singleShot(500, grab_when_done)
    napari.run()


if __name__ == "__main__":
    main()
