#!/usr/bin/env bash
# Set up napari-unet-tuner on a fresh machine: the system libraries Qt and
# Xvfb need (Debian/Ubuntu, when run as root), a virtual environment in .venv,
# PyTorch (the CPU build unless an NVIDIA GPU is present) and the package.
#
#   bash scripts/setup.sh [EXTRAS]     EXTRAS defaults to "testing"
#
# A GPU user who wants a specific CUDA build installs it into .venv first,
# e.g. `.venv/bin/pip install torch --index-url https://download.pytorch.org/whl/cu128`;
# this script then keeps whatever torch is already there.
set -euo pipefail
cd "$(dirname "$0")/.."
extras="${1:-testing}"

system_packages=(xvfb xauth libgl1 libegl1 libxkbcommon-x11-0 libxcb-icccm4 libxcb-image0
  libxcb-keysyms1 libxcb-randr0 libxcb-render-util0 libxcb-xinerama0 libxcb-xfixes0
  libxcb-shape0 libxcb-cursor0 libdbus-1-3 libfontconfig1 libglib2.0-0)
if command -v apt-get >/dev/null && [ "$(id -u)" = 0 ]; then
  missing=()
  for pkg in "${system_packages[@]}"; do
    dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null | grep -q "install ok installed" || missing+=("$pkg")
  done
  if [ ${#missing[@]} -gt 0 ]; then
    echo "installing system packages: ${missing[*]}"
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${missing[@]}" >/dev/null
  fi
fi

[ -x .venv/bin/python ] || python3 -m venv .venv
pip=(.venv/bin/python -m pip install -q --disable-pip-version-check)

if ! .venv/bin/python -c "import torch" 2>/dev/null; then
  if command -v nvidia-smi >/dev/null && nvidia-smi -L >/dev/null 2>&1; then
    echo "NVIDIA GPU found: installing the CUDA build of torch"
    "${pip[@]}" torch
  elif local_wheel_dir=$(mktemp -d) \
    && .venv/bin/python -m pip download -q --no-index --no-deps "torch==2.13.0" -d "$local_wheel_dir" 2>/dev/null; then
    # A CPU wheel this machine keeps locally (pip's find-links): install that
    # very file, with its dependencies from the package index.
    echo "installing the local CPU build of torch 2.13.0"
    "${pip[@]}" "$local_wheel_dir"/torch-*.whl
  else
    echo "no GPU: installing the CPU build of torch"
    "${pip[@]}" torch --index-url https://download.pytorch.org/whl/cpu
  fi
fi

"${pip[@]}" -e ".[${extras}]" 2>&1 | grep -v "^WARNING: Location" || true
# OpenVINO runs the model faster on many CPUs (chosen by measurement); optional.
"${pip[@]}" "openvino>=2025.0" 2>&1 | grep -v "^WARNING: Location" || true
.venv/bin/python -c "import openvino" 2>/dev/null \
  || echo "OpenVINO has no wheel for this platform: torch runs the model"
.venv/bin/python -c "import torch, napari_unet_tuner; print('napari-unet-tuner', napari_unet_tuner.__version__, '| torch', torch.__version__, '| cuda', torch.cuda.is_available())"
