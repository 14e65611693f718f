"""Tiny ONNX models built in code for the tests (no files, no downloads)."""
from __future__ import annotations

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

OPSET = 17


def _model(graph: onnx.GraphProto, opset: int = OPSET) -> onnx.ModelProto:
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)], producer_name="onnxvq-tests")
    model.ir_version = 8
    onnx.checker.check_model(model, full_check=True)
    return model


def rand(rng, *shape, scale=1.0):
    return (rng.standard_normal(shape) * scale).astype(np.float32)


def gemm_model(k=64, n=48, *, trans_b=True, alpha=0.7, beta=1.3, bias_shape="n", seed=0) -> onnx.ModelProto:
    """Y = alpha * X @ B' + beta * C, with B' = B^T when trans_b."""
    rng = np.random.default_rng(seed)
    w = rand(rng, n, k, scale=0.1) if trans_b else rand(rng, k, n, scale=0.1)
    inits = [numpy_helper.from_array(w, "W")]
    inputs = ["X", "W"]
    if bias_shape:
        shape = {"n": (n,), "1n": (1, n), "scalar": ()}[bias_shape]
        inits.append(numpy_helper.from_array(rand(rng, *shape), "C"))
        inputs.append("C")
    node = helper.make_node("Gemm", inputs, ["Y"], name="fc", transB=int(trans_b), alpha=alpha, beta=beta)
    graph = helper.make_graph([node], "gemm", [helper.make_tensor_value_info("X", TensorProto.FLOAT, ["batch", k])],
                              [helper.make_tensor_value_info("Y", TensorProto.FLOAT, ["batch", n])], inits)
    return _model(graph)


def mlp_model(k=96, hidden=80, n=10, *, seed=0) -> onnx.ModelProto:
    """A 3-D batched MatMul -> Relu -> Gemm classifier head, with metadata to preserve."""
    rng = np.random.default_rng(seed)
    inits = [numpy_helper.from_array(rand(rng, k, hidden, scale=0.15), "W1"),
             numpy_helper.from_array(rand(rng, hidden), "b1"),
             numpy_helper.from_array(rand(rng, n, hidden, scale=0.15), "W2"),
             numpy_helper.from_array(rand(rng, n), "b2")]
    nodes = [helper.make_node("MatMul", ["X", "W1"], ["h0"], name="fc1"),
             helper.make_node("Add", ["h0", "b1"], ["h1"], name="fc1_bias"),
             helper.make_node("Relu", ["h1"], ["h2"], name="relu"),
             helper.make_node("Reshape", ["h2", "flat_shape"], ["h3"], name="flatten"),
             helper.make_node("Gemm", ["h3", "W2", "b2"], ["logits"], name="fc2", transB=1)]
    inits.append(numpy_helper.from_array(np.array([-1, hidden], np.int64), "flat_shape"))
    graph = helper.make_graph(nodes, "mlp", [helper.make_tensor_value_info("X", TensorProto.FLOAT, ["batch", 3, k])],
                              [helper.make_tensor_value_info("logits", TensorProto.FLOAT, [None, n])], inits)
    model = _model(graph)
    onnx.helper.set_model_props(model, {"author": "tests", "purpose": "mlp"})
    return model


def shared_weight_model(k=64, n=32, *, seed=0) -> onnx.ModelProto:
    """Two MatMuls read the same weight."""
    rng = np.random.default_rng(seed)
    nodes = [helper.make_node("MatMul", ["X", "W"], ["a"], name="left"),
             helper.make_node("MatMul", ["X2", "W"], ["b"], name="right")]
    graph = helper.make_graph(nodes, "shared", [helper.make_tensor_value_info("X", TensorProto.FLOAT, ["batch", k]),
                                                helper.make_tensor_value_info("X2", TensorProto.FLOAT, ["batch", k])],
                              [helper.make_tensor_value_info("a", TensorProto.FLOAT, ["batch", n]),
                               helper.make_tensor_value_info("b", TensorProto.FLOAT, ["batch", n])],
                              [numpy_helper.from_array(rand(rng, k, n, scale=0.1), "W")])
    return _model(graph)


def if_model(k=64, n=32, *, seed=0) -> onnx.ModelProto:
    """An If whose then-branch holds a MatMul reading an outer-scope weight, else-branch its own."""
    rng = np.random.default_rng(seed)
    out = helper.make_tensor_value_info("y", TensorProto.FLOAT, ["batch", n])
    then_graph = helper.make_graph([helper.make_node("MatMul", ["X", "W_outer"], ["y"], name="then_fc")], "then", [], [out])
    else_graph = helper.make_graph([helper.make_node("MatMul", ["X", "W_inner"], ["y"], name="else_fc")], "else", [], [out],
                                   [numpy_helper.from_array(rand(rng, k, n, scale=0.1), "W_inner")])
    node = helper.make_node("If", ["cond"], ["Y"], name="branch", then_branch=then_graph, else_branch=else_graph)
    graph = helper.make_graph([node], "if_model",
                              [helper.make_tensor_value_info("X", TensorProto.FLOAT, ["batch", k]),
                               helper.make_tensor_value_info("cond", TensorProto.BOOL, [])],
                              [helper.make_tensor_value_info("Y", TensorProto.FLOAT, ["batch", n])],
                              [numpy_helper.from_array(rand(rng, k, n, scale=0.1), "W_outer")])
    return _model(graph)


def constant_node_model(k=40, n=24, *, seed=0) -> onnx.ModelProto:
    """The weight comes from a Constant node, as some exporters write it."""
    rng = np.random.default_rng(seed)
    w = helper.make_node("Constant", [], ["W"], name="w_const", value=numpy_helper.from_array(rand(rng, k, n, scale=0.1)))
    graph = helper.make_graph([w, helper.make_node("MatMul", ["X", "W"], ["Y"], name="mm")], "const",
                              [helper.make_tensor_value_info("X", TensorProto.FLOAT, ["batch", k])],
                              [helper.make_tensor_value_info("Y", TensorProto.FLOAT, ["batch", n])])
    return _model(graph)


def non_constant_model(k=32, n=16) -> onnx.ModelProto:
    """MatMul of two activations: nothing to compress."""
    graph = helper.make_graph([helper.make_node("MatMul", ["A", "B"], ["Y"], name="mm")], "act",
                              [helper.make_tensor_value_info("A", TensorProto.FLOAT, ["batch", k]),
                               helper.make_tensor_value_info("B", TensorProto.FLOAT, [k, n])],
                              [helper.make_tensor_value_info("Y", TensorProto.FLOAT, ["batch", n])])
    return _model(graph)
