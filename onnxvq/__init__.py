"""onnxvq: compress the dense layers of ONNX models with vector quantization."""
from .runtime import library_path, session, session_options

__version__ = "0.1.0"
__all__ = ["library_path", "session", "session_options", "__version__"]
