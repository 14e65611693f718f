# `make bench`: VQMatMul vs ONNX Runtime's CPU MatMuls (fp32, int8 dynamic, MatMulNBits),
# side by side in one process; prints a markdown table, writes bench/results/kernels.json.
# BENCH_ARGS=--quick for a subset. MatMulNBitsQuantizer needs onnx-ir (installed here).
BENCH_ARGS ?=

.PHONY: bench
bench: $(INSTALLED)
	@$(PY) -c "import onnx_ir" 2>/dev/null || $(PIP) install --quiet onnx-ir
	$(PY) bench/kernels.py $(BENCH_ARGS)
