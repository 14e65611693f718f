# onnxvq: `make demo` and `make test` work on a fresh Debian 12 machine with python3, g++, cmake.
SHELL := /bin/bash
.DEFAULT_GOAL := help

PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
PIP := $(PY) -m pip
ORT_HEADERS := .cache/onnxruntime/include/onnxruntime_cxx_api.h
INSTALLED := $(VENV)/.onnxvq-installed
# The op library's sources (the runner, fuzz harness and C++ tests build on their own).
CPP_SOURCES := $(shell find custom_ops -type f \( -name '*.cc' -o -name '*.h' -o -name 'CMakeLists.txt' \) \
	-not -path 'custom_ops/runner/*' -not -path 'custom_ops/fuzz/*' 2>/dev/null)
PYTEST_ARGS ?=

.PHONY: help install demo test models clean headers

help:
	@echo "make demo     set up, fetch a real model, compress it, print the report"
	@echo "make test     set up and run the whole test suite"
	@echo "make install  create $(VENV) with onnxvq (editable) and the test dependencies"
	@echo "make models   fetch/build the real models and data of docs/RESULTS.md into models/cache/"
	@echo "make bench    kernel benchmark: our op vs ORT fp32, int8 and MatMulNBits (bench/kernels.py)"
	@echo "make test-aarch64  cross-build for aarch64 and run the kernel tests and runner under qemu"
	@echo "make wheel    build dist/onnxvq-*.whl and smoke-test it in a clean venv"
	@echo "make fuzz     sanitizer build + fuzzing of the op for a bounded time"
	@echo "make clean    remove build outputs (keeps downloaded caches)"

headers: $(ORT_HEADERS)

$(ORT_HEADERS):
	bash scripts/fetch_ort_headers.sh

$(VENV)/bin/python:
	$(PYTHON) -m venv $(VENV)
	$(PIP) install --quiet --upgrade pip

# Rebuilt when the build description or the C++ sources change.
$(INSTALLED): $(VENV)/bin/python $(ORT_HEADERS) pyproject.toml CMakeLists.txt constraints.txt $(CPP_SOURCES)
	$(PIP) install --quiet -c constraints.txt scikit-build-core
	$(PIP) install --quiet -c constraints.txt --no-build-isolation -e '.[test]'
	$(PY) -c "import onnxvq; print('onnxvq op library:', onnxvq.library_path())"
	touch $@

install: $(INSTALLED)

demo: $(INSTALLED)
	$(PY) models/fetch_demo.py
	$(VENV)/bin/onnxvq inspect models/cache/demo.onnx
	$(VENV)/bin/onnxvq compress models/cache/demo.onnx -o models/cache/demo.vq.onnx \
		--config models/demo_config.yaml --data models/cache/demo_inputs.npz --json models/cache/demo.report.json

# The real models of docs/RESULTS.md; torch lives in its own .venv-models, never in .venv.
models: $(INSTALLED)
	bash models/build_all.sh

test: $(INSTALLED)
	$(PY) -m pytest -q $(PYTEST_ARGS)

clean:
	rm -rf build dist *.egg-info $(INSTALLED)

# Targets of their own (bench, test-aarch64, wheel, fuzz) live in mk/*.mk.
-include $(wildcard mk/*.mk)
