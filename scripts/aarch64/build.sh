#!/usr/bin/env bash
# Builds, incrementally:
#   build/aarch64/ops     the top CMakeLists.txt cross-compiled (op library + C++ kernel tests),
#                         whatever kernel files it lists (the NEON table included);
#   build/aarch64/runner  the C++ runner against the aarch64 onnxruntime wheel's library;
#   build/x86_64/ops      the op library for this machine;
#   build/x86_64/runner   the C++ runner against the x86 venv's onnxruntime wheel.
# and, with `bundle`, a folder + tarball to copy to a device (runs from any directory):
#   build/bundle/onnxvq-runner-linux-<arch>/{bin/onnxvq_runner, lib/libonnxruntime.so.1, lib/libonnxvq_ops.so}
# Usage: bash scripts/aarch64/build.sh [all|aarch64|x86_64|bundle]   (default all)
# Needs: scripts/aarch64/setup.sh done (aarch64 parts) and the ORT headers in .cache/.
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/common.sh"

readonly TOOLCHAIN="$ONNXVQ_ROOT/cmake/aarch64-linux-gnu.cmake"
readonly ORT_INCLUDE="$ONNXVQ_ROOT/.cache/onnxruntime/include"

generator=()
command -v ninja >/dev/null && generator=(-G Ninja)

# configure_and_build SOURCE BUILD_DIR [cmake args...]. Configuring every time is cheap and
# picks up a changed onnxruntime (the venv's or the downloaded one) in the cached variables.
configure_and_build() {
  local source="$1" build="$2"
  shift 2
  local gen=()
  [[ -f "$build/CMakeCache.txt" ]] || gen=("${generator[@]}")  # the first choice sticks
  cmake -S "$source" -B "$build" "${gen[@]}" -DCMAKE_BUILD_TYPE=Release "$@" >"$build.configure.log" 2>&1 \
    || { cat "$build.configure.log" >&2; die "configuring $build failed"; }
  cmake --build "$build" --parallel >"$build.build.log" 2>&1 \
    || { cat "$build.build.log" >&2; die "building $build failed"; }
  info "built $build"
}

# newest_file GLOB...: the last match in version order, or nothing.
newest_file() {
  ls -1 "$@" 2>/dev/null | sort -V | tail -1
}

build_aarch64() {
  local ort_lib
  ort_lib="$(newest_file "$ORT_AARCH64_DIR"/lib/libonnxruntime.so.*.*.*)"
  [[ -n "$ort_lib" ]] || die "no aarch64 onnxruntime in $ORT_AARCH64_DIR/lib: run scripts/aarch64/setup.sh"
  configure_and_build "$ONNXVQ_ROOT" "$ONNXVQ_ROOT/build/aarch64/ops" \
    -DCMAKE_TOOLCHAIN_FILE="$TOOLCHAIN" -DONNXVQ_BUILD_TESTS=ON \
    -DONNXRUNTIME_INCLUDE_DIR="$ORT_INCLUDE" -DCMAKE_EXPORT_COMPILE_COMMANDS=ON
  configure_and_build "$ONNXVQ_ROOT/custom_ops/runner" "$ONNXVQ_ROOT/build/aarch64/runner" \
    -DCMAKE_TOOLCHAIN_FILE="$TOOLCHAIN" -DONNXRUNTIME_INCLUDE_DIR="$ORT_INCLUDE" \
    -DONNXRUNTIME_LIBRARY="$ort_lib"
}

build_x86_64() {
  # The library of the onnxruntime wheel the venv's Python uses (and the tests compare with).
  local capi ort_lib
  capi="$("$VENV_PY" -c 'import onnxruntime, os; print(os.path.join(os.path.dirname(onnxruntime.__file__), "capi"))')"
  ort_lib="$(newest_file "$capi"/libonnxruntime.so.*.*.*)"
  [[ -n "$ort_lib" ]] || die "no libonnxruntime.so.<version> in $capi"
  configure_and_build "$ONNXVQ_ROOT" "$ONNXVQ_ROOT/build/x86_64/ops" -DONNXRUNTIME_INCLUDE_DIR="$ORT_INCLUDE"
  configure_and_build "$ONNXVQ_ROOT/custom_ops/runner" "$ONNXVQ_ROOT/build/x86_64/runner" \
    -DONNXRUNTIME_INCLUDE_DIR="$ORT_INCLUDE" -DONNXRUNTIME_LIBRARY="$ort_lib"
}

# The runner's install (binary + the onnxruntime it was linked with, found through
# RUNPATH $ORIGIN/../lib) plus the op library: everything a device needs but libstdc++/libc.
bundle() {
  local arch dir
  for arch in x86_64 aarch64; do
    dir="$ONNXVQ_ROOT/build/bundle/onnxvq-runner-linux-$arch"
    rm -rf "$dir" "$dir.tar.gz"
    cmake --install "$ONNXVQ_ROOT/build/$arch/runner" --prefix "$dir" >/dev/null
    cp "$ONNXVQ_ROOT/build/$arch/ops/libonnxvq_ops.so" "$dir/lib/"
    tar -C "$(dirname "$dir")" -czf "$dir.tar.gz" "$(basename "$dir")"
    info "bundled $dir.tar.gz"
  done
}

[[ -f "$ORT_INCLUDE/onnxruntime_cxx_api.h" ]] || bash "$ONNXVQ_ROOT/scripts/fetch_ort_headers.sh"
mkdir -p "$ONNXVQ_ROOT/build/aarch64" "$ONNXVQ_ROOT/build/x86_64"
case "${1:-all}" in
  all) build_aarch64; build_x86_64 ;;
  aarch64) build_aarch64 ;;
  x86_64) build_x86_64 ;;
  bundle) build_aarch64; build_x86_64; bundle ;;
  *) die "unknown target '$1' (all, aarch64, x86_64 or bundle)" ;;
esac
