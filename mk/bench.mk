# `make bench`: VQMatMul vs ONNX Runtime's CPU MatMuls (fp32, int8 dynamic, MatMulNBits),
# side by side in one process; prints a markdown table, writes bench/results/kernels.json.
# BENCH_ARGS=--quick for a subset.
BENCH_ARGS ?=

.PHONY: bench
bench: $(INSTALLED)
	$(PIP) install --quiet -c constraints.txt onnx-ir  # the `bench` extra: ORT's MatMulNBits quantizer imports it
	$(PY) bench/kernels.py $(BENCH_ARGS)
