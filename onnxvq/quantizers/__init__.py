"""Quantizers, one module per method, each registered for its config type."""
from . import binary, kmeans, pq, svd  # noqa: F401  (importing registers them)
from .base import CodedWeight, LowRankWeight, quantize

__all__ = ["CodedWeight", "LowRankWeight", "quantize"]
