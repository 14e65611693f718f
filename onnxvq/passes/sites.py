"""Find the Gemm/MatMul nodes whose weight is a constant, in the main graph and in every subgraph.

A *site* is one node we can rewrite, with its effective weight W[K, N] (transB and alpha
folded in) and bias. Nodes we cannot handle are returned as *skipped* with the reason, so
the report can list them.
"""
from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import onnx
from onnx import numpy_helper

from ..errors import InvalidModel

SUPPORTED_WEIGHT_DTYPES = {onnx.TensorProto.FLOAT}


@dataclass
class Constant:
    """A constant value visible in some scope: an initializer or a Constant node's output."""

    name: str
    tensor: onnx.TensorProto
    graph: onnx.GraphProto          # the graph that owns it
    constant_node: onnx.NodeProto | None = None  # set when it comes from a Constant node

    def array(self) -> np.ndarray:
        try:
            return numpy_helper.to_array(self.tensor)
        except Exception as exc:  # noqa: BLE001 - corrupt tensors become one clear line
            raise InvalidModel(f"tensor {self.name!r} cannot be read: {exc}") from None


@dataclass
class Site:
    graph: onnx.GraphProto
    node: onnx.NodeProto
    display_name: str
    graph_path: str
    weight: Constant
    shape: tuple[int, int]          # (K, N) of the effective weight
    bias: Constant | None           # the original C (Gemm) if any
    bias_array: np.ndarray | None   # effective bias [N] (beta applied), float32
    transposed: bool = False
    alpha: float = 1.0

    @property
    def op_type(self) -> str:
        return self.node.op_type

    @property
    def activation(self) -> str:
        return self.node.input[0]

    @property
    def weight_key(self) -> tuple:
        """Sites with equal keys share one encoding."""
        return (id(self.weight.graph), self.weight.name, self.transposed, self.alpha)

    @property
    def weight_array(self) -> np.ndarray:
        """Effective W[K, N] float32 (transB and alpha applied), built on each access.

        Not kept on the site: holding every layer's copy at once would multiply peak memory.
        """
        w = self.weight.array()
        w = w.T if self.transposed else w
        if self.alpha != 1.0:
            with np.errstate(over="ignore", invalid="ignore"):  # overflow becomes Inf: reported as such
                w = w * np.float32(self.alpha)
        return np.ascontiguousarray(w, dtype=np.float32)

    @property
    def elements(self) -> int:
        return self.shape[0] * self.shape[1]

    @property
    def in_features(self) -> int:
        return self.shape[0]

    @property
    def out_features(self) -> int:
        return self.shape[1]


@dataclass
class Skipped:
    display_name: str
    op_type: str
    graph_path: str
    reason: str
    weight_name: str | None = None
    elements: int = 0


@dataclass
class SiteScan:
    sites: list[Site] = field(default_factory=list)
    skipped: list[Skipped] = field(default_factory=list)


def display_name(node: onnx.NodeProto, index: int) -> str:
    return node.name or f"{node.op_type}_{index}({node.output[0] if node.output else ''})"


def _attr(node: onnx.NodeProto, name: str, default):
    for a in node.attribute:
        if a.name == name:
            return onnx.helper.get_attribute_value(a)
    return default


def _number_attr(node: onnx.NodeProto, node_name: str, name: str, default, kind: type):
    """An int/float attribute, or one clear InvalidModel when the model holds something else."""
    for a in node.attribute:
        if a.name != name:
            continue
        expected = onnx.AttributeProto.INT if kind is int else onnx.AttributeProto.FLOAT
        if a.type != expected and not (kind is float and a.type == onnx.AttributeProto.INT):
            got = onnx.AttributeProto.AttributeType.Name(a.type).lower() \
                if a.type in onnx.AttributeProto.AttributeType.values() else f"type {a.type}"
            raise InvalidModel(f"node {node_name!r}: attribute {name!r} must be {'an int' if kind is int else 'a float'}, "
                               f"got {got}")
        value = kind(onnx.helper.get_attribute_value(a))
        if kind is float and not np.isfinite(value):
            raise InvalidModel(f"node {node_name!r}: attribute {name!r} is {value}")
        return value
    return default


def dtype_name(data_type: int) -> str:
    """ONNX element type name (lower case), also for numbers that name no type."""
    try:
        return onnx.TensorProto.DataType.Name(data_type).lower()
    except ValueError:
        return f"unknown ({data_type})"


def _scope_with(graph: onnx.GraphProto, outer: dict[str, Constant]) -> dict[str, Constant]:
    """Constants visible inside ``graph``: its own, then the enclosing graphs' (lexical scoping)."""
    scope = dict(outer)
    # Names defined in this graph shadow outer constants.
    for value in graph.input:
        scope.pop(value.name, None)
    for node in graph.node:
        for out in node.output:
            scope.pop(out, None)
    for init in graph.initializer:
        scope[init.name] = Constant(init.name, init, graph)
    for node in graph.node:
        if node.op_type == "Constant" and node.domain in ("", "ai.onnx") and len(node.output) == 1:
            value = _attr(node, "value", None)
            if isinstance(value, onnx.TensorProto):
                scope[node.output[0]] = Constant(node.output[0], value, graph, node)
    return scope


def walk_graphs(graph: onnx.GraphProto, path: str = "main"):
    """Yield (graph, path) for the graph and every subgraph (If/Loop/Scan bodies), depth first."""
    yield graph, path
    for index, node in enumerate(graph.node):
        for a in node.attribute:
            subgraphs = [a.g] if a.type == onnx.AttributeProto.GRAPH else list(a.graphs)
            for sub in subgraphs:
                yield from walk_graphs(sub, f"{path}/{display_name(node, index)}.{a.name}")


def find_sites(model: onnx.ModelProto) -> SiteScan:
    scan = SiteScan()
    _scan_graph(model.graph, "main", {}, scan)
    return scan


def _scan_graph(graph: onnx.GraphProto, path: str, outer: dict[str, Constant], scan: SiteScan) -> None:
    scope = _scope_with(graph, outer)
    for index, node in enumerate(graph.node):
        if node.domain in ("", "ai.onnx") and node.op_type in ("MatMul", "Gemm"):
            result = _inspect_node(graph, path, node, index, scope)
            (scan.sites if isinstance(result, Site) else scan.skipped).append(result)
        for a in node.attribute:
            subgraphs = [a.g] if a.type == onnx.AttributeProto.GRAPH else list(a.graphs)
            for sub in subgraphs:
                _scan_graph(sub, f"{path}/{display_name(node, index)}.{a.name}", scope, scan)


def _inspect_node(graph, path, node, index, scope) -> Site | Skipped:
    name = display_name(node, index)

    def skip(reason: str, weight: Constant | None = None, elements: int = 0) -> Skipped:
        return Skipped(name, node.op_type, path, reason, weight.name if weight else None, elements)

    if len(node.input) < 2:
        return skip(f"{node.op_type} has {len(node.input)} input(s)")
    weight = scope.get(node.input[1])
    if weight is None:
        return skip("weight (input B) is not a constant initializer")
    dims = list(weight.tensor.dims)
    if len(dims) != 2:
        return skip(f"weight {weight.name!r} has rank {len(dims)}, not 2", weight)
    if min(dims) < 0:
        raise InvalidModel(f"weight {weight.name!r} of node {name!r} declares negative dims {dims}")
    elements = dims[0] * dims[1]
    if weight.tensor.data_type not in SUPPORTED_WEIGHT_DTYPES:
        dtype = dtype_name(weight.tensor.data_type)
        return skip(f"weight {weight.name!r} dtype {dtype} is not supported yet (float32 only)", weight, elements)
    if elements == 0:
        return skip(f"weight {weight.name!r} is empty (shape {dims})", weight, elements)

    transposed, alpha, beta = False, 1.0, 1.0
    bias = None
    if node.op_type == "Gemm":
        if _number_attr(node, name, "transA", 0, int):
            return skip("Gemm with transA=1 is not supported", weight, elements)
        transposed = bool(_number_attr(node, name, "transB", 0, int))
        alpha = _number_attr(node, name, "alpha", 1.0, float)
        beta = _number_attr(node, name, "beta", 1.0, float)
        if len(node.input) > 2 and node.input[2]:
            bias = scope.get(node.input[2])
            if bias is None:
                return skip("Gemm bias C is not a constant", weight, elements)
    n_out = dims[0] if transposed else dims[1]

    stored = _stored_bytes(weight.tensor)
    if stored != elements * 4:
        raise InvalidModel(f"weight {weight.name!r} of node {name!r}: data holds {stored} bytes, dims {dims} "
                           f"need {elements * 4}")
    bias_array = None
    if bias is not None:
        b = bias.array()
        if b.dtype != np.float32:
            return skip(f"Gemm bias {bias.name!r} has dtype {b.dtype}, not float32", weight, elements)
        if b.size == 1:
            b = np.full(n_out, b.reshape(-1)[0], dtype=np.float32)
        elif b.shape in ((n_out,), (1, n_out)):
            b = b.reshape(n_out)
        else:
            return skip(f"Gemm bias {bias.name!r} has shape {list(b.shape)}; only [N], [1, N] or a scalar fold", weight, elements)
        with np.errstate(over="ignore", invalid="ignore"):  # overflow becomes Inf: reported as such
            bias_array = (b * np.float32(beta)).astype(np.float32) if beta != 1.0 else b.astype(np.float32)
    shape = (dims[1], dims[0]) if transposed else (dims[0], dims[1])
    return Site(graph, node, name, path, weight, shape, bias, bias_array, transposed, alpha)


def _stored_bytes(tensor: onnx.TensorProto) -> int:
    """Bytes of float32 data a weight tensor really holds, without decoding it."""
    return len(tensor.raw_data) if tensor.HasField("raw_data") else 4 * len(tensor.float_data)
