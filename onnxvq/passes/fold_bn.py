"""Fold a BatchNormalization that directly follows a Conv / ConvTranspose into its weight and bias.

Exporters usually fold these; when one did not, the codes must quantize the weight the model
really uses (W * gamma / sqrt(var + eps)), not the unscaled one. ONNX Runtime performs the same
fusion at session creation, so outputs match to float rounding.
"""
from __future__ import annotations

from collections import Counter

import numpy as np
import onnx
from onnx import numpy_helper

from .names import NameAllocator
from .sites import _scope_with, attr, walk_graphs

_CONV_TYPES = ("Conv", "ConvTranspose")


def fold_batchnorm(model: onnx.ModelProto) -> list[tuple[str, str]]:
    """Fold every eligible Conv -> BatchNormalization pair in place; returns (conv, bn) node names."""
    names = NameAllocator(model)
    folded = []
    for graph, _ in list(walk_graphs(model.graph)):
        folded += _fold_graph(graph, names)
    return folded


def _fold_graph(graph: onnx.GraphProto, names: NameAllocator) -> list[tuple[str, str]]:
    scope = _scope_with(graph, {})
    readers = Counter(i for n in graph.node for i in n.input)
    for n in graph.node:  # names read inside subgraphs count as readers too
        for a in n.attribute:
            for sub in ([a.g] if a.type == onnx.AttributeProto.GRAPH else list(a.graphs)):
                for g, _ in walk_graphs(sub):
                    readers.update(i for m in g.node for i in m.input)
    graph_outputs = {o.name for o in graph.output}
    producer = {o: n for n in graph.node for o in n.output}
    done, drop, replaced = [], set(), set()
    for bn in graph.node:
        if bn.op_type != "BatchNormalization" or bn.domain not in ("", "ai.onnx"):
            continue
        if len(bn.input) != 5 or len(bn.output) != 1 or attr(bn, "training_mode", 0):
            continue
        conv = producer.get(bn.input[0])
        if conv is None or conv.op_type not in _CONV_TYPES or conv.domain not in ("", "ai.onnx"):
            continue
        if readers[conv.output[0]] != 1 or conv.output[0] in graph_outputs or len(conv.input) < 2:
            continue
        params = [scope.get(name) for name in bn.input[1:]]
        weight = scope.get(conv.input[1])
        bias = scope.get(conv.input[2]) if len(conv.input) > 2 and conv.input[2] else None
        if weight is None or any(p is None for p in params) or (len(conv.input) > 2 and conv.input[2] and bias is None):
            continue
        if weight.tensor.data_type != onnx.TensorProto.FLOAT or readers[weight.name] != 1 \
                or (bias is not None and readers[bias.name] != 1):
            continue
        w = weight.array().astype(np.float64)
        gamma, beta, mean, var = (p.array().astype(np.float64).reshape(-1) for p in params)
        group = int(attr(conv, "group", 1))
        channels = w.shape[1] * group if conv.op_type == "ConvTranspose" else w.shape[0]
        if any(v.size != channels for v in (gamma, beta, mean, var)) or w.ndim < 3:
            continue
        b = bias.array().astype(np.float64).reshape(-1) if bias is not None else np.zeros(channels)
        if b.size != channels:
            continue
        scale = gamma / np.sqrt(var + float(attr(bn, "epsilon", 1e-5)))
        if not np.isfinite(scale).all():
            continue
        w = w * _scale_for_weight(scale, w.shape, conv.op_type, group)
        new_w = names.new(f"{weight.name}.bn_folded")
        new_b = names.new(f"{conv.name or conv.output[0]}.bn_folded_bias")
        graph.initializer.extend([numpy_helper.from_array(w.astype(np.float32), new_w),
                                  numpy_helper.from_array(((b - mean) * scale + beta).astype(np.float32), new_b)])
        inputs = [conv.input[0], new_w, new_b]
        del conv.input[:]
        conv.input.extend(inputs)
        conv.output[0] = bn.output[0]
        drop.add(id(bn))
        replaced.update([weight.name, *([bias.name] if bias is not None else []), *bn.input[1:]])
        done.append((conv.name, bn.name))
    if drop:
        kept = [n for n in graph.node if id(n) not in drop]
        del graph.node[:]
        graph.node.extend(kept)
        _drop_unread(graph, replaced)
    return done


def _scale_for_weight(scale: np.ndarray, shape: tuple, op_type: str, group: int) -> np.ndarray:
    """Per-output-channel scale broadcast over the weight."""
    if op_type == "Conv":
        return scale.reshape(-1, *([1] * (len(shape) - 1)))
    # ConvTranspose [Cin, Cout/g, *k]: input channel ci of group ci // (Cin/g) feeds outputs
    # g * Cout/g + j for j < Cout/g.
    cin, cout_g = shape[0], shape[1]
    per_group = scale.reshape(group, cout_g)
    return np.repeat(per_group, cin // group, axis=0).reshape(cin, cout_g, *([1] * (len(shape) - 2)))


def _drop_unread(graph: onnx.GraphProto, candidates: set[str]) -> None:
    """Remove the replaced weights / BN parameters (initializers or Constant nodes) nothing reads now."""
    read = {o.name for o in graph.output}
    for g, _ in walk_graphs(graph):
        for n in g.node:
            read.update(n.input)
    gone = candidates - read
    if not gone:
        return
    kept_init = [t for t in graph.initializer if t.name not in gone]
    del graph.initializer[:]
    graph.initializer.extend(kept_init)
    kept_inputs = [i for i in graph.input if i.name not in gone]  # old IR lists initializers as inputs
    del graph.input[:]
    graph.input.extend(kept_inputs)
    kept_nodes = [n for n in graph.node if not (n.op_type == "Constant" and len(n.output) == 1 and n.output[0] in gone)]
    del graph.node[:]
    graph.node.extend(kept_nodes)
