"""Calibration statistics (onnxvq.calibration) against plain-numpy references written the slow way.

The conv reference builds each im2col row with explicit loops over output positions and kernel
offsets, and is itself checked against ONNX Runtime: its rows times the weight's matrix view must
give the convolution's output, so a wrong pad, stride or flatten order cannot hide in both.
"""
import itertools

import numpy as np
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper, numpy_helper

from onnxvq.calibration import LayerStats, collect_stats
from onnxvq.compress import plan_jobs
from onnxvq.config import build_plan
from onnxvq.errors import ConfigError, InvalidModel, RuntimeFailure

from . import builders

ALL_ROWS = 10**7  # max_rows that keeps every row


def jobs_of(model):
    jobs, _ = plan_jobs(model, build_plan(None, {"min_elements": 0, "protect": ""}))
    return {job.first.display_name: job for job in jobs}


def stats_by_name(model, feeds, **kwargs):
    jobs = jobs_of(model)
    stats = collect_stats(model, list(jobs.values()), feeds, **kwargs)
    return {name: stats[job.first.weight_key] for name, job in jobs.items() if job.first.weight_key in stats}


def reference(rows_per_group):
    """(hessian [G, K, K], mean [G, K]) of explicit rows, in float64."""
    rows = [np.asarray(r, np.float64) for r in rows_per_group]
    return np.stack([r.T @ r / len(r) for r in rows]), np.stack([r.mean(axis=0) for r in rows])


def assert_stats(got: LayerStats, rows_per_group, rtol=1e-5):
    hessian, mean = reference(rows_per_group)
    assert got.rows == len(rows_per_group[0])
    assert got.hessian.shape == hessian.shape and got.hessian.dtype == np.float64
    np.testing.assert_allclose(got.hessian, hessian, rtol=rtol, atol=rtol * np.abs(hessian).max())
    np.testing.assert_allclose(got.mean, mean, rtol=rtol, atol=rtol * np.abs(mean).max())
    assert not got.diagonal and got.row_weights is None


def normal(shape, seed=0):
    return np.random.default_rng(seed).standard_normal(shape).astype(np.float32)


# --- MatMul / Gemm ----------------------------------------------------------------------------

def test_matmul_on_3d_activation_and_gemm_match_the_reference():
    model = builders.mlp_model(k=12, hidden=10, n=4)
    x = normal((5, 3, 12))
    got = stats_by_name(model, {"X": x}, batch_size=2, max_rows=ALL_ROWS)
    w = {t.name: numpy_helper.to_array(t) for t in model.graph.initializer}
    hidden = np.maximum(x @ w["W1"] + w["b1"], 0).reshape(-1, 10)  # the Gemm's input, computed inside the model
    assert_stats(got["fc1"], [x.reshape(-1, 12)])   # rows = batch * tokens
    assert got["fc1"].rows == 15
    assert_stats(got["fc2"], [hidden])


def test_a_shared_weight_gets_the_rows_of_both_sites():
    model = builders.shared_weight_model(k=6, n=4)
    x, x2 = normal((7, 6), 1), normal((7, 6), 2) * 3 + 1
    got = stats_by_name(model, {"X": x, "X2": x2}, batch_size=3, max_rows=ALL_ROWS)
    assert list(got) == ["left"]  # one job for the weight
    assert_stats(got["left"], [np.concatenate([x, x2])])
    small = stats_by_name(model, {"X": x, "X2": x2}, batch_size=3, max_rows=6)["left"]
    assert 0 < small.rows <= 6   # the budget is the layer's, not each site's


# --- convolutions -------------------------------------------------------------------------------

def conv_model(cin, cout, kernel, spatial, **attrs):
    """Relu -> Conv (no bias): the conv reads an activation the model computes."""
    group = attrs.get("group", 1)
    w = normal((cout, cin // group, *kernel), 3)
    nodes = [helper.make_node("Relu", ["x"], ["r"], name="relu"),
             helper.make_node("Conv", ["r", "w"], ["y"], name="conv", **attrs)]
    graph = helper.make_graph(nodes, "conv", [helper.make_tensor_value_info("x", TensorProto.FLOAT,
                                                                            ["batch", cin, *spatial])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT,
                                                             ["batch"] + [None] * (1 + len(spatial)))],
                              [numpy_helper.from_array(w, "w")])
    return builders._model(graph)


def same_pads(size, k, s, d, upper):
    total = max(0, (-(-size // s) - 1) * s + (k - 1) * d + 1 - size)
    return (total // 2, total - total // 2) if upper else (total - total // 2, total // 2)


def reference_conv_rows(x, kernel, *, strides=None, pads=None, dilations=None, group=1, auto_pad="NOTSET"):
    """Rows per group, one per (sample, output position), built entry by entry."""
    rank = len(kernel)
    strides, dilations = strides or [1] * rank, dilations or [1] * rank
    if auto_pad.startswith("SAME"):
        begin_end = [same_pads(n, k, s, d, auto_pad == "SAME_UPPER")
                     for n, k, s, d in zip(x.shape[2:], kernel, strides, dilations)]
    elif auto_pad == "VALID" or pads is None:
        begin_end = [(0, 0)] * rank
    else:
        begin_end = list(zip(pads[:rank], pads[rank:]))
    padded = np.pad(x, [(0, 0), (0, 0), *begin_end])
    out = [(padded.shape[2 + i] - (kernel[i] - 1) * dilations[i] - 1) // strides[i] + 1 for i in range(rank)]
    per_group = x.shape[1] // group
    rows = [[] for _ in range(group)]
    for b in range(x.shape[0]):
        for position in itertools.product(*map(range, out)):
            for g in range(group):
                row = []
                for c in range(g * per_group, (g + 1) * per_group):
                    for offset in itertools.product(*map(range, kernel)):
                        at = tuple(p * s + o * d for p, s, o, d in zip(position, strides, offset, dilations))
                        row.append(padded[(b, c, *at)])
                rows[g].append(row)
    return [np.array(r) for r in rows], out


def check_reference_against_ort(model, x, rows, out):
    """The reference rows reproduce ORT's conv output: y[b, n, pos] = row(b, pos) . W[:, n] per group."""
    y = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"]).run(None, {"x": x})[0]
    w = numpy_helper.to_array(model.graph.initializer[0])
    group = len(rows)
    per_group = w.shape[0] // group
    assert list(y.shape[2:]) == out
    for g, r in enumerate(rows):
        w_view = w[g * per_group:(g + 1) * per_group].reshape(per_group, -1).T   # W[K, N] of the group
        want = np.moveaxis(y[:, g * per_group:(g + 1) * per_group], 1, -1).reshape(-1, per_group)
        np.testing.assert_allclose(r @ w_view, want, rtol=1e-4, atol=1e-4)


CONVS = {
    "2d_stride_pads_dilation_group": (4, 6, [3, 3], [11, 9],
                                      {"strides": [2, 2], "pads": [1, 2, 2, 0], "dilations": [2, 2], "group": 2}),
    "same_upper": (3, 4, [4, 3], [9, 7], {"strides": [2, 1], "auto_pad": "SAME_UPPER"}),
    "same_lower": (3, 4, [4, 3], [9, 7], {"strides": [2, 1], "auto_pad": "SAME_LOWER"}),
    "valid": (2, 3, [2, 3], [6, 7], {"strides": [1, 2], "auto_pad": "VALID"}),
    "1d": (3, 5, [5], [17], {"strides": [2], "pads": [1, 0]}),
    "3d": (2, 4, [3, 2, 3], [7, 6, 5], {"strides": [2, 1, 2], "pads": [1, 0, 1, 0, 1, 1]}),
    "depthwise": (6, 12, [3, 3], [8, 7], {"group": 6, "pads": [1, 1, 1, 1]}),
}


@pytest.mark.parametrize("case", list(CONVS))
def test_conv_matches_the_im2col_reference(case):
    cin, cout, kernel, spatial, attrs = CONVS[case]
    model = conv_model(cin, cout, kernel, spatial, **attrs)
    x = normal((3, cin, *spatial), 4)
    rows, out = reference_conv_rows(np.maximum(x, 0), kernel, **attrs)
    check_reference_against_ort(model, x, rows, out)
    got = stats_by_name(model, {"x": x}, batch_size=2, max_rows=ALL_ROWS)["conv"]
    group, k = attrs.get("group", 1), cin // attrs.get("group", 1) * int(np.prod(kernel))
    assert got.hessian.shape == (group, k, k) and got.mean.shape == (group, k)
    assert_stats(got, rows)


def test_conv_transpose_gets_the_per_channel_diagonal():
    model = builders.conv_transpose_model()   # weight [16, 12, 3, 3], group 2: W[K = 16 * 9, N = 12]
    x = normal((3, 16, 5, 6), 5) + 0.5
    got = stats_by_name(model, {"x": x}, max_rows=ALL_ROWS)["deconv"]
    pixels = np.moveaxis(x, 1, -1).reshape(-1, 16).astype(np.float64)
    assert got.diagonal and got.rows == 3 * 5 * 6
    assert got.hessian.shape == (1, 144, 144)
    np.testing.assert_allclose(np.diag(got.hessian[0]), np.repeat((pixels ** 2).mean(axis=0), 9), rtol=1e-6)
    assert np.count_nonzero(got.hessian[0] - np.diag(np.diag(got.hessian[0]))) == 0
    np.testing.assert_allclose(got.mean[0], np.repeat(pixels.mean(axis=0), 9), rtol=1e-6, atol=1e-9)


# --- subsampling --------------------------------------------------------------------------------

def correlated(shape, seed):
    """Rows with a non-zero mean and correlated features, so H is far from a multiple of I."""
    rng = np.random.default_rng(seed)
    mix = rng.standard_normal((shape[-1], shape[-1])).astype(np.float32)
    return (rng.standard_normal(shape).astype(np.float32) @ mix + 0.7).astype(np.float32)


def matmul_model(k=8, n=5, tokens=50, batch="batch"):
    w = normal((k, n), 6)
    graph = helper.make_graph([helper.make_node("MatMul", ["x", "w"], ["y"], name="mm")], "mm",
                              [helper.make_tensor_value_info("x", TensorProto.FLOAT, [batch, tokens, k])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [batch, tokens, n])],
                              [numpy_helper.from_array(w, "w")])
    return builders._model(graph)


SUBSAMPLED = {
    "matmul": lambda: (matmul_model(), "mm", {"x": correlated((20, 50, 8), 7)}),
    "conv": lambda: (conv_model(2, 3, [3, 3], [12, 12], pads=[1, 1, 1, 1]), "conv",
                     {"x": np.moveaxis(correlated((16, 12, 12, 2), 8), -1, 1).copy()}),
}


@pytest.mark.parametrize("case", list(SUBSAMPLED))
def test_subsampling_is_bounded_deterministic_and_close_to_the_full_statistics(case):
    model, name, feeds = SUBSAMPLED[case]()
    full = stats_by_name(model, feeds, batch_size=4, max_rows=ALL_ROWS)[name]
    first = stats_by_name(model, feeds, batch_size=4, max_rows=600, seed=3)[name]
    again = stats_by_name(model, feeds, batch_size=4, max_rows=600, seed=3)[name]
    other = stats_by_name(model, feeds, batch_size=4, max_rows=600, seed=4)[name]
    assert full.rows >= 1000
    assert first.rows == 600  # every batch has more rows than its quota: the budget is spent exactly
    np.testing.assert_array_equal(first.hessian, again.hessian)
    assert not np.array_equal(first.hessian, other.hessian)
    error = np.linalg.norm(first.hessian - full.hessian) / np.linalg.norm(full.hessian)
    assert error < 0.2
    assert np.linalg.norm(first.mean - full.mean) / np.linalg.norm(full.mean) < 0.2


def test_fewer_samples_than_batches_still_respects_max_rows():
    model, name, feeds = SUBSAMPLED["matmul"]()
    got = stats_by_name(model, feeds, batch_size=1, max_rows=7)[name]   # 20 batches share 7 rows
    assert 0 < got.rows <= 7


# --- Gather -------------------------------------------------------------------------------------

def test_gather_row_weights_count_the_ids_negative_ones_wrapped():
    vocab = 10
    table = normal((vocab, 4), 9)
    graph = helper.make_graph([helper.make_node("Gather", ["table", "ids"], ["y"], name="embed", axis=0)], "gather",
                              [helper.make_tensor_value_info("ids", TensorProto.INT64, ["batch", 6])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["batch", 6, 4])],
                              [numpy_helper.from_array(table, "table")])
    model = builders._model(graph)
    ids = np.random.default_rng(10).integers(-vocab, vocab // 2, (7, 6))   # rows 5..9 only via negative ids
    got = stats_by_name(model, {"ids": ids}, batch_size=3)["embed"]
    counts = np.zeros(vocab)
    for i in ids.ravel():
        counts[i if i >= 0 else i + vocab] += 1
    assert got.hessian is None and got.mean is None and got.rows == ids.size
    np.testing.assert_allclose(got.row_weights, counts / ids.size)
    assert got.row_weights[5:].sum() > 0


# --- batching, skipped layers, errors -----------------------------------------------------------

def test_a_fixed_batch_model_runs_one_sample_at_a_time():
    model = matmul_model(tokens=4, batch=1)
    x = correlated((5, 4, 8), 11)
    got = stats_by_name(model, {"x": x}, batch_size=8, max_rows=ALL_ROWS)["mm"]
    assert_stats(got, [x.reshape(-1, 8)])
    pairs = matmul_model(tokens=4, batch=2)
    got = stats_by_name(pairs, {"x": x}, max_rows=ALL_ROWS)["mm"]
    assert_stats(got, [x[:4].reshape(-1, 8)])   # batches of 2: the fifth sample is left out
    with pytest.raises(InvalidModel, match="fix the batch to 2"):
        collect_stats(pairs, list(jobs_of(pairs).values()), {"x": x[:1]})


def test_layers_inside_subgraphs_get_no_entry():
    model = builders.if_model(k=6, n=4)
    jobs = list(jobs_of(model).values())
    assert jobs  # both branches' MatMuls are sites ...
    assert collect_stats(model, jobs, {"X": normal((3, 6)), "cond": np.array(True)}) == {}  # ... read in bodies


def test_bad_inputs_raise_one_clear_error():
    model = matmul_model()
    jobs = list(jobs_of(model).values())
    with pytest.raises(InvalidModel, match="no samples"):
        collect_stats(model, jobs, {"x": np.zeros((0, 50, 8), np.float32)})
    with pytest.raises(InvalidModel, match="different numbers of samples"):
        collect_stats(builders.shared_weight_model(k=6, n=4), list(jobs_of(builders.shared_weight_model(k=6, n=4))
                                                                    .values()),
                      {"X": normal((3, 6)), "X2": normal((4, 6))})
    with pytest.raises(InvalidModel, match="no array for model input"):
        collect_stats(model, jobs, {"X": normal((2, 50, 8))})
    with pytest.raises(ConfigError, match="max_rows"):
        collect_stats(model, jobs, {"x": normal((2, 50, 8))}, max_rows=0)
    gemm = builders.mlp_model(k=12, hidden=10, n=4)   # fc2's input is computed by ORT
    with pytest.raises(RuntimeFailure, match="onnxruntime failed"):
        collect_stats(gemm, list(jobs_of(gemm).values()), {"X": np.zeros((2, 3, 12), np.float64)})


@pytest.mark.parametrize("builder", [builders.cnn_model, builders.embedding_model, builders.conv_transpose_model])
def test_every_main_graph_layer_gets_stats_shaped_like_its_matrix_view(builder):
    model = builder()
    jobs = list(jobs_of(model).values())
    feeds = {v.name: (np.random.default_rng(12).integers(0, 8, (3, 8)) if v.name == "ids" else
                      normal([3, *[d.dim_value for d in v.type.tensor_type.shape.dim[1:]]], 12))
             for v in model.graph.input}
    stats = collect_stats(model, jobs, feeds, batch_size=2)
    assert set(stats) == {job.first.weight_key for job in jobs}
    for job in jobs:
        site, got = job.first, stats[job.first.weight_key]
        k, n = site.shape
        if site.kind.name == "gather":
            assert got.row_weights.shape == (n,) and np.isclose(got.row_weights.sum(), 1)
            continue
        groups = site.params["group"] if site.kind.name == "conv" and not site.params["transposed"] else 1
        assert got.hessian.shape == (groups, k, k) and got.mean.shape == (groups, k), site.display_name
        assert np.allclose(got.hessian, got.hessian.transpose(0, 2, 1))
        assert (np.diagonal(got.hessian, axis1=1, axis2=2) >= 0).all() and got.rows > 0


def test_constant_ids_count_as_lookups():
    model = builders.embedding_model()   # pos_embed gathers the constant ids 0..7
    ids = np.random.default_rng(13).integers(0, 64, (4, 8))
    got = stats_by_name(model, {"ids": ids}, batch_size=3, progress=True)
    np.testing.assert_allclose(got["pos_embed"].row_weights, np.full(8, 1 / 8))
    np.testing.assert_allclose(got["tok_embed"].row_weights, np.bincount(ids.ravel(), minlength=64) / ids.size)


def test_layers_too_wide_for_a_hessian_get_no_statistics(monkeypatch):
    """A K x K float64 H per layer is the memory bound: wider layers are left to the data-free fit."""
    import onnxvq.calibration as calibration

    model = builders.mlp_model(k=12, hidden=10, n=4)
    jobs = list(jobs_of(model).values())
    feeds = {"X": normal((5, 3, 12))}
    widest = max(j.first.shape[0] for j in jobs if j.first.kind.name != "gather")
    monkeypatch.setattr(calibration, "MAX_HESSIAN_INPUTS", widest - 1)
    stats = calibration.collect_stats(model, jobs, feeds)
    for job in jobs:
        assert (job.first.weight_key in stats) == (job.first.shape[0] < widest)
