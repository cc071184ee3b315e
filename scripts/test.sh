#!/usr/bin/env bash
# Set everything up, check the architecture rules, and run the test suite.
#   bash scripts/test.sh [PYTEST ARGS]
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh testing
.venv/bin/lint-imports
.venv/bin/ruff check src tests
# pytest-xvfb starts a virtual display for the widget tests.
.venv/bin/python -m pytest "$@"
