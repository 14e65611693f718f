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


# --- convolutions and embeddings (site kinds beyond Gemm/MatMul) -----------------------------

def _vi(name, elem, shape):
    return helper.make_tensor_value_info(name, elem, shape)


def cnn_model(*, seed=0, batchnorm=True) -> onnx.ModelProto:
    """Conv(stride 2, pads) -> BatchNorm -> Relu -> grouped dilated Conv (odd pads) -> depthwise Conv (auto_pad)
    -> 1x1 Conv without bias -> GlobalAveragePool -> Flatten -> Gemm."""
    rng = np.random.default_rng(seed)
    inits = [numpy_helper.from_array(rand(rng, 16, 3, 3, 3, scale=0.3), "c1.w"),
             numpy_helper.from_array(rand(rng, 16, scale=0.1), "c1.b"),
             numpy_helper.from_array(rand(rng, 16, 8, 3, 3, scale=0.2), "c2.w"),
             numpy_helper.from_array(rand(rng, 16, scale=0.1), "c2.b"),
             numpy_helper.from_array(rand(rng, 16, 1, 3, 3, scale=0.3), "dw.w"),
             numpy_helper.from_array(rand(rng, 24, 16, 1, 1, scale=0.2), "pw.w"),
             numpy_helper.from_array(rand(rng, 10, 24, scale=0.2), "fc.w"),
             numpy_helper.from_array(rand(rng, 10), "fc.b")]
    nodes = [helper.make_node("Conv", ["x", "c1.w", "c1.b"], ["c1"], name="conv1", strides=[2, 2], pads=[1, 1, 1, 1])]
    last = "c1"
    if batchnorm:
        inits += [numpy_helper.from_array((1 + rand(rng, 16, scale=0.2)), "bn.scale"),
                  numpy_helper.from_array(rand(rng, 16, scale=0.1), "bn.bias"),
                  numpy_helper.from_array(rand(rng, 16, scale=0.1), "bn.mean"),
                  numpy_helper.from_array(np.abs(1 + rand(rng, 16, scale=0.2)), "bn.var")]
        nodes.append(helper.make_node("BatchNormalization", ["c1", "bn.scale", "bn.bias", "bn.mean", "bn.var"], ["bn"],
                                      name="bn1", epsilon=1e-3))
        last = "bn"
    nodes += [helper.make_node("Relu", [last], ["r1"], name="relu1"),
              helper.make_node("Conv", ["r1", "c2.w", "c2.b"], ["c2"], name="conv2", group=2, dilations=[2, 2],
                               pads=[2, 1, 2, 3]),
              helper.make_node("Conv", ["c2", "dw.w"], ["dw"], name="depthwise", group=16, auto_pad="SAME_UPPER"),
              helper.make_node("Conv", ["dw", "pw.w"], ["pw"], name="pointwise"),
              helper.make_node("GlobalAveragePool", ["pw"], ["gap"], name="gap"),
              helper.make_node("Flatten", ["gap"], ["flat"], name="flatten"),
              helper.make_node("Gemm", ["flat", "fc.w", "fc.b"], ["logits"], name="fc", transB=1)]
    graph = helper.make_graph(nodes, "cnn", [_vi("x", TensorProto.FLOAT, ["batch", 3, 15, 15])],
                              [_vi("logits", TensorProto.FLOAT, ["batch", 10])], inits)
    return _model(graph)


def conv_nd_model(rank: int, *, seed=0) -> onnx.ModelProto:
    """One Conv of spatial rank 1 or 3 with odd kernel, strides and asymmetric pads."""
    rng = np.random.default_rng(seed)
    kernel = {1: [5], 3: [3, 2, 3]}[rank]
    spatial = {1: [17], 3: [7, 6, 5]}[rank]
    w = rand(rng, 12, 6, *kernel, scale=0.2)
    node = helper.make_node("Conv", ["x", "w"], ["y"], name=f"conv{rank}d", strides=[2] * rank,
                            pads=[1] * rank + [0] * rank)
    graph = helper.make_graph([node], f"conv{rank}d", [_vi("x", TensorProto.FLOAT, ["batch", 6, *spatial])],
                              [_vi("y", TensorProto.FLOAT, ["batch"] + [None] * (rank + 1))], [numpy_helper.from_array(w, "w")])
    return _model(graph)


def conv_transpose_model(*, seed=0, group=2) -> onnx.ModelProto:
    """ConvTranspose with groups, stride 2 and output_padding, followed by a BatchNorm."""
    rng = np.random.default_rng(seed)
    cin, cout_g = 16, 12
    inits = [numpy_helper.from_array(rand(rng, cin, cout_g, 3, 3, scale=0.2), "ct.w"),
             numpy_helper.from_array(rand(rng, cout_g * group, scale=0.1), "ct.b"),
             numpy_helper.from_array((1 + rand(rng, cout_g * group, scale=0.2)), "bn.scale"),
             numpy_helper.from_array(rand(rng, cout_g * group, scale=0.1), "bn.bias"),
             numpy_helper.from_array(rand(rng, cout_g * group, scale=0.1), "bn.mean"),
             numpy_helper.from_array(np.abs(1 + rand(rng, cout_g * group, scale=0.2)), "bn.var")]
    nodes = [helper.make_node("ConvTranspose", ["x", "ct.w", "ct.b"], ["ct"], name="deconv", group=group,
                              strides=[2, 2], output_padding=[1, 0], pads=[1, 1, 1, 1]),
             helper.make_node("BatchNormalization", ["ct", "bn.scale", "bn.bias", "bn.mean", "bn.var"], ["y"],
                              name="bn")]
    graph = helper.make_graph(nodes, "deconv", [_vi("x", TensorProto.FLOAT, ["batch", cin, 5, 6])],
                              [_vi("y", TensorProto.FLOAT, ["batch", None, None, None])], inits)
    return _model(graph)


def embedding_model(*, vocab=64, dim=24, seed=0, table_dtype=np.float32, cast=False, constant_node=False):
    """ids -> Gather(token table) + Gather(position table) -> MatMul -> mean over tokens.

    ``table_dtype`` float16 with ``cast`` stores the table in float16 behind a Cast to float32;
    ``constant_node`` puts the token table in a Constant node instead of an initializer."""
    rng = np.random.default_rng(seed)
    table = rand(rng, vocab, dim, scale=0.5)
    positions = rand(rng, 8, dim, scale=0.1)
    w = rand(rng, dim, 16, scale=0.2)
    inits = [numpy_helper.from_array(positions, "pos.table"), numpy_helper.from_array(w, "proj.w"),
             numpy_helper.from_array(np.arange(8, dtype=np.int64)[None, :], "pos.ids")]
    nodes = []
    stored = table.astype(table_dtype)
    table_name = "tok.table"
    if constant_node:
        nodes.append(helper.make_node("Constant", [], [table_name], name="tok.const",
                                      value=numpy_helper.from_array(stored, table_name)))
    else:
        inits.append(numpy_helper.from_array(stored, table_name))
    if cast:
        nodes.append(helper.make_node("Cast", [table_name], ["tok.table_f32"], name="tok.cast", to=TensorProto.FLOAT))
        table_name = "tok.table_f32"
    nodes += [helper.make_node("Gather", [table_name, "ids"], ["tok"], name="tok_embed", axis=0),
              helper.make_node("Gather", ["pos.table", "pos.ids"], ["pos"], name="pos_embed"),
              helper.make_node("Add", ["tok", "pos"], ["emb"], name="add"),
              helper.make_node("MatMul", ["emb", "proj.w"], ["proj"], name="proj"),
              helper.make_node("ReduceMean", ["proj"], ["y"], name="pool", axes=[1], keepdims=0)]
    graph = helper.make_graph(nodes, "embed", [_vi("ids", TensorProto.INT64, ["batch", 8])],
                              [_vi("y", TensorProto.FLOAT, ["batch", 16])], inits)
    return _model(graph)


def float16_cnn_model(*, seed=0) -> onnx.ModelProto:
    """A float16 model end to end: float16 input, Conv weights and output."""
    rng = np.random.default_rng(seed)
    w1 = rand(rng, 16, 4, 3, 3, scale=0.2).astype(np.float16)
    w2 = rand(rng, 8, 16, 1, 1, scale=0.2).astype(np.float16)
    nodes = [helper.make_node("Conv", ["x", "w1"], ["c1"], name="conv1", pads=[1, 1, 1, 1]),
             helper.make_node("Relu", ["c1"], ["r1"], name="relu"),
             helper.make_node("Conv", ["r1", "w2"], ["y"], name="conv2")]
    graph = helper.make_graph(nodes, "fp16cnn", [_vi("x", TensorProto.FLOAT16, ["batch", 4, 9, 9])],
                              [_vi("y", TensorProto.FLOAT16, ["batch", None, None, None])],
                              [numpy_helper.from_array(w1, "w1"), numpy_helper.from_array(w2, "w2")])
    return _model(graph)


def bfloat16_weight_model(*, seed=0) -> onnx.ModelProto:
    """A Conv whose weight is stored as bfloat16 behind a Cast to float32."""
    rng = np.random.default_rng(seed)
    w = rand(rng, 24, 8, 3, 3, scale=0.2)
    tensor = helper.make_tensor("w.bf16", TensorProto.BFLOAT16, w.shape,
                                vals=(w.view(np.uint32) >> 16).astype(np.uint16).tobytes(), raw=True)
    nodes = [helper.make_node("Cast", ["w.bf16"], ["w"], name="w.cast", to=TensorProto.FLOAT),
             helper.make_node("Conv", ["x", "w"], ["y"], name="conv", pads=[1, 1, 1, 1])]
    graph = helper.make_graph(nodes, "bf16w", [_vi("x", TensorProto.FLOAT, ["batch", 8, 7, 7])],
                              [_vi("y", TensorProto.FLOAT, ["batch", None, None, None])], [tensor])
    return _model(graph)
