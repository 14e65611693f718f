"""Where the custom-op library lives, and ONNX Runtime sessions that have it registered."""
from __future__ import annotations

import os
import sys
import weakref
from importlib import metadata
from pathlib import Path

LIBRARY_ENV = "ONNXVQ_LIBRARY"
_LIBRARY_NAMES = {"linux": "libonnxvq_ops.so", "darwin": "libonnxvq_ops.dylib", "win32": "onnxvq_ops.dll"}


def _library_name() -> str:
    return _LIBRARY_NAMES.get(sys.platform, "libonnxvq_ops.so")


def _candidates():
    env = os.environ.get(LIBRARY_ENV)
    if env:
        yield Path(env)
        return  # an explicit choice is never silently replaced by another build
    name = _library_name()
    yield Path(__file__).resolve().parent / name  # installed wheel
    try:  # editable installs keep the library in site-packages, not next to the sources
        for f in metadata.distribution("onnxvq").files or ():
            if f.name == name:
                yield Path(f.locate()).resolve()
    except metadata.PackageNotFoundError:
        pass


def library_path() -> str:
    """Absolute path of the VQMatMul custom-op library."""
    tried = []
    for path in _candidates():
        if path.is_file():
            return str(path)
        tried.append(str(path))
    raise FileNotFoundError(
        "the onnxvq custom-op library was not found (looked at: " + ", ".join(tried)
        + f"). Install the package with `pip install .` or set {LIBRARY_ENV}."
    )


# Options that already carry the library: ORT refuses a session whose options registered the
# same domain twice ("Domain already set in registry"), so callers may reuse their options.
_REGISTERED = weakref.WeakSet()


def session_options(options=None):
    """``options`` (or new SessionOptions) with the VQMatMul library registered, once."""
    import onnxruntime as ort

    options = options or ort.SessionOptions()
    if options not in _REGISTERED:
        options.register_custom_ops_library(library_path())
        _REGISTERED.add(options)
    return options


def session(path_or_bytes, sess_options=None, providers=None, **kwargs):
    """An onnxruntime.InferenceSession with the VQMatMul library registered."""
    import onnxruntime as ort

    if isinstance(path_or_bytes, os.PathLike):
        path_or_bytes = os.fspath(path_or_bytes)
    return ort.InferenceSession(path_or_bytes, sess_options=session_options(sess_options),
                                providers=providers or ["CPUExecutionProvider"], **kwargs)
