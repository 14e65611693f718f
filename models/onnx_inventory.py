"""Count where an ONNX model's weights are, and how many sit in dense (MatMul/Gemm) layers.

A weight is an element of a floating-point constant tensor of rank 1 or more (scalars such as
Clip bounds are left out): a graph initializer or the value of a Constant node (exporters such
as paddle2onnx store weights that way). A dense layer is a MatMul or Gemm
node with a 2-D float constant among its first two inputs; each such constant is counted once.

Run directly to print the inventory of ONNX files: python models/onnx_inventory.py FILE...
"""

from __future__ import annotations

import sys
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import onnx
from onnx import TensorProto

FLOAT_TYPES = {TensorProto.FLOAT, TensorProto.FLOAT16, TensorProto.DOUBLE, TensorProto.BFLOAT16}
DENSE_OPS = ("MatMul", "Gemm")


@dataclass
class DenseLayer:
    node: str
    op_type: str
    weight: str
    weight_input: int  # 0 = A, 1 = B
    shape: tuple[int, ...]

    @property
    def size(self) -> int:
        return int(np.prod(self.shape))


@dataclass
class Inventory:
    path: str
    total_weights: int
    dense: list[DenseLayer] = field(default_factory=list)
    dense_nodes_without_constant: int = 0
    by_op: dict[str, int] = field(default_factory=dict)  # weights by the op type that reads them

    @property
    def dense_weights(self) -> int:
        unique = {layer.weight: layer.size for layer in self.dense}
        return sum(unique.values())

    @property
    def dense_share(self) -> float:
        return self.dense_weights / self.total_weights if self.total_weights else 0.0


def float_constants(graph: onnx.GraphProto) -> dict[str, tuple[int, ...]]:
    """Name -> shape of every floating-point initializer and Constant-node tensor."""
    tensors = list(graph.initializer)
    for node in graph.node:
        if node.op_type == "Constant":
            for attr in node.attribute:
                if attr.name == "value" and attr.t.data_type in FLOAT_TYPES:
                    tensor = onnx.TensorProto()
                    tensor.CopyFrom(attr.t)
                    tensor.name = node.output[0]
                    tensors.append(tensor)
    return {t.name: tuple(t.dims) for t in tensors if t.data_type in FLOAT_TYPES}


def find_dense_layers(graph: onnx.GraphProto, constants: dict[str, tuple[int, ...]]):
    """Dense layers with a constant 2-D weight, and the number of dense nodes without one."""
    layers, without = [], 0
    for node in graph.node:
        if node.op_type not in DENSE_OPS:
            continue
        found = False
        for index, name in enumerate(node.input[:2]):
            shape = constants.get(name)
            if shape is not None and len(shape) == 2:
                layers.append(DenseLayer(node.name, node.op_type, name, index, shape))
                found = True
        without += not found
    return layers, without


def inventory(model: onnx.ModelProto | str | Path) -> Inventory:
    """Weight inventory of a model object or file (the top-level graph only)."""
    path = ""
    if not isinstance(model, onnx.ModelProto):
        path = str(model)
        model = onnx.load(path)
    constants = float_constants(model.graph)
    total = sum(int(np.prod(shape)) for shape in constants.values() if shape)
    layers, without = find_dense_layers(model.graph, constants)
    return Inventory(path, total, layers, without, weights_by_op(model.graph, constants))


def weights_by_op(graph: onnx.GraphProto, constants: dict[str, tuple[int, ...]]) -> dict[str, int]:
    """Weights counted under the op type of the first node that reads them (Conv, MatMul, Gather...)."""
    consumer: dict[str, str] = {}
    for node in graph.node:
        for name in node.input:
            if name in constants and name not in consumer:
                consumer[name] = node.op_type
    counts: dict[str, int] = {}
    for name, shape in constants.items():
        if shape:
            op = consumer.get(name, "(unused)")
            counts[op] = counts.get(op, 0) + int(np.prod(shape))
    return dict(sorted(counts.items(), key=lambda kv: -kv[1]))


def format_inventory(inv: Inventory, details: bool = True) -> str:
    lines = [
        f"{Path(inv.path).name or 'model'}: {inv.total_weights:,} weights, "
        f"{inv.dense_weights:,} in {len(inv.dense)} dense MatMul/Gemm layers "
        f"({inv.dense_share:.1%})"
        + (f"; {inv.dense_nodes_without_constant} MatMul/Gemm without constant weight"
           if inv.dense_nodes_without_constant else "")
    ]
    if inv.by_op and inv.total_weights:
        lines.append("    weights by op type: " + ", ".join(
            f"{op} {n:,} ({n / inv.total_weights:.1%})" for op, n in inv.by_op.items()))
    if details:
        for layer in inv.dense:
            lines.append(
                f"    {layer.op_type:6s} {layer.node}  weight {layer.weight} "
                f"(input {'AB'[layer.weight_input]}) {list(layer.shape)} = {layer.size:,}"
            )
    return "\n".join(lines)


def print_inventories(paths) -> list[Inventory]:
    """Print the inventory of each ONNX file and return the inventories."""
    invs = [inventory(p) for p in paths]
    print("inventory (weights = non-scalar float constants; "
          "dense = MatMul/Gemm with a constant 2-D weight):")
    for inv in invs:
        print("  " + format_inventory(inv).replace("\n", "\n  "), flush=True)
    return invs


def graph_input_name(model: onnx.ModelProto) -> str:
    """Name of the model's single real input (initializers listed as inputs are skipped)."""
    initializers = {t.name for t in model.graph.initializer}
    names = [i.name for i in model.graph.input if i.name not in initializers]
    if len(names) != 1:
        raise ValueError(f"expected one graph input, found {names}")
    return names[0]


def constant_nodes_to_initializers(model: onnx.ModelProto) -> int:
    """Move tensor-valued Constant nodes of the top-level graph into initializers, in place.

    The tensors keep their names, so the model computes exactly the same thing. Returns the
    number of nodes moved.
    """
    graph = model.graph
    kept, moved = [], 0
    for node in graph.node:
        attrs = {a.name: a for a in node.attribute}
        if node.op_type == "Constant" and set(attrs) == {"value"}:
            tensor = graph.initializer.add()
            tensor.CopyFrom(attrs["value"].t)
            tensor.name = node.output[0]
            moved += 1
        else:
            kept.append(node)
    del graph.node[:]
    graph.node.extend(kept)
    return moved


if __name__ == "__main__":
    if len(sys.argv) < 2:
        sys.exit("usage: python models/onnx_inventory.py MODEL.onnx [...]")
    print_inventories(sys.argv[1:])
