"""What a model holds: candidate layers of every kind, weight bytes, and sizes of compressed layers."""
from __future__ import annotations

import onnx

from .errors import InvalidModel
from .ops.schema import DOMAIN, GATHER_OP_TYPE, OP_TYPE, VQLayout
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


def _constant_node_tensors(model: onnx.ModelProto):
    for graph, _ in walk_graphs(model.graph):
        for node in graph.node:
            if node.op_type == "Constant" and node.domain in ("", "ai.onnx"):
                for a in node.attribute:
                    if a.name == "value" and a.type == onnx.AttributeProto.TENSOR:
                        yield a.t


def initializer_bytes(model: onnx.ModelProto) -> int:
    """Bytes of tensor data held by the model's initializers and Constant nodes, in every graph
    (paddle2onnx and some exporters keep every weight in Constant nodes)."""
    total = sum(_tensor_bytes(t) for g, _ in walk_graphs(model.graph) for t in g.initializer)
    return total + sum(_tensor_bytes(t) for t in _constant_node_tensors(model))


def inventory(model: onnx.ModelProto) -> dict:
    """Candidate layers of every site kind, their share of the weights and the best whole-file ratio."""
    scan = find_sites(model)
    total = initializer_bytes(model)
    layers, seen, dense = [], set(), 0
    by_op: dict[str, dict] = {}
    for s in scan.sites:
        layers.append({"name": s.display_name, "op_type": s.op_type, "graph": s.graph_path, "weight": s.weight.name,
                       "weight_shape": s.weight_shape, "in_features": s.in_features,
                       "out_features": s.out_features, "elements": s.elements, "weight_bytes": s.weight_bytes})
        entry = by_op.setdefault(s.op_type, {"layers": 0, "weight_bytes": 0})
        entry["layers"] += 1
        if s.weight_key not in seen:
            seen.add(s.weight_key)
            dense += s.weight_bytes
            entry["weight_bytes"] += s.weight_bytes
    for s in scan.skipped:
        layers.append({"name": s.display_name, "op_type": s.op_type, "graph": s.graph_path, "weight": s.weight_name,
                       "in_features": 0, "out_features": 0, "elements": s.elements, "skipped_reason": s.reason})
    for entry in by_op.values():
        entry["share"] = entry["weight_bytes"] / total if total else 0.0
    rest = total - dense
    return {"layers": layers, "total_weight_bytes": total, "dense_weight_bytes": dense,
            "candidate_weight_bytes": dense, "by_op_type": by_op,
            "dense_share": dense / total if total else 0.0,
            "max_file_ratio": total / rest if rest > 0 else None}


def size_by_layer(model: onnx.ModelProto) -> list[dict]:
    """Bytes of each VQMatMul / VQGather node's codes and codebooks in a compressed model, then of each
    standard-op decoder (Conv weights, --format portable), found by its ``<weight>.vq.codes`` constant."""
    inits = {t.name: t for g, _ in walk_graphs(model.graph) for t in g.initializer}
    rows, counted = [], set()
    for graph, _ in walk_graphs(model.graph):
        for node in graph.node:
            if node.domain != DOMAIN or node.op_type not in (OP_TYPE, GATHER_OP_TYPE):
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
    # Standard-op decoders (the file no longer says what the dense weight was: no original size).
    for graph, _ in walk_graphs(model.graph):
        for t in graph.initializer:
            if t.name.endswith(".vq.codes") and t.name not in counted:
                prefix = t.name[: -len("codes")]
                books = next((b for b in graph.initializer if b.name == prefix + "codebooks"), None)
                code_bytes = _tensor_bytes(t)
                book_bytes = _tensor_bytes(books) if books is not None else 0
                rows.append({"name": t.name[: -len(".vq.codes")], "code_bytes": code_bytes,
                             "codebook_bytes": book_bytes, "compressed_bytes": code_bytes + book_bytes,
                             "original_bytes": None, "ratio": None})
    return rows
