#!/usr/bin/env bash
# The main job: set everything up, then open napari with the U-Net Tuner docked,
# the nuclei sample loaded and the default model selected.
#   bash scripts/run.sh [--sample bacteria]
# Without a display (a server, CI) it runs the same under a virtual display,
# segments the sample and saves a screenshot to demo/napari.png instead.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh all
if [ -n "${DISPLAY:-}${WAYLAND_DISPLAY:-}" ] || [ "$(uname)" = "Darwin" ]; then
  exec .venv/bin/python scripts/launch.py "$@"
fi
echo "no display: running under Xvfb and saving a screenshot to demo/napari.png"
xvfb-run -a -s "-screen 0 1600x1000x24" .venv/bin/python scripts/launch.py --screenshot demo/napari.png "$@"
echo "saved the screenshot: $(pwd)/demo/napari.png"
