"""The graph pass: every site kind, both formats, compared with the decoded dense twin (tight)."""
import numpy as np
import onnx
import onnxruntime as ort
import pytest

import onnxvq
from onnxvq.compress import METADATA_KEY, compress_model
from onnxvq.config import build_plan
from onnxvq.errors import ConfigError, InvalidWeights, NothingToCompress
from onnxvq.ops.schema import DOMAIN

from . import builders
from .twin import decoded_twin

# Tolerance tier 2: compressed graph vs its decoded dense twin (only float summation order differs).
TWIN_RTOL = 2e-5


def run_plain(model, feeds):
    sess = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    return sess.run(None, feeds)


def run_vq(model, feeds):
    return onnxvq.session(model.SerializeToString()).run(None, feeds)


def assert_close_to_twin(compressed, twin, feeds, fmt):
    got = run_vq(compressed, feeds) if fmt == "custom" else run_plain(compressed, feeds)
    want = run_plain(twin, feeds)
    for g, w in zip(got, want):
        scale = max(float(np.abs(w).max()), 1e-6)
        np.testing.assert_allclose(g, w, rtol=0, atol=TWIN_RTOL * scale * 10)


def feeds_for(model, batch=5, seed=0):
    from onnxvq.check import make_inputs

    return make_inputs(model, samples=batch, seed=seed)


PLANS = {
    "pq5d2": {"method": "pq", "bits": 5, "dim": 2},  # 8-bit codebooks would outweigh these small layers
    "pq3d3": {"method": "pq", "bits": 3, "dim": 3},
    "pq_out": {"method": "pq", "bits": 4, "dim": 4, "axis": "out"},
    "kmeans6": {"method": "kmeans", "bits": 6},
    "kmeans_grouped": {"method": "kmeans", "bits": 2, "group_size": 5},
    "binary": {"method": "binary"},
    "binary_pm1": {"method": "binary", "scaled": False},
    "rq": {"method": "rq", "bits": 3, "dim": 2, "stages": 3},
    "rq_out_fp16": {"method": "rq", "bits": 4, "dim": 2, "stages": 2, "axis": "out", "codebook_dtype": "float16"},
    "svd": {"method": "svd", "rank": 6},
}


@pytest.mark.parametrize("fmt", ["custom", "portable"])
@pytest.mark.parametrize("plan_name", sorted(PLANS))
@pytest.mark.parametrize("builder", ["gemm", "gemm_1n_bias", "gemm_scalar_bias", "gemm_no_trans", "mlp"])
def test_every_method_matches_its_decoded_twin(builder, plan_name, fmt):
    model = {
        "gemm": lambda: builders.gemm_model(),
        "gemm_1n_bias": lambda: builders.gemm_model(bias_shape="1n", alpha=1.0, beta=0.5),
        "gemm_scalar_bias": lambda: builders.gemm_model(bias_shape="scalar", trans_b=False),
        "gemm_no_trans": lambda: builders.gemm_model(trans_b=False, bias_shape=None, alpha=2.0),
        "mlp": lambda: builders.mlp_model(),
    }[builder]()
    before = model.SerializeToString()
    plan = build_plan({"matmul_runtime": "op", **PLANS[plan_name], "min_elements": 0, "format": fmt})
    result = compress_model(model, plan)
    assert model.SerializeToString() == before, "the input model was modified"
    onnx.checker.check_model(result.model, full_check=True)
    assert_close_to_twin(result.model, decoded_twin(model, result), feeds_for(model), fmt)
    # Names, inputs, outputs and metadata are kept.
    assert [i.name for i in result.model.graph.input] == [i.name for i in model.graph.input]
    assert [o.name for o in result.model.graph.output] == [o.name for o in model.graph.output]
    props = {p.key: p.value for p in result.model.metadata_props}
    assert METADATA_KEY in props
    for p in model.metadata_props:
        assert props[p.key] == p.value
    uses_custom = any(n.domain == DOMAIN for n in result.model.graph.node)
    assert uses_custom == (fmt == "custom" and plan_name != "svd")


def test_custom_and_portable_agree():
    model = builders.mlp_model()
    feeds = feeds_for(model, batch=9)
    custom = compress_model(model, build_plan({"matmul_runtime": "op", "method": "pq", "bits": 5, "dim": 3, "min_elements": 0}))
    portable = compress_model(model, build_plan({"matmul_runtime": "op", "method": "pq", "bits": 5, "dim": 3, "min_elements": 0,
                                                 "format": "portable"}))
    for a, b in zip(run_vq(custom.model, feeds), run_plain(portable.model, feeds)):
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-5 * np.abs(b).max())


def test_shared_weight_is_encoded_once():
    model = builders.shared_weight_model()
    result = compress_model(model, build_plan({"matmul_runtime": "op", "method": "pq", "bits": 4, "dim": 2, "min_elements": 0}))
    assert len(result.jobs) == 1 and len(result.jobs[0].sites) == 2
    codes = [t.name for t in result.model.graph.initializer if t.name.endswith("vq_codes")]
    assert len(codes) == 1
    assert "W" not in {t.name for t in result.model.graph.initializer}
    assert_close_to_twin(result.model, decoded_twin(model, result), feeds_for(model), "custom")


def test_shared_weight_with_conflicting_configs_names_both_nodes():
    plan = build_plan({"matmul_runtime": "op", "method": "pq", "bits": 4, "dim": 2, "min_elements": 0, "nodes": {"right": {"bits": 3}}})
    with pytest.raises(ConfigError, match="'left'.*'right'"):
        compress_model(builders.shared_weight_model(), plan)


@pytest.mark.parametrize("fmt", ["custom", "portable"])
def test_weights_inside_if_branches(fmt):
    model = builders.if_model()
    result = compress_model(model, build_plan({"matmul_runtime": "op", "method": "kmeans", "bits": 4, "min_elements": 0, "format": fmt}))
    assert sorted(s.display_name for j in result.jobs for s in j.sites) == ["else_fc", "then_fc"]
    onnx.checker.check_model(result.model, full_check=True)
    twin = decoded_twin(model, result)
    for cond in (True, False):
        feeds = {**feeds_for(model), "cond": np.array(cond)}
        assert_close_to_twin(result.model, twin, feeds, fmt)


def test_constant_node_weight_is_compressed_and_removed():
    model = builders.constant_node_model()
    result = compress_model(model, build_plan({"matmul_runtime": "op", "method": "pq", "bits": 4, "dim": 4, "min_elements": 0}))
    assert not any(n.op_type == "Constant" for n in result.model.graph.node)
    assert_close_to_twin(result.model, decoded_twin(model, result), feeds_for(model), "custom")


def test_unhandled_sites_are_listed_with_reasons():
    model = builders.gemm_model(k=8, n=4)
    with pytest.raises(NothingToCompress, match="min-elements"):
        compress_model(model, build_plan({"matmul_runtime": "op", "method": "pq", "min_elements": 1024}))
    with pytest.raises(NothingToCompress, match="not a constant"):
        compress_model(builders.non_constant_model(), build_plan({"matmul_runtime": "op", "method": "pq"}))
    plan = build_plan({"matmul_runtime": "op", "method": "pq", "bits": 4, "dim": 2, "min_elements": 0, "exclude": ["fc2"]})
    result = compress_model(builders.mlp_model(), plan)
    assert [s.display_name for s in result.skipped] == ["fc2"] and "exclude" in result.skipped[0].reason


def test_nan_weight_is_rejected_with_the_tensor_name():
    model = builders.gemm_model()
    w = onnx.numpy_helper.to_array(model.graph.initializer[0]).copy()
    w[0, 0] = np.nan
    model.graph.initializer[0].CopyFrom(onnx.numpy_helper.from_array(w, "W"))
    with pytest.raises(InvalidWeights, match="'W'.*'fc'"):
        compress_model(model, build_plan({"matmul_runtime": "op", "method": "pq", "min_elements": 0}))


def test_already_compressed_model_is_refused():
    result = compress_model(builders.mlp_model(), build_plan({"matmul_runtime": "op", "method": "kmeans", "bits": 4, "min_elements": 0}))
    with pytest.raises(NothingToCompress, match="already compressed"):
        compress_model(result.model, build_plan({"matmul_runtime": "op", "method": "kmeans", "bits": 4, "min_elements": 0}))


def test_same_seed_same_bytes_and_seed_matters():
    model = builders.mlp_model()
    make = lambda seed: compress_model(model, build_plan({"matmul_runtime": "op", "method": "pq", "bits": 4, "dim": 2, "min_elements": 0,  # noqa: E731
                                                          "seed": seed})).model.SerializeToString()
    assert make(3) == make(3)
    assert make(3) != make(4)


def test_jobs_do_not_change_the_output():
    model = builders.mlp_model()
    plan = build_plan({"matmul_runtime": "op", "method": "pq", "bits": 4, "dim": 2, "min_elements": 0})
    one = compress_model(model, plan, jobs=1).model.SerializeToString()
    two = compress_model(model, plan, jobs=2).model.SerializeToString()
    assert one == two


def test_pq_8bit_dim2_meets_the_cosine_bar():
    """The foundation's acceptance bar: pq b8 d2 and kmeans b6 give output cosine >= 0.99."""
    from onnxvq.check import compare_outputs

    model = builders.mlp_model(k=256, hidden=512, n=384)  # enough rows for 256-codeword codebooks to pay off
    feeds = feeds_for(model, batch=32)
    want = run_plain(model, feeds)
    for options in ({"method": "pq", "bits": 8, "dim": 2}, {"method": "kmeans", "bits": 6}):
        result = compress_model(model, build_plan({"matmul_runtime": "op", **options, "min_elements": 0}))
        assert not result.skipped, result.skipped
        got = run_vq(result.model, feeds)
        assert compare_outputs("logits", want[0], got[0]).cosine >= 0.99, options


DEFAULT_TABLES_SCRIPT = """
import sys, numpy as np, onnx, onnxruntime as ort, onnxvq
from onnxvq.compress import compress_model
from onnxvq.config import build_plan
from onnxvq.check import make_inputs, compare_outputs
from tests import builders
from tests.twin import decoded_twin
import sys
model = builders.mlp_model(k=256, hidden=128, n=10)
if sys.argv[1:] == ["outliers"]:  # a few weights 12x the largest (as in transformers' FFN outputs)
    w = next(t for t in model.graph.initializer if t.dims[:] == [256, 128] or t.dims[:] == [128, 256])
    a = onnx.numpy_helper.to_array(w).copy()
    a.flat[[5, 7000, 20001]] = 12 * np.abs(a).max()
    w.CopyFrom(onnx.numpy_helper.from_array(a, w.name))
result = compress_model(model, build_plan({"matmul_runtime": "op", "method": "pq", "bits": 4, "dim": 4, "min_elements": 0}))
assert result.jobs[0].first and any(a.name == "format_version" and a.i == 2
                                    for n in result.model.graph.node for a in n.attribute), "not fast-scan"
feeds = make_inputs(model, samples=64, seed=1)
got = onnxvq.session(result.model.SerializeToString()).run(None, feeds)[0]
twin = ort.InferenceSession(decoded_twin(model, result).SerializeToString(), providers=["CPUExecutionProvider"])
p = compare_outputs("logits", twin.run(None, feeds)[0], got)
print(p.rel_err, p.cosine)
"""


def test_default_uint8_tables_stay_within_their_error_budget():
    """Tier 2 for the default fast-scan path: uint8 tables cost at most 3% relative output error."""
    import os
    import subprocess
    import sys

    env = {k: v for k, v in os.environ.items() if not k.startswith("ONNXVQ_")}
    # 64 rows on 128 outputs take the exact tile GEMM on some tables: pin the fast-scan path,
    # whose uint8 tables are what this budget is about.
    env["ONNXVQ_TILE_GEMM_MIN_ROWS"] = str(1 << 40)
    proc = subprocess.run([sys.executable, "-c", DEFAULT_TABLES_SCRIPT], capture_output=True, text=True, env=env,
                          cwd=os.path.dirname(os.path.dirname(__file__)))
    assert proc.returncode == 0, proc.stderr
    rel_err, cosine = map(float, proc.stdout.split())
    assert 0 < rel_err < 0.03 and cosine > 0.999, (rel_err, cosine)


INT8_TIER_SCRIPT = """
import ctypes, numpy as np, onnx, onnxruntime as ort, onnxvq
from onnxvq.compress import compress_model
from onnxvq.config import build_plan
from onnxvq.check import make_inputs, compare_outputs
from tests import builders
from tests.twin import decoded_twin
import sys
model = builders.mlp_model(k=256, hidden=128, n=10)
if sys.argv[1:] == ["outliers"]:  # a few weights 12x the largest (as in transformers' FFN outputs)
    w = next(t for t in model.graph.initializer if t.dims[:] == [256, 128] or t.dims[:] == [128, 256])
    a = onnx.numpy_helper.to_array(w).copy()
    a.flat[[5, 7000, 20001]] = 12 * np.abs(a).max()
    w.CopyFrom(onnx.numpy_helper.from_array(a, w.name))
result = compress_model(model, build_plan({"matmul_runtime": "op", "method": "kmeans", "bits": 5, "min_elements": 0}))
feeds = make_inputs(model, samples=256, seed=1)
got = onnxvq.session(result.model.SerializeToString()).run(None, feeds)[0]
twin = ort.InferenceSession(decoded_twin(model, result).SerializeToString(), providers=["CPUExecutionProvider"])
p = compare_outputs("logits", twin.run(None, feeds)[0], got)
lib = ctypes.CDLL(onnxvq.library_path())
lib.onnxvq_kernel_name.restype = ctypes.c_char_p
print(lib.onnxvq_int8_panels(), lib.onnxvq_kernel_name().decode(), p.rel_err, p.cosine)
"""


@pytest.mark.parametrize("exact", [False, True])
@pytest.mark.parametrize("weights", ["plain", "outliers"])
def test_int8_tier_stays_within_its_error_budget(exact, weights):
    """Tier 2 for the panel GEMM's default int8 tier (256 rows on the tile path, 5-bit k-means):
    at most 2% relative output error against the decoded twin; ONNXVQ_EXACT_GEMM=1 gives the
    float panels, at the fp32 tier. Hosts without an int8 table run float either way. With a
    few outlier weights k-means gives them a codeword of their own, whose int8 step would be
    coarse for every other weight (9% output error on the codebook's int8 route): the
    kernel keeps such codebooks on the per-column route."""
    import os
    import subprocess
    import sys

    env = {k: v for k, v in os.environ.items() if not k.startswith("ONNXVQ_")}
    env["ONNXVQ_TILE_GEMM_MIN_ROWS"] = "1"
    if exact:
        env["ONNXVQ_EXACT_GEMM"] = "1"
    proc = subprocess.run([sys.executable, "-c", INT8_TIER_SCRIPT, weights], capture_output=True, text=True, env=env,
                          cwd=os.path.dirname(os.path.dirname(__file__)))
    assert proc.returncode == 0, proc.stderr
    int8, table, rel_err, cosine = proc.stdout.split()
    rel_err, cosine = float(rel_err), float(cosine)
    int8_table = "vnni" in table or table == "avx2"  # the tables with an int8 tier on by default
    if int8 == "1":
        assert not exact and int8_table, table
        assert 1e-4 < rel_err < 0.02 and cosine > 0.9995, (rel_err, cosine)
    else:
        assert exact or not int8_table, table
        assert rel_err < 1e-5, rel_err


def test_layers_that_would_grow_stay_dense():
    """256 codewords of 4 floats per subspace outweigh a 10-output layer: it is kept dense, with the reason."""
    model = builders.mlp_model(hidden=1024)  # fc1: 96 -> 1024 shrinks; fc2: 1024 -> 10 would grow
    result = compress_model(model, build_plan({"matmul_runtime": "op", "method": "pq", "bits": 8, "dim": 4, "min_elements": 0}))
    reasons = {s.display_name: s.reason for s in result.skipped}
    assert "fc2" in reasons and "kept dense" in reasons["fc2"]
    assert all(n.domain != DOMAIN for n in result.model.graph.node if n.name == "fc2")
    with pytest.raises(NothingToCompress, match="larger than its dense weight"):
        compress_model(builders.gemm_model(k=16, n=8), build_plan({"matmul_runtime": "op", "method": "pq", "bits": 8, "dim": 4,
                                                                   "min_elements": 0}))
