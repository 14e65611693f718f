# `make bench`: the kernel matrix (bench/kernels.py: VQMatMul vs ONNX Runtime's fp32, int8
# dynamic and MatMulNBits MatMuls, side by side in one process, bench/results/kernels.json),
# then whole real models (bench/end_to_end.py: the MiniLM encoder and MobileNetV2, original
# vs every compression and vs ORT's quantizers; builds models/cache/ first, as `make models`).
# Between them, thread scaling (bench/threads.py: 1 vs 2 threads on 4096x4096 side by side).
# BENCH_ARGS go to bench/kernels.py (e.g. --quick), THREAD_ARGS to bench/threads.py, E2E_ARGS
# to bench/end_to_end.py.
BENCH_ARGS ?=
THREAD_ARGS ?=
E2E_ARGS ?=

.PHONY: bench
bench: $(INSTALLED)
	$(PIP) install --quiet -c constraints.txt onnx-ir  # the `bench` extra: ORT's MatMulNBits quantizer imports it
	$(PY) bench/kernels.py $(BENCH_ARGS)
	$(PY) bench/threads.py $(THREAD_ARGS)
	bash models/build_all.sh
	$(PY) bench/end_to_end.py $(E2E_ARGS)
