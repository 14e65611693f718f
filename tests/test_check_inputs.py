"""Generated parity inputs (issue 11, part A): integer inputs get meaningful values or a clear refusal."""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from onnxvq.check import DEFAULT_SEQUENCE_LENGTH, generate_inputs, make_inputs
from onnxvq.errors import ExitCode, InvalidModel

from . import builders

REPO = Path(__file__).resolve().parents[1]
ROWS, WIDTH, N = 50, 64, 32


def _model(nodes, inputs, outputs, inits, opset=17):
    graph = helper.make_graph(nodes, "g", inputs, outputs, inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)])
    model.ir_version = 8
    onnx.checker.check_model(model, full_check=True)
    return model


def encoder(*, ids_dtype=TensorProto.INT64, cast=False, table_as_constant=False, extra_inputs=(),
            rows=ROWS, seed=0):
    """ids -> Gather(table) -> MatMul(W) -> ReduceMean over the sequence: a pooled 'sentence embedding'."""
    rng = np.random.default_rng(seed)
    table = rng.standard_normal((rows, WIDTH)).astype(np.float32)
    inits = [numpy_helper.from_array(builders.rand(rng, WIDTH, N, scale=0.1), "W")]
    nodes = []
    if table_as_constant:  # a Constant node behind a Cast, as some exporters write it
        nodes += [helper.make_node("Constant", [], ["table16"], value=numpy_helper.from_array(table.astype(np.float16))),
                  helper.make_node("Cast", ["table16"], ["table"], to=TensorProto.FLOAT)]
    else:
        inits.append(numpy_helper.from_array(table, "table"))
    indices = "ids"
    if cast:
        nodes.append(helper.make_node("Cast", ["ids"], ["ids64"], to=TensorProto.INT64))
        indices = "ids64"
    nodes += [helper.make_node("Gather", ["table", indices], ["emb"], axis=0),
              helper.make_node("MatMul", ["emb", "W"], ["h"], name="proj"),
              helper.make_node("ReduceMean", ["h"], ["pooled"], axes=[1], keepdims=0)]
    inputs = [helper.make_tensor_value_info("ids", ids_dtype, ["batch", "sequence"])]
    for name, dtype in extra_inputs:  # each one Cast to a float output of its own, so the graph uses it
        inputs.append(helper.make_tensor_value_info(name, dtype, ["batch", "sequence"]))
        nodes.append(helper.make_node("Cast", [name], [name + "_f"], to=TensorProto.FLOAT))
    outputs = [helper.make_tensor_value_info("pooled", TensorProto.FLOAT, ["batch", N])]
    outputs += [helper.make_tensor_value_info(name + "_f", TensorProto.FLOAT, ["batch", "sequence"])
                for name, _ in extra_inputs]
    return _model(nodes, inputs, outputs, inits)


def rules_by_name(generated):
    return {r.name: r for r in generated.rules}


def test_token_ids_index_the_table():
    generated = generate_inputs(encoder(), samples=4, seed=3)
    ids = generated.feeds["ids"]
    assert ids.dtype == np.int64 and ids.shape == (4, DEFAULT_SEQUENCE_LENGTH)
    assert ids.min() >= 1 and ids.max() < ROWS  # 0 is padding: avoided
    assert len(np.unique(ids)) > 10  # not a constant: a real spread of ids
    rule = rules_by_name(generated)["ids"]
    assert rule.rule == "token-ids" and "[1, 50)" in rule.detail and "'table'" in rule.detail
    # make_inputs: same values, same return type as before
    feeds = make_inputs(encoder(), samples=4, seed=3)
    assert set(feeds) == {"ids"} and np.array_equal(feeds["ids"], ids)


def test_token_ids_through_a_cast_and_a_constant_table():
    for model in (encoder(ids_dtype=TensorProto.INT32, cast=True), encoder(table_as_constant=True)):
        generated = generate_inputs(model, samples=2)
        ids = generated.feeds["ids"]
        assert 1 <= ids.min() and ids.max() < ROWS
        assert rules_by_name(generated)["ids"].rule == "token-ids"


def test_smallest_table_wins_and_input_dim_sets_the_sequence():
    model = encoder()
    # a second, smaller table reached through Unsqueeze -> Squeeze
    small = numpy_helper.from_array(np.ones((7, 4), np.float32), "small")
    model.graph.initializer.append(small)
    model.graph.node.extend([
        helper.make_node("Unsqueeze", ["ids", "axes0"], ["ids_u"]),
        helper.make_node("Squeeze", ["ids_u", "axes0"], ["ids_s"]),
        helper.make_node("Gather", ["small", "ids_s"], ["small_emb"])])
    model.graph.initializer.append(numpy_helper.from_array(np.array([0], np.int64), "axes0"))
    model.graph.output.append(helper.make_tensor_value_info("small_emb", TensorProto.FLOAT, None))
    generated = generate_inputs(model, samples=3, dims={"sequence": 5})
    ids = generated.feeds["ids"]
    assert ids.shape == (3, 5) and ids.max() < 7
    assert "'small'" in rules_by_name(generated)["ids"].detail


def test_token_ids_used_inside_an_if_branch():
    rng = np.random.default_rng(0)
    out = helper.make_tensor_value_info("y", TensorProto.FLOAT, ["batch", "seq", 8])
    then_g = helper.make_graph([helper.make_node("Gather", ["table", "ids"], ["y"])], "then", [], [out])
    else_g = helper.make_graph([helper.make_node("Gather", ["table2", "ids"], ["y"])], "else", [], [out])
    nodes = [helper.make_node("If", ["cond"], ["Y"], then_branch=then_g, else_branch=else_g)]
    inits = [numpy_helper.from_array(rng.standard_normal((30, 8)).astype(np.float32), "table"),
             numpy_helper.from_array(rng.standard_normal((20, 8)).astype(np.float32), "table2")]
    model = _model(nodes, [helper.make_tensor_value_info("ids", TensorProto.INT64, ["batch", "seq"]),
                           helper.make_tensor_value_info("cond", TensorProto.BOOL, [])],
                   [helper.make_tensor_value_info("Y", TensorProto.FLOAT, ["batch", "seq", 8])], inits)
    generated = generate_inputs(model, samples=2)
    assert generated.feeds["ids"].max() < 20 and generated.feeds["ids"].min() >= 1
    assert generated.feeds["cond"].dtype == np.bool_ and not generated.feeds["cond"]  # bool: as before


def test_mask_segment_and_position_inputs():
    model = encoder(extra_inputs=[("attention_mask", TensorProto.INT64), ("token_type_ids", TensorProto.INT64),
                                  ("position_ids", TensorProto.INT64), ("key_padding_mask", TensorProto.BOOL)])
    generated = generate_inputs(model, samples=2, dims={"sequence": 6})
    feeds, rules = generated.feeds, rules_by_name(generated)
    assert feeds["attention_mask"].dtype == np.int64 and (feeds["attention_mask"] == 1).all()
    assert feeds["key_padding_mask"].dtype == np.bool_ and feeds["key_padding_mask"].all()
    assert (feeds["token_type_ids"] == 0).all()
    assert np.array_equal(feeds["position_ids"], np.tile(np.arange(6), (2, 1)))
    assert {n: r.rule for n, r in rules.items()} == {
        "ids": "token-ids", "attention_mask": "mask-ones", "token_type_ids": "segment-zeros",
        "position_ids": "positions", "key_padding_mask": "mask-ones"}
    assert all(f.shape == (2, 6) for f in feeds.values())
    text = generated.describe()
    assert "attention_mask int64[2, 6]: attention mask" in text and len(text.splitlines()) == 5


def test_pixels_cast_to_float_use_the_whole_range():
    nodes = [helper.make_node("Cast", ["image"], ["x"], to=TensorProto.FLOAT),
             helper.make_node("MatMul", ["x", "W"], ["y"])]
    model = _model(nodes, [helper.make_tensor_value_info("image", TensorProto.UINT8, ["batch", 16])],
                   [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["batch", 4])],
                   [numpy_helper.from_array(np.ones((16, 4), np.float32), "W")])
    generated = generate_inputs(model, samples=64)
    image = generated.feeds["image"]
    assert image.dtype == np.uint8 and image.min() < 30 and image.max() > 225
    assert rules_by_name(generated)["image"].rule == "full-range"


def unknown_int_model():
    """An int64 input that only feeds arithmetic: no way to know what values it takes."""
    nodes = [helper.make_node("Cast", ["count"], ["c"], to=TensorProto.FLOAT),
             helper.make_node("Mul", ["X", "c"], ["xc"]),
             helper.make_node("MatMul", ["xc", "W"], ["Y"], name="fc")]
    rng = np.random.default_rng(0)
    return _model(nodes, [helper.make_tensor_value_info("X", TensorProto.FLOAT, ["batch", 64]),
                          helper.make_tensor_value_info("count", TensorProto.INT64, ["batch", 1])],
                  [helper.make_tensor_value_info("Y", TensorProto.FLOAT, ["batch", 48])],
                  [numpy_helper.from_array(builders.rand(rng, 64, 48, scale=0.1), "W")])


def test_unknown_integer_input_is_refused():
    with pytest.raises(InvalidModel) as info:
        make_inputs(unknown_int_model())
    message = str(info.value)
    assert "'count'" in message and "int64" in message and "meaningful" in message and "--data" in message
    assert "--no-check" in message and "\n" not in message
    with pytest.raises(InvalidModel):
        generate_inputs(unknown_int_model())


def test_unknown_integer_input_through_the_cli(tmp_path):
    src, out = tmp_path / "count.onnx", tmp_path / "out.onnx"
    onnx.save(unknown_int_model(), src)
    proc = subprocess.run([sys.executable, "-m", "onnxvq.cli", "compress", str(src), "-o", str(out),
                           "--min-elements", "0", "--quiet"], capture_output=True, text=True, cwd=REPO,
                          env={**os.environ, "PYTHONPATH": str(REPO)}, timeout=120)
    assert proc.returncode == ExitCode.INVALID_MODEL, proc.stderr
    assert "Traceback" not in proc.stderr and proc.stderr.startswith("onnxvq: error:")
    assert len(proc.stderr.strip().splitlines()) == 1 and "'count'" in proc.stderr and "--data" in proc.stderr
    assert sorted(p.name for p in tmp_path.iterdir()) == ["count.onnx"]  # refused before any work
    # with real inputs it runs
    data = tmp_path / "inputs.npz"
    rng = np.random.default_rng(0)
    np.savez(data, X=rng.standard_normal((4, 64)).astype(np.float32), count=np.full((4, 1), 3, np.int64))
    proc = subprocess.run([sys.executable, "-m", "onnxvq.cli", "compress", str(src), "-o", str(out),
                           "--min-elements", "0", "--quiet", "--data", str(data)], capture_output=True, text=True,
                          cwd=REPO, env={**os.environ, "PYTHONPATH": str(REPO)}, timeout=120)
    assert proc.returncode == 0, proc.stderr


def test_float_inputs_unchanged():
    """Float inputs: the same standard-normal draws as before, whatever integer inputs sit beside them."""
    for model in (builders.mlp_model(k=32, hidden=16), builders.shared_weight_model()):
        rng = np.random.default_rng(5)
        expected = {}
        for value in model.graph.input:
            shape = [d.dim_value if d.dim_value > 0 else (7 if i == 0 else 1)
                     for i, d in enumerate(value.type.tensor_type.shape.dim)]
            expected[value.name] = rng.standard_normal(shape).astype(np.float32)
        got = generate_inputs(model, samples=7, seed=5)
        assert set(got.feeds) == set(expected)
        for name in expected:
            assert np.array_equal(got.feeds[name], expected[name])
        assert {r.rule for r in got.rules} == {"random-normal"}
    # an integer token input before a float one leaves the float draws alone
    model = encoder(extra_inputs=[("attention_mask", TensorProto.INT64)])
    model.graph.input.append(helper.make_tensor_value_info("Z", TensorProto.FLOAT, [3, 4]))
    model.graph.node.append(helper.make_node("Identity", ["Z"], ["Z_out"]))
    model.graph.output.append(helper.make_tensor_value_info("Z_out", TensorProto.FLOAT, [3, 4]))
    z = generate_inputs(model, seed=2).feeds["Z"]
    assert np.array_equal(z, np.random.default_rng(2).standard_normal((3, 4)).astype(np.float32))


def test_generated_ids_make_the_check_meaningful():
    """Token ids that differ make a pooled embedding differ: what zeros hid (cosine 1.000)."""
    from onnxvq.check import check_parity

    model = encoder()
    other = onnx.ModelProto()
    other.CopyFrom(model)
    table = numpy_helper.to_array(next(t for t in other.graph.initializer if t.name == "table")).copy()
    # Only row 0 (padding) agrees: all-zero ids would see no difference, real ids do.
    table[1:] = np.random.default_rng(9).standard_normal(table[1:].shape)
    for i, t in enumerate(other.graph.initializer):
        if t.name == "table":
            other.graph.initializer[i].CopyFrom(numpy_helper.from_array(table, "table"))
    feeds = make_inputs(model, samples=4)
    assert check_parity(model, other, feeds).summary()["cosine"] < 0.9
    zeros = {"ids": np.zeros_like(feeds["ids"])}
    assert check_parity(model, other, zeros).summary()["cosine"] > 0.999999


def test_token_ids_carried_into_a_loop_body_and_a_compressed_gather():
    rng = np.random.default_rng(0)
    table = numpy_helper.from_array(rng.standard_normal((12, 4)).astype(np.float32), "table")
    body = helper.make_graph(
        [helper.make_node("Identity", ["cond_in"], ["cond_out"]),
         helper.make_node("Identity", ["ids_in"], ["ids_out"]),
         helper.make_node("Gather", ["table", "ids_in"], ["emb"])],
        "body",
        [helper.make_tensor_value_info("i", TensorProto.INT64, []),
         helper.make_tensor_value_info("cond_in", TensorProto.BOOL, []),
         helper.make_tensor_value_info("ids_in", TensorProto.INT64, ["batch", "seq"])],
        [helper.make_tensor_value_info("cond_out", TensorProto.BOOL, []),
         helper.make_tensor_value_info("ids_out", TensorProto.INT64, ["batch", "seq"]),
         helper.make_tensor_value_info("emb", TensorProto.FLOAT, ["batch", "seq", 4])])
    nodes = [helper.make_node("Loop", ["trip", "", "ids"], ["ids_final", "embs"], body=body)]
    model = _model(nodes, [helper.make_tensor_value_info("ids", TensorProto.INT64, ["batch", "seq"])],
                   [helper.make_tensor_value_info("embs", TensorProto.FLOAT, [None, "batch", "seq", 4])],
                   [table, numpy_helper.from_array(np.array(2, np.int64), "trip")])
    ids = generate_inputs(model, samples=2).feeds["ids"]
    assert ids.shape == (2, DEFAULT_SEQUENCE_LENGTH) and 1 <= ids.min() and ids.max() < 12
    # an embedding onnxvq already compressed: V is the op's out_features
    from onnxvq.ops.schema import DOMAIN, GATHER_OP_TYPE

    node = helper.make_node(GATHER_OP_TYPE, ["tok", "codes", "codebooks"], ["e"], domain=DOMAIN, name="emb_vq",
                            out_features=9, in_features=4)
    graph = helper.make_graph([node], "vq", [helper.make_tensor_value_info("tok", TensorProto.INT32, ["b", "s"])],
                              [helper.make_tensor_value_info("e", TensorProto.FLOAT, None)])
    generated = generate_inputs(helper.make_model(graph), samples=2)
    assert generated.feeds["tok"].dtype == np.int32 and generated.feeds["tok"].max() < 9
    assert "'emb_vq'" in generated.rules[0].detail
