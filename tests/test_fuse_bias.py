"""A MatMul's bias Add folds into its VQMatMul (passes/fuse_bias.py): same bits, fewer passes."""
import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

import onnxvq
from onnxvq.compress import compress_model
from onnxvq.config import build_plan
from onnxvq.ops.schema import DOMAIN, OP_TYPE
from onnxvq.passes.fuse_bias import fuse_bias_adds

from . import builders


def linear_model(k, n, *, bias_shape=None, extra_reader=False, bias_first=False, seed=0):
    """X[batch, k] -> MatMul(W) -> Add(b) -> Relu (optionally a second reader of the MatMul output)."""
    rng = np.random.default_rng(seed)
    bias_shape = (n,) if bias_shape is None else bias_shape
    inits = [numpy_helper.from_array((rng.standard_normal((k, n)) * 0.1).astype(np.float32), "W"),
             numpy_helper.from_array(rng.standard_normal(bias_shape).astype(np.float32), "b")]
    add_inputs = ["b", "h"] if bias_first else ["h", "b"]
    nodes = [helper.make_node("MatMul", ["X", "W"], ["h"], name="fc"),
             helper.make_node("Add", add_inputs, ["hb"], name="fc_bias"),
             helper.make_node("Relu", ["hb"], ["Y"], name="relu")]
    outputs = [helper.make_tensor_value_info("Y", TensorProto.FLOAT, None)]
    if extra_reader:
        nodes.append(helper.make_node("Neg", ["h"], ["Z"], name="other_reader"))
        outputs.append(helper.make_tensor_value_info("Z", TensorProto.FLOAT, None))
    graph = helper.make_graph(nodes, "linear", [helper.make_tensor_value_info("X", TensorProto.FLOAT, ["batch", k])],
                              outputs, inits)
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=9)


def compress(model, **settings):
    plan = build_plan({"matmul_runtime": "op", "min_elements": 0, **settings})
    return compress_model(model, plan).model


def vq_nodes(model):
    return [n for n in model.graph.node if n.domain == DOMAIN and n.op_type == OP_TYPE]


def unfused(model):
    """The same model with each folded bias split back out into an Add after the op."""
    out = onnx.ModelProto()
    out.CopyFrom(model)
    nodes = []
    for node in out.graph.node:
        if node.domain == DOMAIN and node.op_type == OP_TYPE and len(node.input) > 3 and node.input[3]:
            bias, final = node.input[3], node.output[0]
            del node.input[3:]
            node.output[0] = final + ".no_bias"
            nodes += [node, helper.make_node("Add", [final + ".no_bias", bias], [final])]
        else:
            nodes.append(node)
    del out.graph.node[:]
    out.graph.node.extend(nodes)
    return out


def run(model, x):
    return onnxvq.session(model.SerializeToString()).run(None, {"X": x})


# Settings that reach the op's paths: fast-scan (km4, pq4), byte-scan (pq8), decode-dot and
# the panel GEMM (km5), binary's byte tables, at one row, a few and many (the tile paths).
METHODS = {
    "km4": dict(method="kmeans", bits=4),
    "km5": dict(method="kmeans", bits=5),
    "pq4": dict(method="pq", bits=4, dim=4),
    "pq8": dict(method="pq", bits=8, dim=4),
    "binary": dict(method="binary"),
}


@pytest.mark.parametrize("method", sorted(METHODS))
def test_folded_bias_gives_the_bits_of_a_separate_add(method):
    k, n = 96, 520  # pq8: enough outputs that 256-codeword codebooks pay off; a 64-block tail
    compressed = compress(linear_model(k, n), **METHODS[method])
    (node,) = vq_nodes(compressed)
    assert len(node.input) == 4 and node.input[3] == "b" and node.output[0] == "hb"
    assert not [m for m in compressed.graph.node if m.op_type == "Add"], "the bias Add is still in the graph"
    reference = unfused(compressed)
    for rows in (1, 3, 8, 300):
        x = np.random.default_rng(rows).standard_normal((rows, k)).astype(np.float32)
        (got,), (want,) = run(compressed, x), run(reference, x)
        assert np.array_equal(got, want), f"{method} at {rows} rows: folded bias differs from Add"


def test_bias_first_in_the_add_folds_too():
    compressed = compress(linear_model(64, 64, bias_first=True), method="kmeans", bits=4)
    (node,) = vq_nodes(compressed)
    assert node.input[3] == "b" and node.output[0] == "hb"


@pytest.mark.parametrize("case", ["second_reader", "bias_1xN", "graph_output", "not_constant", "overridable"])
def test_adds_that_could_change_the_graph_stay(case):
    if case == "second_reader":
        model = linear_model(64, 64, extra_reader=True)
    elif case == "bias_1xN":  # broadcasting [1, N] could change the output's rank
        model = linear_model(64, 64, bias_shape=(1, 64))
    else:
        model = linear_model(64, 64)
        if case == "graph_output":
            model.graph.output.append(helper.make_tensor_value_info("h", TensorProto.FLOAT, None))
        elif case == "overridable":  # an initializer that is also an input: a caller may feed [1, N]
            model.graph.input.append(helper.make_tensor_value_info("b", TensorProto.FLOAT, [64]))
        else:  # the bias comes from a graph input
            model.graph.initializer.remove(next(t for t in model.graph.initializer if t.name == "b"))
            model.graph.input.append(helper.make_tensor_value_info("b", TensorProto.FLOAT, [64]))
    compressed = compress(model, method="kmeans", bits=4)
    (node,) = vq_nodes(compressed)
    assert len(node.input) == 3 and node.output[0] == "h"
    assert [m.name for m in compressed.graph.node if m.op_type == "Add"] == ["fc_bias"]


def test_gemm_with_its_own_bias_is_left_as_it_was():
    model = builders.mlp_model(k=128, hidden=96)
    compressed = compress(model, method="kmeans", bits=4)
    by_output = {n.output[0]: n for n in vq_nodes(compressed)}
    assert len(by_output["h1"].input) == 4  # fc1's MatMul + Add, folded
    assert len(by_output["logits"].input) == 4  # fc2 is a Gemm with its bias C
    assert fuse_bias_adds(compressed) == 0  # nothing left to fold
