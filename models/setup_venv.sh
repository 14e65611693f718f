#!/usr/bin/env bash
# Create the torch venv used by build_mnist.py, build_mobilenet.py and build_minilm.py (default .venv-models
# at the repository root). The core .venv is never touched.
# Usage: bash models/setup_venv.sh [VENV_DIR]
set -euo pipefail
cd "$(dirname "$0")/.."
venv="${1:-.venv-models}"
if [ ! -x "$venv/bin/python" ]; then
    python3 -m venv "$venv"
fi
"$venv/bin/python" -m pip install --disable-pip-version-check -q -r models/requirements-models.txt
"$venv/bin/python" -c 'import torch, onnx, PIL, onnxruntime; print("torch", torch.__version__, "ready in", __import__("sys").prefix)'
