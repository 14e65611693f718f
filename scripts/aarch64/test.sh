#!/usr/bin/env bash
# `make test-aarch64`: install what is missing, cross-build, and run the aarch64 tests under
# qemu against the x86 builds and the numpy reference (scripts/aarch64/run_cases.py).
# Needs the x86 venv (.venv, `make install`). Prints `N passed, N failed`; exits 1 on failure.
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/common.sh"

start=$SECONDS
status=0
bash "$ONNXVQ_ROOT/scripts/aarch64/setup.sh"
bash "$ONNXVQ_ROOT/scripts/aarch64/build.sh" all
info "setup and builds: $((SECONDS - start)) s"

# -L: the aarch64 loader, libc and libstdc++ come from the cross toolchain's root.
"$VENV_PY" "$ONNXVQ_ROOT/scripts/aarch64/run_cases.py" \
  --qemu "$QEMU_AARCH64 -cpu $QEMU_CPU -L $AARCH64_SYSROOT" \
  --arm-build "$ONNXVQ_ROOT/build/aarch64/ops" \
  --arm-runner "$ONNXVQ_ROOT/build/aarch64/runner/onnxvq_runner" \
  --x86-runner "$ONNXVQ_ROOT/build/x86_64/runner/onnxvq_runner" \
  --work "$ONNXVQ_ROOT/build/aarch64/cases" \
  --kernel-test-cases "${ONNXVQ_TEST_CASES:-300}" || status=$?
info "total: $((SECONDS - start)) s"
exit $status
