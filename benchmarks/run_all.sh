#!/usr/bin/env bash
# Run every benchmark on this machine and regenerate BENCHMARKS.md.
set -euo pipefail
cd "$(dirname "$0")"
py=../.venv/bin/python
$py bench_quality.py
$py bench_segmentation.py
$py bench_finetune.py
xvfb-run -a -s "-screen 0 1600x1000x24" $py bench_responsiveness.py
$py report.py
