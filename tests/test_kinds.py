"""Site kinds beyond Gemm/MatMul: Conv (1-D/2-D/3-D, groups, dilations, pads, auto_pad), ConvTranspose,
Gather embeddings, float16/bfloat16 weights, Cast and Constant-node weights, BatchNorm folding.

Each compressed graph is compared with its decoded dense twin (tight tier), and for convolutions
ONNX Runtime's optimized graph must hold no decoder node: the weight is folded at session creation.
"""
import os

import numpy as np
import onnx
import onnxruntime as ort
import pytest

import onnxvq
from onnxvq.compress import compress_model
from onnxvq.config import build_plan
from onnxvq.errors import ConfigError
from onnxvq.inspect import inventory
from onnxvq.ops.schema import DOMAIN, GATHER_OP_TYPE
from onnxvq.passes.fold_bn import fold_batchnorm
from onnxvq.report import layer_rows, totals

from . import builders
from .twin import decoded_twin

TWIN_ATOL = 2e-5  # relative to the output's scale: only float summation order differs
METHODS = {
    "kmeans4": {"method": "kmeans", "bits": 4},
    "kmeans3_g4": {"method": "kmeans", "bits": 3, "group_size": 4},
    "pq2_d4": {"method": "pq", "bits": 2, "dim": 4},
    "pq3_d3_out": {"method": "pq", "bits": 3, "dim": 3, "axis": "out"},
    "rq": {"method": "rq", "bits": 2, "dim": 4, "stages": 2},
    "binary": {"method": "binary"},
    "svd": {"method": "svd", "rank": 3},
}
CONV_BUILDERS = {
    "cnn": builders.cnn_model,
    "conv1d": lambda: builders.conv_nd_model(1),
    "conv3d": lambda: builders.conv_nd_model(3),
    "conv_transpose": builders.conv_transpose_model,
    "conv_transpose_g1": lambda: builders.conv_transpose_model(group=1),
    "bf16_behind_cast": builders.bfloat16_weight_model,
}


def feeds_for(model, batch=3, seed=0):
    rng = np.random.default_rng(seed)
    feeds = {}
    for value in model.graph.input:
        t = value.type.tensor_type
        shape = [d.dim_value if d.dim_value > 0 else batch for d in t.shape.dim]
        if t.elem_type == onnx.TensorProto.INT64:
            feeds[value.name] = rng.integers(-64, 64, shape)  # negative ids count from the end, as in Gather
        else:
            dtype = onnx.helper.tensor_dtype_to_np_dtype(t.elem_type)
            feeds[value.name] = rng.standard_normal(shape).astype(dtype)
    return feeds


def run(model, feeds, custom):
    payload = model.SerializeToString()
    sess = onnxvq.session(payload) if custom else ort.InferenceSession(payload, providers=["CPUExecutionProvider"])
    return sess.run(None, feeds)


def assert_matches_twin(original, result, fmt, atol=TWIN_ATOL):
    feeds = feeds_for(original)
    twin = decoded_twin(original, result)
    uses_domain = any(n.domain == DOMAIN for n in result.model.graph.node)
    for got, want in zip(run(result.model, feeds, uses_domain), run(twin, feeds, False)):
        assert got.dtype == want.dtype
        scale = max(float(np.abs(want.astype(np.float64)).max()), 1e-6)
        np.testing.assert_allclose(got.astype(np.float64), want.astype(np.float64), rtol=0, atol=atol * scale)


@pytest.mark.parametrize("fmt", ["custom", "portable"])
@pytest.mark.parametrize("method", sorted(METHODS))
@pytest.mark.parametrize("builder", sorted(CONV_BUILDERS))
def test_convolutions_match_their_decoded_twin(builder, method, fmt):
    model = CONV_BUILDERS[builder]()
    before = model.SerializeToString()
    result = compress_model(model, build_plan({**METHODS[method], "min_elements": 0, "format": fmt}))
    assert model.SerializeToString() == before, "the input model was modified"
    onnx.checker.check_model(result.model, full_check=True)
    assert {s.op_type for j in result.jobs for s in j.sites} & {"Conv", "ConvTranspose"}
    # bfloat16 storage: the twin rounds W_hat to bfloat16, the decoder feeds float32 straight in.
    assert_matches_twin(model, result, fmt, atol=5e-3 if builder.startswith("bf16") else TWIN_ATOL)
    assert [o.name for o in result.model.graph.output] == [o.name for o in model.graph.output]


def optimized_graph(model, tmp_path, custom):
    options = ort.SessionOptions()
    options.optimized_model_filepath = str(tmp_path / "optimized.onnx")
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_BASIC
    payload = model.SerializeToString()
    (onnxvq.session(payload, options) if custom else ort.InferenceSession(payload, options,
                                                                         providers=["CPUExecutionProvider"]))
    return onnx.load(options.optimized_model_filepath)


@pytest.mark.parametrize("method", ["kmeans4", "kmeans3_g4", "pq3_d3_out", "rq", "binary", "svd"])
def test_runtime_folds_the_conv_decoder_into_a_dense_weight(method, tmp_path):
    model = builders.cnn_model()
    plan = build_plan({**METHODS[method], "min_elements": 0, "enabled_op_types": ["Conv"]})
    result = compress_model(model, plan)
    assert len(result.model.graph.node) > len(model.graph.node)  # the decoders are in the file ...
    optimized = optimized_graph(result.model, tmp_path, custom=False)
    reference = optimized_graph(fold_batchnorm_copy(model), tmp_path, custom=False)
    # ... and gone once the session exists: the same ops as the original's optimized graph.
    assert [n.op_type for n in optimized.graph.node] == [n.op_type for n in reference.graph.node]
    conv_weights = [n.input[1] for n in optimized.graph.node if n.op_type == "Conv"]
    assert all(w in {t.name for t in optimized.graph.initializer} for w in conv_weights)
    assert_matches_twin(model, result, "custom")


def fold_batchnorm_copy(model):
    import copy

    out = copy.deepcopy(model)
    fold_batchnorm(out)
    return out


@pytest.mark.parametrize("builder", ["cnn", "conv_transpose", "conv_transpose_g1"])
def test_batchnorm_folding_keeps_the_outputs(builder):
    model = CONV_BUILDERS[builder]()
    folded = fold_batchnorm_copy(model)
    assert not any(n.op_type == "BatchNormalization" for n in folded.graph.node)
    onnx.checker.check_model(folded, full_check=True)
    feeds = feeds_for(model)
    for a, b in zip(run(folded, feeds, False), run(model, feeds, False)):
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-5 * float(np.abs(b).max()))
    # Only the replaced tensors go: nothing else in the model changes.
    kept = {t.name for t in folded.graph.initializer}
    assert not {"bn.scale", "bn.bias", "bn.mean", "bn.var"} & kept


def test_compress_folds_batchnorm_first():
    model = builders.cnn_model()
    result = compress_model(model, build_plan({"method": "kmeans", "bits": 6, "min_elements": 0}))
    assert result.folded_batchnorms == [("conv1", "bn1")]
    assert not any(n.op_type == "BatchNormalization" for n in result.model.graph.node)
    # Quantizing the folded weight: close to the original at 6 bits.
    feeds = feeds_for(model)
    got, want = run(result.model, feeds, True)[0], run(model, feeds, False)[0]
    assert np.linalg.norm(got - want) / np.linalg.norm(want) < 0.05


def test_op_types_restrict_the_kinds():
    model = builders.cnn_model()
    result = compress_model(model, build_plan({"method": "kmeans", "bits": 4, "min_elements": 0,
                                               "enabled_op_types": ["Gemm"]}))
    assert [s.display_name for j in result.jobs for s in j.sites] == ["fc"]
    assert result.folded_batchnorms == []  # no Conv in scope: the graph's convolutions stay as they were
    assert [n.op_type for n in result.model.graph.node if n.op_type == "BatchNormalization"] == ["BatchNormalization"]
    with pytest.raises(ConfigError, match="cannot be compressed"):
        build_plan({"enabled_op_types": ["LSTM"]})


def test_gemm_codes_do_not_depend_on_the_other_kinds():
    """Today's Gemm/MatMul behaviour: the same flags give the same codes with or without conv sites."""
    model = builders.cnn_model()
    every = compress_model(model, build_plan({"method": "pq", "bits": 3, "dim": 2, "min_elements": 0}))
    only = compress_model(model, build_plan({"method": "pq", "bits": 3, "dim": 2, "min_elements": 0,
                                             "enabled_op_types": ["Gemm", "MatMul"]}))
    pick = lambda r: {t.name: t.raw_data for t in r.model.graph.initializer if t.name.startswith("fc.w.")}  # noqa: E731
    assert pick(every) == pick(only) and pick(only)


def test_depthwise_is_protected_by_default():
    model = builders.cnn_model()
    result = compress_model(model, build_plan({"method": "kmeans", "bits": 4, "min_elements": 0}))
    reasons = {s.display_name: s.reason for s in result.skipped}
    assert "depthwise" in reasons and "depthwise" in reasons["depthwise"]
    result = compress_model(model, build_plan({"method": "kmeans", "bits": 4, "min_elements": 0, "protect": []}))
    assert "depthwise" in {s.display_name for j in result.jobs for s in j.sites}
    result = compress_model(model, build_plan({"method": "kmeans", "bits": 4, "min_elements": 0,
                                               "protect": ["depthwise", "first_conv"]}))
    assert "conv1" in {s.display_name for s in result.skipped}


def test_float16_model_keeps_its_dtype():
    model = builders.float16_cnn_model()
    for fmt in ("custom", "portable"):
        result = compress_model(model, build_plan({"method": "kmeans", "bits": 4, "min_elements": 0, "format": fmt}))
        assert result.jobs
        row = next(r for r in layer_rows(result) if r["name"] == "conv1")
        assert row["original_bytes"] == 16 * 4 * 3 * 3 * 2  # float16 storage counted as stored
        assert_matches_twin(model, result, fmt, atol=2e-3)  # float16 arithmetic in both


@pytest.mark.parametrize("fmt", ["custom", "portable"])
@pytest.mark.parametrize("method", ["kmeans4", "kmeans3_g4", "pq2_d4", "pq3_d3_out", "rq", "binary", "svd"])
@pytest.mark.parametrize("variant", ["initializer", "float16_cast_constant_node"])
def test_embeddings_match_their_decoded_twin(variant, method, fmt):
    model = builders.embedding_model() if variant == "initializer" else \
        builders.embedding_model(table_dtype=np.float16, cast=True, constant_node=True)
    result = compress_model(model, build_plan({**METHODS[method], "min_elements": 0, "format": fmt}))
    onnx.checker.check_model(result.model, full_check=True)
    names = {s.display_name for j in result.jobs for s in j.sites}
    assert "tok_embed" in names
    gathers = [n for n in result.model.graph.node if n.op_type == GATHER_OP_TYPE]
    assert bool(gathers) == (fmt == "custom" and method != "svd")
    if variant != "initializer":  # the Cast and the Constant node went with the dense table
        assert not {"tok.cast", "tok.const"} & {n.name for n in result.model.graph.node}
    assert_matches_twin(model, result, fmt, atol=TWIN_ATOL if variant == "initializer" else 2e-3)


def test_gathers_that_are_not_embeddings_are_not_sites():
    model = builders.embedding_model()
    scan_names = [layer["name"] for layer in inventory(model)["layers"]]
    assert "tok_embed" in scan_names
    # Gather over an int64 shape tensor: no candidate, and no noise in the skip list.
    shape_gather = onnx.helper.make_node("Gather", ["pos.ids", "idx0"], ["g"], name="shape_gather")
    model.graph.node.append(shape_gather)
    model.graph.initializer.append(onnx.numpy_helper.from_array(np.array(0, np.int64), "idx0"))
    assert "shape_gather" not in [layer["name"] for layer in inventory(model)["layers"]]


def test_gather_along_another_axis_is_skipped_with_its_reason():
    model = builders.embedding_model()
    node = next(n for n in model.graph.node if n.name == "tok_embed")
    node.attribute[0].i = 1
    layers = {layer["name"]: layer for layer in inventory(model)["layers"]}
    assert "axis 1" in layers["tok_embed"]["skipped_reason"]


def test_inspect_counts_weights_in_constant_nodes():
    model = builders.embedding_model(constant_node=True)
    inv = inventory(model)
    table_bytes = 64 * 24 * 4
    assert inv["total_weight_bytes"] >= table_bytes
    assert inv["by_op_type"]["Gather"]["weight_bytes"] == table_bytes + 8 * 24 * 4
    assert inv["max_file_ratio"] is not None and inv["max_file_ratio"] > 1


def test_sizes_count_every_kind():
    model = builders.cnn_model()
    result = compress_model(model, build_plan({"method": "kmeans", "bits": 4, "min_elements": 0}))
    rows = layer_rows(result)
    by_name = {r["name"]: r for r in rows}
    assert by_name["conv2"]["original_bytes"] == 16 * 8 * 3 * 3 * 4
    assert by_name["conv2"]["code_bytes"] == (16 * 72 * 4 + 7) // 8  # one stream for the decoder, no fast-scan padding
    assert by_name["conv2"]["weight_shape"] == [16, 8, 3, 3]
    t = totals(rows)
    assert t["original_bytes"] == sum(r["original_bytes"] for r in rows if not r.get("skipped_reason"))


# --- portable Gather: gather over the codes, then decode ---------------------------------------
RUNTIME_DECODE_OPS = {"Shape", "Concat", "Gather", "Cast", "Add", "Less", "Where", "Div", "Mul", "Reshape",
                      "MatMul", "Slice"}


def _lookup_model(ids_dtype=np.int64, ids_shape=("batch", 8), *, vocab=64, dim=24, opset=builders.OPSET,
                  table_dtype=np.float32, seed=0):
    """Just Gather(table, ids): ids of any dtype and rank (() is a scalar id)."""
    rng = np.random.default_rng(seed)
    table = builders.rand(rng, vocab, dim, scale=0.5).astype(table_dtype)
    elem = onnx.helper.np_dtype_to_tensor_dtype(np.dtype(table_dtype))
    graph = onnx.helper.make_graph(
        [onnx.helper.make_node("Gather", ["tok.table", "ids"], ["tok"], name="tok_embed", axis=0)], "lookup",
        [onnx.helper.make_tensor_value_info("ids", onnx.helper.np_dtype_to_tensor_dtype(np.dtype(ids_dtype)),
                                            list(ids_shape))],
        [onnx.helper.make_tensor_value_info("tok", elem, [*ids_shape, dim])],
        [onnx.numpy_helper.from_array(table, "tok.table")])
    return builders._model(graph, opset)


def _ids(shape, dtype, vocab=64, seed=1):
    """Ids over [-V, V-1], both ends included (negatives count from the end, as in Gather)."""
    ids = np.random.default_rng(seed).integers(-vocab, vocab, shape).astype(dtype)
    if ids.ndim:
        ids.flat[0], ids.flat[-1] = -vocab, vocab - 1
    return ids


def _assert_close(got, want, atol):
    assert got.dtype == want.dtype and got.shape == want.shape
    scale = max(float(np.abs(want.astype(np.float64)).max()), 1e-6)
    np.testing.assert_allclose(got.astype(np.float64), want.astype(np.float64), rtol=0, atol=atol * scale)


@pytest.mark.parametrize("ids_dtype", [np.int32, np.int64])
@pytest.mark.parametrize("ids_shape", [(3, 8), (), (2, 3, 4)], ids=["rank2", "scalar", "rank3"])
@pytest.mark.parametrize("method", sorted(METHODS))
def test_portable_gather_matches_its_twin_for_any_ids(method, ids_shape, ids_dtype):
    model = _lookup_model(ids_dtype, ids_shape)
    result = compress_model(model, build_plan({**METHODS[method], "min_elements": 0, "format": "portable"}))
    onnx.checker.check_model(result.model, full_check=True)
    assert not any(n.domain == DOMAIN for n in result.model.graph.node)
    feeds = {"ids": _ids(ids_shape, ids_dtype)}
    (got,), (want,) = run(result.model, feeds, False), run(decoded_twin(model, result), feeds, False)
    _assert_close(got, want, TWIN_ATOL)


@pytest.mark.parametrize("method", ["kmeans4", "kmeans3_g4", "rq", "pq3_d3_out"])
def test_portable_gather_of_a_float16_table_stays_float16(method):
    model = _lookup_model(table_dtype=np.float16)
    result = compress_model(model, build_plan({**METHODS[method], "min_elements": 0, "format": "portable",
                                               "codebook_dtype": "float16"}))
    onnx.checker.check_model(result.model, full_check=True)
    feeds = {"ids": _ids((3, 8), np.int64)}
    (got,), (want,) = run(result.model, feeds, False), run(decoded_twin(model, result), feeds, False)
    assert got.dtype == np.float16
    _assert_close(got, want, 2e-3)


@pytest.mark.parametrize("opset", [11, 17])
@pytest.mark.parametrize("method", ["kmeans4", "kmeans3_g4", "pq2_d4", "pq3_d3_out", "rq", "binary"])
def test_portable_gather_is_valid_at_opset_11_and_17(method, opset):
    model = builders.embedding_model()
    model.opset_import[0].version = opset  # ReduceMean keeps its axes attribute up to opset 17
    onnx.checker.check_model(model, full_check=True)
    result = compress_model(model, build_plan({**METHODS[method], "min_elements": 0, "format": "portable"}))
    onnx.checker.check_model(result.model, full_check=True)
    assert_matches_twin(model, result, "portable")


@pytest.mark.parametrize("method", ["kmeans4", "kmeans3_g4", "pq2_d4", "rq", "binary"])
def test_runtime_keeps_uint8_codes_not_a_float_table(method, tmp_path):
    vocab, dim = 256, 24
    model = _lookup_model(vocab=vocab, dim=dim)
    result = compress_model(model, build_plan({**METHODS[method], "min_elements": 0, "format": "portable"}))
    layout = result.encoded[result.jobs[0].first.weight_key].layout
    T, R, S = layout.codes_shape
    optimized = optimized_graph(result.model, tmp_path, custom=False)
    inits = {t.name: t for t in optimized.graph.initializer}
    # The unpacking is folded into 1 byte per code ...
    codes = [t for t in inits.values() if t.data_type == onnx.TensorProto.UINT8]
    assert [list(t.dims) for t in codes] == [[R, T, S]]
    assert onnx.numpy_helper.to_array(codes[0]).nbytes == T * R * S
    # ... and no dense table exists (nor anything near its size).
    floats = [t for t in inits.values() if t.data_type in (onnx.TensorProto.FLOAT, onnx.TensorProto.FLOAT16)]
    assert all(int(np.prod(t.dims)) < vocab * dim // 2 for t in floats), [(t.name, list(t.dims)) for t in floats]
    # What runs per call is the lookup: the two Gathers (codes, codewords) and the decode around them.
    ops = [n.op_type for n in optimized.graph.node]
    assert set(ops) <= RUNTIME_DECODE_OPS and ops.count("Gather") == 2, ops
    assert not {"Mod", "Transpose"} & set(ops)  # the unpacking ran once, at session creation
    assert all(n.name.startswith("tok_embed") for n in optimized.graph.node)
    feeds = {"ids": _ids((3, 8), np.int64, vocab)}
    (got,), (want,) = run(result.model, feeds, False), run(decoded_twin(model, result), feeds, False)
    _assert_close(got, want, TWIN_ATOL)


def test_axis_out_gather_keeps_the_full_decode(tmp_path):
    """With axis out a table row is a column of M, so portable decodes the table (folded to dense)."""
    vocab, dim = 256, 24
    model = _lookup_model(vocab=vocab, dim=dim)
    result = compress_model(model, build_plan({**METHODS["pq3_d3_out"], "min_elements": 0, "format": "portable"}))
    optimized = optimized_graph(result.model, tmp_path, custom=False)
    assert [n.op_type for n in optimized.graph.node] == ["Gather"]
    table = next(t for t in optimized.graph.initializer if t.name == optimized.graph.node[0].input[0])
    assert list(table.dims) == [vocab, dim]


def test_matmul_runtime_auto_decodes_sequence_layers():
    """auto: the 2-D Gemm head runs on VQMatMul, the 3-D (sequence) MatMul on the folded decoder."""
    model = builders.mlp_model()  # fc1: MatMul on [batch, 3, K]; fc2: Gemm on [batch, hidden]
    plan = {"method": "kmeans", "bits": 4, "min_elements": 0}
    result = compress_model(model, build_plan(plan))
    by_site = {s.display_name: s.params["runtime"] for j in result.jobs for s in j.sites}
    assert by_site == {"fc1": "decode", "fc2": "auto"}  # auto: VQMatMul when the layout is fast-scan
    ops = {n.name: n.op_type for n in result.model.graph.node}
    assert ops["fc2"] == "VQMatMul" and ops["fc1"] != "VQMatMul"
    assert_matches_twin(model, result, "custom")
    forced = compress_model(model, build_plan({**plan, "matmul_runtime": "op"}))
    assert {n.op_type for n in forced.model.graph.node if n.name in ("fc1", "fc2")} == {"VQMatMul"}
    with pytest.raises(ConfigError, match="matmul_runtime"):
        build_plan({**plan, "matmul_runtime": "fast"})
    # A layout without a fast kernel (5-bit codes) runs on the folded decoder under auto.
    five = compress_model(model, build_plan({**plan, "bits": 5}))
    assert not any(n.op_type == "VQMatMul" for n in five.model.graph.node)
    assert_matches_twin(model, five, "custom")


def test_the_default_gives_convolutions_per_channel_codebooks():
    """No method options: convs get per-output-channel 5-bit codebooks; any global method option means
    every layer follows it (the built-in per-kind defaults step aside)."""
    model = builders.cnn_model()
    default = compress_model(model, build_plan({"min_elements": 0}))
    options = {s.display_name: j.config.options() for j in default.jobs for s in j.sites}
    assert options["conv2"]["group_size"] == 1 and options["conv2"]["bits"] == 5
    assert options["conv2"]["codebook_dtype"] == "float16"
    assert options["fc"]["group_size"] == 0 and options["fc"]["bits"] == 4  # Gemm keeps kmeans b4 per tensor
    explicit = compress_model(model, build_plan({"method": "kmeans", "bits": 4, "min_elements": 0}))
    assert all(j.config.options()["group_size"] == 0 for j in explicit.jobs)
    assert_matches_twin(model, default, "custom")
    embedding = builders.embedding_model()
    options = {s.display_name: j.config.options()
               for j in compress_model(embedding, build_plan({"min_elements": 0})).jobs for s in j.sites}
    assert options["tok_embed"]["group_size"] == 1 and options["tok_embed"]["bits"] == 4  # a codebook per row
    assert options["proj"]["bits"] == 5 and options["proj"]["group_size"] == 0
