#!/usr/bin/env bash
# Installs what the aarch64 build and tests need, skipping whatever is already there:
#   1. Debian's cross compiler g++-aarch64-linux-gnu (apt-get, system-wide; needs root);
#   2. a static qemu-aarch64 from Debian trixie (qemu 10), extracted into .cache/qemu/.
#      Bookworm's qemu 7.2 segfaults inside onnxruntime's start-up, so it is not used;
#   3. the aarch64 onnxruntime library from the PyPI wheel of the same version as the x86
#      venv's, into .cache/onnxruntime-aarch64/lib/ (the runner's CMake adds the SONAME link).
# Usage: bash scripts/aarch64/setup.sh
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/common.sh"

ensure_cross_compiler() {
  command -v aarch64-linux-gnu-g++ >/dev/null && return
  info "installing g++-aarch64-linux-gnu (apt-get)"
  as_root apt-get update -q >/dev/null
  as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends \
    g++-aarch64-linux-gnu >/dev/null
  command -v aarch64-linux-gnu-g++ >/dev/null || die "aarch64-linux-gnu-g++ still missing after apt-get"
}

ensure_qemu() {
  [[ -x "$QEMU_AARCH64" ]] && return
  local work
  work="$(mktemp -d "${TMPDIR:-/tmp}/onnxvq-qemu.XXXXXX")"
  fetch_deb trixie qemu-user "$work"
  local debs=("$work"/qemu-user_*.deb)
  [[ -f "${debs[0]}" ]] || die "no qemu-user .deb downloaded"
  # Only the one binary: the package also holds every other target and binfmt files.
  # `file` (if installed) confirms it is static: it must not need the host's libraries.
  dpkg-deb --fsys-tarfile "${debs[0]}" | tar -x -C "$work" ./usr/bin/qemu-aarch64
  local file_type
  file_type="$(file -b "$work/usr/bin/qemu-aarch64" 2>/dev/null || true)"
  [[ -z "$file_type" || "$file_type" == *static* ]] ||
    die "trixie's qemu-aarch64 is not statically linked ($file_type)"
  mkdir -p "$(dirname "$QEMU_AARCH64")"
  mv "$work/usr/bin/qemu-aarch64" "$QEMU_AARCH64"
  rm -rf "$work"
  info "qemu: $("$QEMU_AARCH64" --version | head -1)"
}

# The onnxruntime version of the x86 venv, so both architectures run the same release.
x86_onnxruntime_version() {
  [[ -x "$VENV_PY" ]] || die "$VENV_PY missing: run 'make install' first"
  "$VENV_PY" -c 'import onnxruntime; print(onnxruntime.__version__)'
}

ensure_onnxruntime_aarch64() {
  local version
  version="$(x86_onnxruntime_version)"
  [[ -f "$ORT_AARCH64_DIR/lib/libonnxruntime.so.$version" ]] && return
  info "downloading the aarch64 onnxruntime $version wheel"
  local work
  work="$(mktemp -d "${TMPDIR:-/tmp}/onnxvq-ort.XXXXXX")"
  "$VENV_PY" -m pip download -q --no-deps --only-binary=:all: \
    --platform manylinux_2_28_aarch64 --python-version 3.11 "onnxruntime==$version" -d "$work"
  local wheels=("$work"/onnxruntime-*.whl)
  [[ -f "${wheels[0]}" ]] || die "pip download produced no wheel"
  # The C API lives in capi/libonnxruntime.so.<version>; the Python module is not needed.
  "$VENV_PY" - "${wheels[0]}" "$work/lib" <<'PY'
import sys, zipfile, pathlib
wheel, out = sys.argv[1], pathlib.Path(sys.argv[2])
out.mkdir(parents=True)
with zipfile.ZipFile(wheel) as z:
    names = [n for n in z.namelist() if "/capi/libonnxruntime.so." in n]
    if not names:
        sys.exit(f"{wheel} has no capi/libonnxruntime.so.*")
    for name in names:
        (out / pathlib.PurePosixPath(name).name).write_bytes(z.read(name))
PY
  rm -rf "$ORT_AARCH64_DIR"
  mkdir -p "$ORT_AARCH64_DIR"
  mv "$work/lib" "$ORT_AARCH64_DIR/lib"
  rm -rf "$work"
  info "aarch64 onnxruntime $version in $ORT_AARCH64_DIR/lib"
}

ensure_cross_compiler
ensure_qemu
ensure_onnxruntime_aarch64
