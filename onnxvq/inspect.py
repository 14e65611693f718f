"""What a model holds: candidate layers, weight bytes, and sizes of already-compressed layers."""
from __future__ import annotations

import onnx

from .errors import InvalidModel
from .ops.schema import DOMAIN, OP_TYPE, VQLayout
from .passes.sites import find_sites, walk_graphs


def _tensor_bytes(t: onnx.TensorProto) -> int:
    """Bytes the tensor declares (dims x element size); Python ints, so huge dims cannot wrap."""
    count = 1
    for d in t.dims:
        if d < 0:
            raise InvalidModel(f"tensor {t.name!r} declares negative dims {list(t.dims)}")
        count *= d
    try:
        itemsize = onnx.helper.tensor_dtype_to_np_dtype(t.data_type).itemsize
    except (KeyError, ValueError, TypeError):
        raise InvalidModel(f"tensor {t.name!r} has unknown data type {t.data_type}") from None
    return count * itemsize


def initializer_bytes(model: onnx.ModelProto) -> int:
    """Bytes of tensor data held by the model's initializers, in every graph."""
    return sum(_tensor_bytes(t) for g, _ in walk_graphs(model.graph) for t in g.initializer)


def inventory(model: onnx.ModelProto) -> dict:
    scan = find_sites(model)
    total = initializer_bytes(model)
    layers, seen, dense = [], set(), 0
    for s in scan.sites:
        layers.append({"name": s.display_name, "op_type": s.op_type, "graph": s.graph_path, "weight": s.weight.name,
                       "in_features": s.in_features, "out_features": s.out_features, "elements": s.elements})
        if s.weight_key not in seen:
            seen.add(s.weight_key)
            dense += s.elements * 4
    for s in scan.skipped:
        layers.append({"name": s.display_name, "op_type": s.op_type, "graph": s.graph_path, "weight": s.weight_name,
                       "in_features": 0, "out_features": 0, "elements": s.elements, "skipped_reason": s.reason})
    rest = total - dense
    return {"layers": layers, "total_weight_bytes": total, "dense_weight_bytes": dense,
            "dense_share": dense / total if total else 0.0,
            "max_file_ratio": total / rest if rest > 0 else None}


def size_by_layer(model: onnx.ModelProto) -> list[dict]:
    """Bytes of each VQMatMul node's codes and codebooks in a compressed model."""
    inits = {t.name: t for g, _ in walk_graphs(model.graph) for t in g.initializer}
    rows, counted = [], set()
    for graph, _ in walk_graphs(model.graph):
        for node in graph.node:
            if node.domain != DOMAIN or node.op_type != OP_TYPE:
                continue
            attrs = {a.name: onnx.helper.get_attribute_value(a) for a in node.attribute}
            try:
                layout = VQLayout.from_attributes(attrs)
            except ValueError:
                continue
            codes, books = node.input[1], node.input[2]
            first = codes not in counted
            counted.add(codes)
            code_bytes = _tensor_bytes(inits[codes]) if first and codes in inits else 0
            book_bytes = _tensor_bytes(inits[books]) if first and books in inits else 0
            original = layout.in_features * layout.out_features * 4 if first else 0
            total = code_bytes + book_bytes
            rows.append({"name": node.name, "code_bytes": code_bytes, "codebook_bytes": book_bytes,
                         "compressed_bytes": total, "original_bytes": original,
                         "ratio": original / total if total else 0.0})
    return rows
