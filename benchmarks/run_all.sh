#!/usr/bin/env bash
# Run every benchmark on this machine and regenerate BENCHMARKS.md and the plots
# (about 110 minutes on 2 cores). bench_chunked.py (hours at its full size) is run
# on its own: see its docstring.
set -euo pipefail
cd "$(dirname "$0")"
py=../.venv/bin/python
$py bench_quality.py
$py bench_stack_finetune.py
$py bench_segmentation.py
$py bench_corrections.py
$py bench_review.py
$py bench_review_signals.py
$py bench_finetune.py
$py bench_peer.py
$py bench_architecture.py
$py bench_stack.py --memory
xvfb-run -a -s "-screen 0 1600x1000x24" $py bench_responsiveness.py
$py report.py
