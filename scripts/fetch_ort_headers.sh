#!/usr/bin/env bash
# Fetch the ONNX Runtime C/C++ headers (the PyPI wheel ships none) from Debian trixie's
# libonnxruntime-dev package and cache them in <repo>/.cache/onnxruntime/include/.
#
# apt runs with a private state directory in a temp dir: nothing on the system changes
# and no root-owned apt state is touched. The mirror is read from the system's apt
# sources; no host name is written down here.
#
# Usage: bash scripts/fetch_ort_headers.sh [--force]
# Environment:
#   ONNXVQ_APT_SOURCES  deb822 sources file to read the mirror from
#                       (default /etc/apt/sources.list.d/debian.sources)
set -euo pipefail

readonly PACKAGE=libonnxruntime-dev
readonly SUITE=trixie
readonly KEYRING=/usr/share/keyrings/debian-archive-keyring.gpg
readonly SOURCES_FILE="${ONNXVQ_APT_SOURCES:-/etc/apt/sources.list.d/debian.sources}"

repo_root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
readonly CACHE_DIR="$repo_root/.cache/onnxruntime/include"
readonly MARKER_HEADER=onnxruntime_cxx_api.h

die() { echo "fetch_ort_headers: error: $*" >&2; exit 1; }
info() { echo "fetch_ort_headers: $*" >&2; }

force=0
case "${1:-}" in
  "") ;;
  --force) force=1 ;;
  -h|--help) sed -n '2,12p' "${BASH_SOURCE[0]}"; exit 0 ;;
  *) die "unknown argument '$1' (expected --force)" ;;
esac

if [[ $force -eq 0 && -f "$CACHE_DIR/$MARKER_HEADER" ]]; then
  info "headers already cached in $CACHE_DIR (use --force to fetch again)"
  exit 0
fi

for tool in apt-get dpkg-deb; do
  command -v "$tool" >/dev/null || die "'$tool' not found; this script needs a Debian-based system"
done
[[ -r "$SOURCES_FILE" ]] || die "cannot read $SOURCES_FILE (set ONNXVQ_APT_SOURCES to a deb822 sources file)"
[[ -r "$KEYRING" ]] || die "missing $KEYRING (install the debian-archive-keyring package)"

# First URIs value that is not the security archive. A URIs line may hold several values.
mirror="$(awk '
  tolower($1) == "uris:" {
    for (i = 2; i <= NF; i++) if ($i !~ /security/) { print $i; exit }
  }' "$SOURCES_FILE")"
[[ -n "$mirror" ]] || die "no non-security 'URIs:' value found in $SOURCES_FILE"

work="$(mktemp -d "${TMPDIR:-/tmp}/onnxvq-ort-headers.XXXXXX")"
trap 'rm -rf "$work"' EXIT
mkdir -p "$work/lists/partial" "$work/cache/archives/partial" "$work/etc" "$work/download" "$work/extract"

cat > "$work/etc/$SUITE.sources" <<SOURCES
Types: deb
URIs: $mirror
Suites: $SUITE
Components: main
Signed-By: $KEYRING
SOURCES

apt_private=(
  -o "Dir::State::Lists=$work/lists"
  -o "Dir::State::status=/dev/null"
  -o "Dir::Cache=$work/cache"
  -o "Dir::Cache::pkgcache="
  -o "Dir::Cache::srcpkgcache="
  -o "Dir::Etc::sourcelist=/dev/null"
  -o "Dir::Etc::sourceparts=$work/etc"
  -o "Dir::Etc::preferencesparts=/dev/null"
  -o "APT::Sandbox::User=root"
)

info "reading the $SUITE package index from the system's mirror (private apt state in $work)"
apt-get -q "${apt_private[@]}" update >"$work/update.log" 2>&1 \
  || { cat "$work/update.log" >&2; die "apt-get update of the private $SUITE index failed"; }

info "downloading $PACKAGE"
(cd "$work/download" && apt-get -q "${apt_private[@]}" download "$PACKAGE") >"$work/download.log" 2>&1 \
  || { cat "$work/download.log" >&2; die "apt-get download $PACKAGE failed"; }

debs=("$work"/download/*.deb)
[[ -f "${debs[0]}" ]] || die "apt-get download produced no .deb"
dpkg-deb -x "${debs[0]}" "$work/extract"

src="$work/extract/usr/include/onnxruntime"
[[ -f "$src/$MARKER_HEADER" ]] || die "$(basename "${debs[0]}") has no usr/include/onnxruntime/$MARKER_HEADER"

# Copy into a sibling dir first, then swap, so an interrupted run never leaves half a cache.
staging="$CACHE_DIR.tmp.$$"
rm -rf "$staging"
mkdir -p "$(dirname "$CACHE_DIR")"
cp -r "$src" "$staging"
rm -rf "$CACHE_DIR"
mv "$staging" "$CACHE_DIR"

version="$(sed -n 's/^#define ORT_API_VERSION \([0-9]*\).*/\1/p' "$CACHE_DIR/onnxruntime_c_api.h")"
info "cached $(basename "${debs[0]}") headers (ORT_API_VERSION ${version:-unknown}) in $CACHE_DIR"
