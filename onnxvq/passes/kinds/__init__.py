"""Site kinds: one module per op family, each registered here by importing it.

A kind knows which input of its op holds the constant weight, how that tensor reads as the
matrix W[K, N] the quantizers fit (and back), its shape rules, and how to rewrite the node.
The planner, the fitters, the size report and the config resolution know nothing of op types.
"""
from __future__ import annotations

import onnx

from .base import KINDS, SiteKind, register_kind
from . import matmul, conv, gather  # noqa: F401,E402  (importing registers them)

_BY_OP_TYPE = {op: kind for kind in KINDS for op in kind.op_types}


def kind_for(node: onnx.NodeProto) -> SiteKind | None:
    if node.domain not in ("", "ai.onnx"):
        return None
    return _BY_OP_TYPE.get(node.op_type)


def supported_op_types() -> list[str]:
    return [op for kind in KINDS for op in kind.op_types]


__all__ = ["KINDS", "SiteKind", "kind_for", "register_kind", "supported_op_types"]
