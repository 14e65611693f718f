"""Fold a MatMul's bias Add into the VQMatMul that replaced it.

Exported transformers write a linear layer as ``MatMul(X, W) -> Add(., b)``. Left as two nodes, the
Add reads and writes the whole output once more (at MiniLM's batch 32, 1152 x 1536 floats per FFN
layer) and ONNX Runtime cannot fuse it with what follows (Add + Gelu -> BiasGelu). VQMatMul takes
an optional bias ``[N]`` added as the last step of each output, ``y = acc + bias[n]``: the same one
float add the Add node does, so the fused node gives the same bits.

Fused only when nothing else can tell: the op's output has exactly one reader in the whole model
(subgraphs included), that reader is a default-domain Add in the same graph, its other input is a
float32 constant of shape [N] defined in that graph and not also a graph input (an input a caller
could feed with another shape, where broadcasting would change the output), and the op's output is no
graph output. The Add's output name is kept.
"""
from __future__ import annotations

import onnx
from onnx import numpy_helper

from ..ops.schema import DOMAIN, OP_TYPE
from .sites import walk_graphs


def fuse_bias_adds(model: onnx.ModelProto) -> int:
    """Fold every eligible Add into its VQMatMul, in place; returns how many were folded."""
    graphs = [graph for graph, _ in walk_graphs(model.graph)]
    readers: dict[str, list[tuple[int, int]]] = {}  # name -> (graph index, node index) of each reader
    graph_outputs: set[str] = set()
    for g, graph in enumerate(graphs):
        graph_outputs.update(o.name for o in graph.output)
        for i, node in enumerate(graph.node):
            for name in node.input:
                readers.setdefault(name, []).append((g, i))
    fused = 0
    for g, graph in enumerate(graphs):
        constants = _bias_constants(graph)
        nodes = list(graph.node)
        removed: set[int] = set()
        for node in nodes:
            if node.domain != DOMAIN or node.op_type != OP_TYPE or (len(node.input) > 3 and node.input[3]):
                continue
            out = node.output[0]
            users = readers.get(out, [])
            if out in graph_outputs or len(users) != 1 or users[0][0] != g:
                continue
            add = nodes[users[0][1]]
            if add.op_type != "Add" or add.domain not in ("", "ai.onnx") or len(add.input) != 2:
                continue
            other = add.input[1] if add.input[0] == out else add.input[0]
            if other == out or constants.get(other) != _out_features(node):
                continue
            del node.input[3:]
            node.input.append(other)
            node.output[0] = add.output[0]
            removed.add(users[0][1])
            fused += 1
        if removed:
            kept = [n for i, n in enumerate(nodes) if i not in removed]
            del graph.node[:]
            graph.node.extend(kept)
    return fused


def _bias_constants(graph: onnx.GraphProto) -> dict[str, int]:
    """Name -> length of this graph's float32 1-D constants (initializers and Constant nodes)."""
    tensors = {t.name: t for t in graph.initializer}
    for node in graph.node:
        if node.op_type == "Constant" and node.domain in ("", "ai.onnx") and len(node.output) == 1:
            for a in node.attribute:
                if a.name == "value" and a.type == onnx.AttributeProto.TENSOR:
                    tensors[node.output[0]] = a.t
    overridable = {i.name for i in graph.input}  # an initializer listed as an input is only a default
    lengths = {}
    for name, tensor in tensors.items():
        if name in overridable:
            continue
        if tensor.data_type == onnx.TensorProto.FLOAT and len(tensor.dims) == 1 \
                and tensor.data_location != onnx.TensorProto.EXTERNAL:
            try:
                size = numpy_helper.to_array(tensor).size
            except Exception:  # noqa: BLE001 - corrupt data: not a bias to fold (the checker reports it)
                continue
            if size == tensor.dims[0]:
                lengths[name] = int(tensor.dims[0])
    return lengths


def _out_features(node: onnx.NodeProto) -> int | None:
    for a in node.attribute:
        if a.name == "out_features":
            return int(a.i)
    return None
