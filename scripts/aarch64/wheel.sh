#!/usr/bin/env bash
# Wheels of onnxvq (the Python package + the op library), built by scikit-build-core from
# pyproject.toml with the x86 venv's tools (no build isolation: nothing is downloaded).
#
#   bash scripts/aarch64/wheel.sh build x86_64     -> dist/onnxvq-<v>-py3-none-linux_x86_64.whl
#   bash scripts/aarch64/wheel.sh build aarch64    -> dist/onnxvq-<v>-py3-none-linux_aarch64.whl
#   bash scripts/aarch64/wheel.sh check x86_64     install it in a new venv outside the repo,
#                                                  compress + run a tiny model there
#   bash scripts/aarch64/wheel.sh check aarch64    the wheel's .so is aarch64 and, loaded by the
#                                                  aarch64 runner under qemu, matches x86
# The tags are linux_*, fine for local installs; PyPI needs manylinux (docs/DEPLOY.md).
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/common.sh"

readonly DIST="$ONNXVQ_ROOT/dist"
readonly ORT_INCLUDE="$ONNXVQ_ROOT/.cache/onnxruntime/include"

wheel_path() {
  local wheels=("$DIST"/onnxvq-*-linux_"$1".whl)
  [[ -f "${wheels[0]}" ]] || die "no dist/onnxvq-*-linux_$1.whl: run '$0 build $1' first"
  echo "${wheels[0]}"
}

build_wheel() {
  local arch="$1" cross=()
  case "$arch" in
    x86_64) ;;
    # scikit-build-core names the platform from _PYTHON_HOST_PLATFORM when it is set.
    aarch64) cross=(-C "cmake.define.CMAKE_TOOLCHAIN_FILE=$ONNXVQ_ROOT/cmake/aarch64-linux-gnu.cmake")
             export _PYTHON_HOST_PLATFORM=linux-aarch64 ;;
    *) die "unknown architecture '$arch' (x86_64 or aarch64)" ;;
  esac
  [[ -f "$ORT_INCLUDE/onnxruntime_cxx_api.h" ]] || bash "$ONNXVQ_ROOT/scripts/fetch_ort_headers.sh"
  rm -f "$DIST"/onnxvq-*-linux_"$arch".whl
  # A build dir of its own, apart from the editable install's build/<wheel tag>.
  "$VENV_PY" -m pip wheel -q --no-deps --no-build-isolation -w "$DIST" \
    -C "build-dir=$ONNXVQ_ROOT/build/wheel/$arch" \
    -C "cmake.define.ONNXRUNTIME_INCLUDE_DIR=$ORT_INCLUDE" "${cross[@]}" "$ONNXVQ_ROOT"
  local wheel
  wheel="$(wheel_path "$arch")"
  check_wheel_contents "$wheel" "$arch"
  info "built $wheel"
}

# The wheel must carry the op library, built for the wheel's architecture, and declare the
# `onnxvq` console script (the x86 smoke test also checks both once installed).
check_wheel_contents() {
  local wheel="$1" arch="$2" machine
  machine="$("$VENV_PY" - "$wheel" <<'PY'
import configparser, sys, zipfile
wheel = zipfile.ZipFile(sys.argv[1])
names = wheel.namelist()
if "onnxvq/libonnxvq_ops.so" not in names:
    sys.exit(f"{sys.argv[1]}: no onnxvq/libonnxvq_ops.so in the wheel")
entry_points = configparser.ConfigParser()
for name in names:
    if name.endswith(".dist-info/entry_points.txt"):
        entry_points.read_string(wheel.read(name).decode())
if entry_points.get("console_scripts", "onnxvq", fallback=None) != "onnxvq.cli:main":
    sys.exit(f"{sys.argv[1]}: declares no `onnxvq = onnxvq.cli:main` console script")
header = wheel.read("onnxvq/libonnxvq_ops.so")[:20]
machines = {62: "x86_64", 183: "aarch64"}  # ELF e_machine, little-endian at offset 18
print(machines.get(int.from_bytes(header[18:20], "little"), "unknown"))
PY
)" || die "$wheel is incomplete"
  [[ "$machine" == "$arch" ]] || die "$wheel: onnxvq/libonnxvq_ops.so is $machine, expected $arch"
  info "$(basename "$wheel"): onnxvq/libonnxvq_ops.so is an $machine library; console script onnxvq declared"
}

# A brand-new venv in /tmp: the wheel and its dependencies from the package index (pinned
# like the project's), then the smoke test run from that temp dir, away from the sources.
check_x86_64() {
  local wheel work
  wheel="$(wheel_path x86_64)"
  check_wheel_contents "$wheel" x86_64
  work="$(mktemp -d "${TMPDIR:-/tmp}/onnxvq-wheel-check.XXXXXX")"
  python3 -m venv "$work/venv"
  # --no-compile: the smoke test imports little; byte-compiling scipy & co. would cost more.
  "$work/venv/bin/python" -m pip install -q --no-compile --disable-pip-version-check \
    -c "$ONNXVQ_ROOT/constraints.txt" "$wheel"
  (cd "$work" && "$work/venv/bin/python" - < "$ONNXVQ_ROOT/scripts/aarch64/wheel_smoke.py")
  rm -rf "$work"
}

# No aarch64 Python here: load the wheel's library with the aarch64 runner under qemu and
# compare with the x86 library on a model compressed by the x86 package.
check_aarch64() {
  local wheel work
  wheel="$(wheel_path aarch64)"
  check_wheel_contents "$wheel" aarch64
  [[ -x "$ONNXVQ_ROOT/build/aarch64/runner/onnxvq_runner" && -x "$ONNXVQ_ROOT/build/x86_64/runner/onnxvq_runner" ]] \
    || bash "$ONNXVQ_ROOT/scripts/aarch64/build.sh" all
  work="$(mktemp -d "${TMPDIR:-/tmp}/onnxvq-wheel-check.XXXXXX")"
  "$VENV_PY" -m zipfile -e "$wheel" "$work/wheel"
  (cd "$work" && "$VENV_PY" - < "$ONNXVQ_ROOT/scripts/aarch64/wheel_smoke.py" --save-only)
  run_runner() {  # run_runner OUT_DIR COMMAND...
    local out="$1"; shift
    mkdir -p "$out"
    "$@" --model "$work/tiny.vq.onnx" --input "X=$work/x.npy" --output-dir "$out" --repeat 1 >"$out.log"
    info "$(basename "$out") runner: $(grep '^kernel:' "$out.log")"
  }
  run_runner "$work/arm" "$QEMU_AARCH64" -cpu "$QEMU_CPU" -L "$AARCH64_SYSROOT" \
    "$ONNXVQ_ROOT/build/aarch64/runner/onnxvq_runner" --ops-library "$work/wheel/onnxvq/libonnxvq_ops.so"
  run_runner "$work/x86" "$ONNXVQ_ROOT/build/x86_64/runner/onnxvq_runner" \
    --ops-library "$("$VENV_PY" -c 'import onnxvq; print(onnxvq.library_path())')"
  "$VENV_PY" - "$work/arm/Y.npy" "$work/x86/Y.npy" <<'PY'
import sys
import numpy as np
arm, x86 = (np.load(p) for p in sys.argv[1:3])
error = np.max(np.abs(arm - x86)) / max(1.0, np.max(np.abs(x86)))
print(f"aarch64 wheel library under qemu vs x86: shape {arm.shape}, max rel diff {error:.1e}")
sys.exit(0 if arm.shape == x86.shape and error <= 1e-5 else 1)
PY
  rm -rf "$work"
}

case "${1:-} ${2:-}" in
  "build x86_64"|"build aarch64") build_wheel "$2" ;;
  "check x86_64") check_x86_64 ;;
  "check aarch64") check_aarch64 ;;
  *) die "usage: $0 build|check x86_64|aarch64" ;;
esac
