"""Find the constant weights of weight-bearing nodes, in the main graph and in every subgraph.

A *site* is one node we can rewrite. Its *site kind* (``passes/kinds/``: one file per op family,
one registration) knows which input holds the weight, how that tensor reads as the matrix
W[K, N] the quantizers fit (K = reduction length, N = rows of M for ``axis in``), and how to
rewrite the node. Nodes a kind cannot handle are returned as *skipped* with the reason, so the
report can list them. This module holds what every kind shares: constants visible in a scope,
weights stored as float16/bfloat16 or behind a ``Cast``, and the scan itself.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np
import onnx
from onnx import numpy_helper

from ..errors import InvalidModel

FLOAT_TYPES = {onnx.TensorProto.FLOAT: 4, onnx.TensorProto.FLOAT16: 2, onnx.TensorProto.BFLOAT16: 2}


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

    def float32(self) -> np.ndarray:
        """The values as float32 (float16 / bfloat16 storage widened exactly)."""
        a = self.array()
        return a if a.dtype == np.float32 else a.astype(np.float32)

    @property
    def dims(self) -> list[int]:
        return list(self.tensor.dims)


@dataclass
class WeightSource:
    """Where a node's weight input comes from: a float constant, possibly through a Cast."""

    constant: Constant
    cast: onnx.NodeProto | None     # Cast(constant) -> the node's input, when there is one
    consumer_dtype: int             # element type the node reads (the Cast's `to`, else the constant's)


@dataclass
class Site:
    graph: onnx.GraphProto
    node: onnx.NodeProto
    display_name: str
    graph_path: str
    weight: Constant
    shape: tuple[int, int]          # (K, N) of the matrix view W the quantizers fit
    kind: Any                       # the SiteKind that found it
    weight_input: int = 1           # index of the node input that carries the weight
    cast: onnx.NodeProto | None = None
    consumer_dtype: int = onnx.TensorProto.FLOAT
    bias: Constant | None = None    # the original bias input (Gemm C), if folded by the kind
    bias_array: np.ndarray | None = None   # effective bias [N] float32 the rewrite adds
    params: dict = field(default_factory=dict)   # kind-specific (transB, alpha, conv geometry, ...)

    @property
    def op_type(self) -> str:
        return self.node.op_type

    @property
    def activation(self) -> str:
        return self.kind.activation(self)

    @property
    def weight_key(self) -> tuple:
        """Sites with equal keys share one encoding."""
        return (id(self.weight.graph), self.weight.name, self.kind.name, self.kind.view_key(self))

    @property
    def weight_array(self) -> np.ndarray:
        """W[K, N] float32 as the kind views the weight, built on each access.

        Not kept on the site: holding every layer's copy at once would multiply peak memory.
        """
        return np.ascontiguousarray(self.kind.to_matrix(self, self.weight.float32()), dtype=np.float32)

    def stored_weight(self, w_hat: np.ndarray) -> np.ndarray:
        """The weight tensor (original shape, float32) whose matrix view is ``w_hat`` [K, N]."""
        return np.ascontiguousarray(self.kind.from_matrix(self, np.asarray(w_hat, np.float32)), dtype=np.float32)

    @property
    def elements(self) -> int:
        return self.shape[0] * self.shape[1]

    @property
    def weight_bytes(self) -> int:
        """Bytes the original weight occupies in the file (its stored dtype)."""
        return self.elements * FLOAT_TYPES.get(self.weight.tensor.data_type, 4)

    @property
    def in_features(self) -> int:
        return self.shape[0]

    @property
    def out_features(self) -> int:
        return self.shape[1]

    @property
    def weight_shape(self) -> list[int]:
        return self.weight.dims

    # Kept for callers written for Gemm/MatMul sites.
    @property
    def transposed(self) -> bool:
        return bool(self.params.get("transposed", False))

    @property
    def alpha(self) -> float:
        return float(self.params.get("alpha", 1.0))


@dataclass
class Skipped:
    display_name: str
    op_type: str
    graph_path: str
    reason: str
    weight_name: str | None = None
    elements: int = 0
    weight_bytes: int | None = None   # stored bytes when known (else 4 per element)

    @property
    def stored_bytes(self) -> int:
        return self.weight_bytes if self.weight_bytes is not None else 4 * self.elements


@dataclass
class SiteScan:
    sites: list[Site] = field(default_factory=list)
    skipped: list[Skipped] = field(default_factory=list)


def display_name(node: onnx.NodeProto, index: int) -> str:
    return node.name or f"{node.op_type}_{index}({node.output[0] if node.output else ''})"


def attr(node: onnx.NodeProto, name: str, default):
    for a in node.attribute:
        if a.name == name:
            return onnx.helper.get_attribute_value(a)
    return default



def number_attr(node: onnx.NodeProto, node_name: str, name: str, default, kind: type):
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
            value = attr(node, "value", None)
            if isinstance(value, onnx.TensorProto):
                scope[node.output[0]] = Constant(node.output[0], value, graph, node)
    return scope


def _cast_producers(graph: onnx.GraphProto) -> dict[str, onnx.NodeProto]:
    return {n.output[0]: n for n in graph.node
            if n.op_type == "Cast" and n.domain in ("", "ai.onnx") and len(n.input) == 1 and len(n.output) == 1}


def resolve_weight(name: str, scope: dict[str, Constant], casts: dict[str, onnx.NodeProto]) -> WeightSource | None:
    """The float constant behind input ``name`` (directly, or through one Cast between float types)."""
    if name in scope:
        const = scope[name]
        return WeightSource(const, None, const.tensor.data_type)
    cast = casts.get(name)
    if cast is not None and cast.input[0] in scope:
        const = scope[cast.input[0]]
        to = attr(cast, "to", None)
        if const.tensor.data_type in FLOAT_TYPES and to in FLOAT_TYPES:
            return WeightSource(const, cast, int(to))
    return None


def stored_bytes(tensor: onnx.TensorProto) -> int:
    """Bytes of data a float tensor really holds, without decoding it."""
    if tensor.HasField("raw_data"):
        return len(tensor.raw_data)
    if tensor.data_type == onnx.TensorProto.FLOAT:
        return 4 * len(tensor.float_data)
    return 2 * len(tensor.int32_data)  # float16 / bfloat16 live one per int32 slot



def check_weight_tensor(source: WeightSource, node_name: str) -> str | None:
    """Why a constant cannot serve as a weight (a skip reason), or None; corrupt data raises."""
    tensor = source.constant.tensor
    dims = list(tensor.dims)
    if min(dims, default=0) < 0:
        raise InvalidModel(f"weight {source.constant.name!r} of node {node_name!r} declares negative dims {dims}")
    if tensor.data_type not in FLOAT_TYPES:
        return f"weight {source.constant.name!r} dtype {dtype_name(tensor.data_type)} is not a float type"
    if source.consumer_dtype not in FLOAT_TYPES:
        return f"weight {source.constant.name!r} is cast to {dtype_name(source.consumer_dtype)}"
    elements = int(np.prod(dims, dtype=object)) if dims else 1
    if elements == 0:
        return f"weight {source.constant.name!r} is empty (shape {dims})"
    if tensor.data_location == onnx.TensorProto.EXTERNAL:
        return None
    need = elements * FLOAT_TYPES[tensor.data_type]
    have = stored_bytes(tensor)
    if have != need:
        raise InvalidModel(f"weight {source.constant.name!r} of node {node_name!r}: data holds {have} bytes, "
                           f"dims {dims} need {need}")
    return None


def walk_graphs(graph: onnx.GraphProto, path: str = "main"):
    """Yield (graph, path) for the graph and every subgraph (If/Loop/Scan bodies), depth first."""
    yield graph, path
    for index, node in enumerate(graph.node):
        for a in node.attribute:
            subgraphs = [a.g] if a.type == onnx.AttributeProto.GRAPH else list(a.graphs)
            for sub in subgraphs:
                yield from walk_graphs(sub, f"{path}/{display_name(node, index)}.{a.name}")


@dataclass
class NodeContext:
    """What a site kind gets to inspect one node."""

    graph: onnx.GraphProto
    path: str
    node: onnx.NodeProto
    index: int
    scope: dict[str, Constant]
    casts: dict[str, onnx.NodeProto]

    @property
    def name(self) -> str:
        return display_name(self.node, self.index)

    def weight(self, input_index: int) -> WeightSource | None:
        if len(self.node.input) <= input_index or not self.node.input[input_index]:
            return None
        return resolve_weight(self.node.input[input_index], self.scope, self.casts)

    def skip(self, reason: str, source: WeightSource | Constant | None = None, elements: int = 0) -> Skipped:
        const = source.constant if isinstance(source, WeightSource) else source
        nbytes = None
        if const is not None and const.tensor.data_type in FLOAT_TYPES and elements:
            nbytes = elements * FLOAT_TYPES[const.tensor.data_type]
        return Skipped(self.name, self.node.op_type, self.path, reason, const.name if const else None, elements, nbytes)

    def site(self, source: WeightSource, shape: tuple[int, int], kind, weight_input: int, **extra) -> Site:
        return Site(self.graph, self.node, self.name, self.path, source.constant, shape, kind,
                    weight_input=weight_input, cast=source.cast, consumer_dtype=source.consumer_dtype, **extra)


def find_sites(model: onnx.ModelProto, op_types: set[str] | None = None) -> SiteScan:
    """Every site of the registered kinds (restricted to ``op_types`` when given)."""
    from .kinds import kind_for

    scan = SiteScan()
    _scan_graph(model.graph, "main", {}, scan, kind_for, op_types)
    return scan


def _scan_graph(graph, path, outer, scan, kind_for, op_types) -> None:
    scope = _scope_with(graph, outer)
    casts = _cast_producers(graph)
    for index, node in enumerate(graph.node):
        kind = kind_for(node)
        if kind is not None and (op_types is None or node.op_type in op_types):
            result = kind.inspect(NodeContext(graph, path, node, index, scope, casts))
            if isinstance(result, Site):
                scan.sites.append(result)
            elif isinstance(result, Skipped):
                scan.skipped.append(result)
        for a in node.attribute:
            subgraphs = [a.g] if a.type == onnx.AttributeProto.GRAPH else list(a.graphs)
            for sub in subgraphs:
                _scan_graph(sub, f"{path}/{display_name(node, index)}.{a.name}", scope, scan, kind_for, op_types)
