#!/usr/bin/env bash
# The main job: set everything up, then run the most complete user path there is.
#   bash scripts/run.sh
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh all
.venv/bin/python scripts/demo.py
