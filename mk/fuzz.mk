# Sanitizers + fuzzing (issue 8). See custom_ops/fuzz/README.md.
#
#   make fuzz        ASan+UBSan build of the library and its C++ tests, run the tests, then
#                    fuzz the op through onnxruntime for FUZZ_SECONDS (default 600 s).
#   make fuzz-ci     the same with a ~1 minute budget (FUZZ_CI_SECONDS=45 of fuzzing plus a
#                    leak-checked replay); fails on any finding.
#
# The fuzzer is libFuzzer when clang++ is available (installed with apt-get when missing and
# we may), else a seeded random/mutation driver built with g++. Findings are written to
# $(FUZZ_DIR)/findings/, the log of the last run to $(FUZZ_DIR)/fuzz.log.

FUZZ_SECONDS ?= 600
FUZZ_CI_SECONDS ?= 45
FUZZ_SEED ?= 1
FUZZ_CXX = $(shell command -v clang++ 2>/dev/null || command -v g++ 2>/dev/null)
FUZZ_DIR = build/fuzz-$(notdir $(FUZZ_CXX))
FUZZ_BIN = $(FUZZ_DIR)/fuzz_vq_matmul
FUZZ_ORT_LIB = $(shell $(PY) -c "import glob, os, onnxruntime; print(sorted(glob.glob(os.path.join(os.path.dirname(onnxruntime.__file__), 'capi', 'libonnxruntime.so*')))[-1])")
FUZZ_SUDO = $(shell [ "$$(id -u)" = 0 ] || command -v sudo 2>/dev/null)
# -detect_leaks=0 while fuzzing (a leak check per input stops the world), and no leak check
# at exit either (ASAN_OPTIONS below): clang 14's checker crashes ("Tracer caught signal 11")
# scanning a live thread's dynamic TLS of a dlopen'ed library, our op library in an ONNX Runtime
# worker, which ONNXVQ_FORCE_SCALAR=1 runs reach. fuzz-ci replays the corpus once with leak
# checks on, in the default configuration.
FUZZ_FLAGS = -max_len=512 -len_control=0 -detect_leaks=0 -print_final_stats=1 \
	-artifact_prefix=$(FUZZ_DIR)/findings/ -seed=$(FUZZ_SEED)
export ASAN_OPTIONS ?= abort_on_error=1:detect_stack_use_after_return=1:strict_string_checks=1
export UBSAN_OPTIONS ?= print_stacktrace=1:halt_on_error=1

.PHONY: fuzz fuzz-ci fuzz-build fuzz-toolchain fuzz-venv

fuzz-toolchain:
	@command -v clang++ >/dev/null 2>&1 || { \
	  echo "fuzz: clang++ not found; installing clang (libFuzzer) with apt-get"; \
	  { $(FUZZ_SUDO) apt-get update -qq && DEBIAN_FRONTEND=noninteractive $(FUZZ_SUDO) apt-get install -y -qq clang >/dev/null; } \
	  || echo "fuzz: could not install clang; using g++ with the standalone driver"; }
	@command -v clang++ >/dev/null 2>&1 || command -v g++ >/dev/null 2>&1 || { echo "fuzz: no C++ compiler"; exit 1; }

# Needs the venv's onnxruntime (its libonnxruntime.so), not a rebuild of the wheel: sets up
# the venv only on a machine where it has no onnxruntime yet. (A target of its own: make
# expands a recipe before running it, and FUZZ_ORT_LIB asks that venv.)
fuzz-venv:
	@$(PY) -c "import onnxruntime" 2>/dev/null || $(MAKE) install

fuzz-build: headers fuzz-toolchain fuzz-venv
	cmake -S custom_ops/fuzz -B $(FUZZ_DIR) -DCMAKE_CXX_COMPILER=$(FUZZ_CXX) \
		-DONNXRUNTIME_LIBRARY=$(FUZZ_ORT_LIB) >/dev/null
	cmake --build $(FUZZ_DIR) -j$$(nproc)
	@mkdir -p $(FUZZ_DIR)/corpus $(FUZZ_DIR)/findings

# $(1): seconds of fuzzing, split over the kernel configurations a deployment can pick:
# the best SIMD table for this CPU (60%), ONNXVQ_FORCE_SCALAR=1 (20%) and ONNXVQ_EXACT_LUT=1
# (20%, the exact-table path of format_version 2). The corpus is shared.
define fuzz_run
	ONNXVQ_TEST_CASES=$${ONNXVQ_TEST_CASES:-300} ctest --test-dir $(FUZZ_DIR)/onnxvq --output-on-failure
	@rm -f $(FUZZ_DIR)/fuzz.log
	set -o pipefail; for cfg in "default:60" "ONNXVQ_FORCE_SCALAR=1:20" "ONNXVQ_EXACT_LUT=1:20"; do \
	  var=$${cfg%:*}; share=$${cfg##*:}; secs=$$(( ($(1) * share + 99) / 100 )); \
	  echo "== fuzz: $$var for $$secs s" | tee -a $(FUZZ_DIR)/fuzz.log; \
	  env ASAN_OPTIONS=$$ASAN_OPTIONS:detect_leaks=0 $$( [ $$var = default ] || echo $$var ) $(FUZZ_BIN) $(FUZZ_FLAGS) -max_total_time=$$secs \
	    $(FUZZ_DIR)/corpus custom_ops/fuzz/seeds 2>&1 | grep -v -E '^#[0-9]+\s+(NEW|REDUCE|pulse)' | tee -a $(FUZZ_DIR)/fuzz.log \
	    || { echo "fuzz: FINDING under $$var (reproducer in $(FUZZ_DIR)/findings/)"; exit 1; }; \
	done
	@echo "== fuzz summary ($(FUZZ_DIR)/fuzz.log)"; grep -E '^(== fuzz:|Done|onnxvq fuzz:)' $(FUZZ_DIR)/fuzz.log
endef

fuzz: fuzz-build
	$(call fuzz_run,$(FUZZ_SECONDS))
	$(PY) scripts/fuzz_entropy.py --seconds $$(( $(FUZZ_SECONDS) / 10 ))

# The --entropy code stream is decoded by standard ops in ONNX Runtime, not by our kernels:
# scripts/fuzz_entropy.py feeds it crafted streams (child processes; a crash fails the target).
FUZZ_ENTROPY_SECONDS ?= 20

fuzz-ci: fuzz-build
	$(call fuzz_run,$(FUZZ_CI_SECONDS))
	$(PY) scripts/fuzz_entropy.py --seconds $(FUZZ_ENTROPY_SECONDS)
	rm -rf $(FUZZ_DIR)/corpus-leak && mkdir -p $(FUZZ_DIR)/corpus-leak
	set -o pipefail; ASAN_OPTIONS=detect_leaks=1 $(FUZZ_BIN) -runs=200 -detect_leaks=1 -max_len=512 -len_control=0 \
		-seed=1 -artifact_prefix=$(FUZZ_DIR)/findings/ $(FUZZ_DIR)/corpus-leak custom_ops/fuzz/seeds 2>&1 | tail -2
