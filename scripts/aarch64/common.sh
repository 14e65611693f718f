# Shared helpers for the scripts in scripts/aarch64/ (sourced, not run).
#
# Everything downloaded lands in <repo>/.cache/ (ignored by git) so a second run skips it;
# everything built lands in <repo>/build/.

ONNXVQ_ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
readonly ONNXVQ_ROOT
readonly CACHE="$ONNXVQ_ROOT/.cache"
readonly VENV_PY="${ONNXVQ_PY:-$ONNXVQ_ROOT/.venv/bin/python}"

# The aarch64 system root of Debian's cross toolchain: libc, libstdc++ and ld-linux for qemu.
readonly AARCH64_SYSROOT=/usr/aarch64-linux-gnu
readonly QEMU_AARCH64="$CACHE/qemu/qemu-aarch64"
readonly ORT_AARCH64_DIR="$CACHE/onnxruntime-aarch64"
# A CPU with NEON (AdvSIMD), fp16 and dot product, like the common Arm cores in boards.
readonly QEMU_CPU="${ONNXVQ_QEMU_CPU:-neoverse-n1}"

die() { echo "${0##*/}: error: $*" >&2; exit 1; }
info() { echo "${0##*/}: $*" >&2; }

# Runs a command as root: directly in containers, through sudo on a desktop.
as_root() {
  if [[ $(id -u) -eq 0 ]]; then "$@"; else sudo "$@"; fi
}

# The first mirror in the system's apt sources that is not the security archive. No host
# name is written in this project: the machine's own configuration decides.
debian_mirror() {
  local sources="${ONNXVQ_APT_SOURCES:-/etc/apt/sources.list.d/debian.sources}"
  [[ -r "$sources" ]] || die "cannot read $sources (set ONNXVQ_APT_SOURCES to a deb822 sources file)"
  local mirror
  mirror="$(awk 'tolower($1) == "uris:" {
      for (i = 2; i <= NF; i++) if ($i !~ /security/) { print $i; exit } }' "$sources")"
  [[ -n "$mirror" ]] || die "no non-security 'URIs:' value in $sources"
  echo "$mirror"
}

# Downloads the .deb of PACKAGE from Debian SUITE into DEST_DIR, with apt state kept in a
# private temp dir: the system's package lists, status and sources stay untouched.
# Usage: fetch_deb SUITE PACKAGE DEST_DIR
fetch_deb() {
  local suite="$1" package="$2" dest="$3"
  local keyring=/usr/share/keyrings/debian-archive-keyring.gpg
  [[ -r "$keyring" ]] || die "missing $keyring (install debian-archive-keyring)"
  local work
  work="$(mktemp -d "${TMPDIR:-/tmp}/onnxvq-apt.XXXXXX")"
  mkdir -p "$work/lists/partial" "$work/cache/archives/partial" "$work/etc" "$dest"
  printf 'Types: deb\nURIs: %s\nSuites: %s\nComponents: main\nSigned-By: %s\n' \
    "$(debian_mirror)" "$suite" "$keyring" > "$work/etc/$suite.sources"
  local apt_private=(
    -o "Dir::State::Lists=$work/lists" -o "Dir::State::status=/dev/null"
    -o "Dir::Cache=$work/cache" -o "Dir::Cache::pkgcache=" -o "Dir::Cache::srcpkgcache="
    -o "Dir::Etc::sourcelist=/dev/null" -o "Dir::Etc::sourceparts=$work/etc"
    -o "Dir::Etc::preferencesparts=/dev/null" -o "APT::Sandbox::User=root"
  )
  info "fetching $package from Debian $suite (private apt state in $work)"
  if ! apt-get -q "${apt_private[@]}" update >"$work/apt.log" 2>&1 ||
     ! (cd "$dest" && apt-get -q "${apt_private[@]}" download "$package") >>"$work/apt.log" 2>&1; then
    cat "$work/apt.log" >&2
    rm -rf "$work"
    die "could not download $package from $suite"
  fi
  rm -rf "$work"
}
