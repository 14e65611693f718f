"""--entropy end to end: tiered codes in the file, decoded by standard ops that ONNX Runtime folds at
session creation, so the model computes exactly what the plain file computes."""
from __future__ import annotations

import collections
import json
import re
import subprocess
import sys

import numpy as np
import onnx
import pytest
from click.testing import CliRunner
from onnx import numpy_helper

import onnxvq
from onnxvq.cli import main

from . import builders

DECODER_OPS = {"CumSum"}  # only the tiers decoder uses it


def _compress(src, out, *args):
    report = out.with_suffix(".json")
    result = CliRunner().invoke(main, ["compress", str(src), "-o", str(out), "--json", str(report), "-q",
                                       "--no-check", *map(str, args)], catch_exceptions=False)
    assert result.exit_code == 0, result.output
    return json.loads(report.read_text())


def _feeds(model: onnx.ModelProto, rng):
    feeds = {}
    for inp in model.graph.input:
        dims = [d.dim_value or 3 for d in inp.type.tensor_type.shape.dim]
        if inp.type.tensor_type.elem_type == onnx.TensorProto.INT64:
            feeds[inp.name] = rng.integers(0, 64, size=dims).astype(np.int64)
        else:
            feeds[inp.name] = rng.normal(size=dims).astype(np.float32)
    return feeds


def _run(path, feeds, optimized=None):
    options = onnxvq.session_options()
    if optimized:
        options.optimized_model_filepath = str(optimized)
    return onnxvq.session(str(path), options).run(None, feeds)


def conv_pair_model(seed=0) -> onnx.ModelProto:
    """Conv 32->96 (3x3) then ConvTranspose 96->48 (2x2, stride 2): layers big enough that the tiers
    decoder (a few KB of nodes) is worth its bytes."""
    from onnx import TensorProto, helper

    rng = np.random.default_rng(seed)
    w1 = builders.rand(rng, 96, 32, 3, 3, scale=0.1)
    w2 = builders.rand(rng, 96, 48, 2, 2, scale=0.1)
    nodes = [helper.make_node("Conv", ["x", "w1"], ["h"], name="conv", pads=[1, 1, 1, 1]),
             helper.make_node("Relu", ["h"], ["r"], name="relu"),
             helper.make_node("ConvTranspose", ["r", "w2"], ["y"], name="deconv", strides=[2, 2])]
    graph = helper.make_graph(nodes, "convs", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 32, 6, 6])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 48, 12, 12])],
                              [numpy_helper.from_array(w1, "w1"), numpy_helper.from_array(w2, "w2")])
    return builders._model(graph)


MODELS = {
    "mlp": lambda: builders.mlp_model(k=256, hidden=384),
    "convs": conv_pair_model,
    "embedding": lambda: builders.embedding_model(vocab=4096, dim=32),
}
SETTINGS = [
    ("kmeans", ["--method", "kmeans", "--bits", "4", "--prune", "0.7"]),
    ("kmeans_grouped", ["--method", "kmeans", "--bits", "5", "--group-size", "16", "--prune", "0.5"]),
    ("pq", ["--method", "pq", "--bits", "4", "--dim", "2", "--prune", "0.7"]),
    ("rq_out", ["--method", "rq", "--bits", "3", "--dim", "2", "--stages", "2", "--axis", "out", "--prune", "0.7"]),
]


@pytest.mark.parametrize("fmt", ["custom", "portable"])
@pytest.mark.parametrize("setting", SETTINGS, ids=lambda s: s[0])
@pytest.mark.parametrize("name", sorted(MODELS))
def test_entropy_file_computes_what_the_plain_file_computes(tmp_path, name, setting, fmt):
    src = tmp_path / "m.onnx"
    onnx.save(MODELS[name](), src)
    common = [*setting[1], "--format", fmt, "--min-elements", "16", "--protect", ""]
    plain = _compress(src, tmp_path / "plain.onnx", *common)
    coded = _compress(src, tmp_path / "coded.onnx", *common, "--entropy")
    rows = [r for r in coded["layers"] if not r.get("skipped_reason")]
    assert any(r["entropy_coded"] for r in rows)
    for r in rows:  # the report counts the bytes the file holds: tiers where they won, packed elsewhere
        assert (r["code_bytes"] < r["plain_code_bytes"]) == r["entropy_coded"] or not r["code_bytes"]
    assert coded["compressed_file_bytes"] < plain["compressed_file_bytes"]
    feeds = _feeds(onnx.load(src), np.random.default_rng(0))
    optimized = tmp_path / "opt.onnx"
    got = _run(tmp_path / "coded.onnx", feeds, optimized)
    want = _run(tmp_path / "plain.onnx", feeds)
    for g, w in zip(got, want):
        np.testing.assert_array_equal(g, w)
    # Folded at session creation: the optimized graph holds no decoder op.
    folded = onnx.load(optimized)
    ops = collections.Counter(n.op_type for n in folded.graph.node)
    assert not DECODER_OPS & set(ops), ops
    tiers = re.compile(r"vqe(_\d+)?\.c(table|mask|payload)\d+$")  # the layout's own tensors
    assert not [t.name for t in folded.graph.initializer if tiers.match(t.name)]


@pytest.mark.parametrize("method,version", [(["kmeans", "--bits", "4"], 2), (["pq", "--bits", "8", "--dim", "4"], 3)])
def test_entropy_feeds_the_blocked_op_layouts(method, version, tmp_path):
    """Codes on a 2-D MatMul run on VQMatMul in a blocked layout (4-bit fast-scan, format 2; 8-bit
    byte-scan, format 3): the folded packer must produce exactly those bytes."""
    src = tmp_path / "m.onnx"
    onnx.save(builders.mlp_model(k=256, hidden=384), src)
    args = ["--method", *method, "--prune", "0.6", "--matmul-runtime", "op"]
    _compress(src, tmp_path / "plain.onnx", *args)
    _compress(src, tmp_path / "coded.onnx", *args, "--entropy")
    ops = [n for n in onnx.load(tmp_path / "coded.onnx").graph.node if n.op_type == "VQMatMul"]
    assert ops and any(a.name == "format_version" and a.i == version for n in ops for a in n.attribute)
    feeds = _feeds(onnx.load(src), np.random.default_rng(1))
    np.testing.assert_array_equal(_run(tmp_path / "coded.onnx", feeds)[0], _run(tmp_path / "plain.onnx", feeds)[0])


def test_entropy_is_kept_only_where_it_is_smaller(tmp_path):
    """Unpruned 2-bit codes of a small layer: the decoder would cost more than it saves."""
    src = tmp_path / "m.onnx"
    onnx.save(builders.mlp_model(k=64, hidden=32), src)
    report = _compress(src, tmp_path / "o.onnx", "--method", "kmeans", "--bits", "2", "--entropy")
    rows = [r for r in report["layers"] if not r.get("skipped_reason")]
    assert rows and not any(r["entropy_coded"] for r in rows)
    assert all(r["code_bytes"] == r["plain_code_bytes"] for r in rows)


CHILD = r"""
import sys, onnx, numpy as np, onnxvq
from onnx import numpy_helper
path, names, seed = sys.argv[1], sys.argv[2].split(","), int(sys.argv[3])
rng = np.random.default_rng(seed)
model = onnx.load(path)
inits = {t.name: t for t in model.graph.initializer}
for case in range(40):
    m = onnx.ModelProto(); m.CopyFrom(model)
    target = {t.name: t for t in m.graph.initializer}[names[case % len(names)]]
    data = numpy_helper.to_array(target).copy().reshape(-1)
    kind = case % 4
    if kind == 0 and data.size:
        data[rng.integers(data.size)] ^= np.uint8(1 << rng.integers(8))
    elif kind == 1:
        data = data[:-1]
    elif kind == 2:
        data = np.concatenate([data, np.full(1, 255, np.uint8)])
    elif data.size:
        data[:] = rng.integers(0, 256, data.size, dtype=np.uint8)
    target.CopyFrom(numpy_helper.from_array(data.astype(np.uint8), target.name))
    try:
        out = onnxvq.session(m.SerializeToString()).run(None, {"x": np.ones((2, 256), np.float32)})
        print("ran", flush=True)
    except Exception as exc:
        print("error", type(exc).__name__, flush=True)
"""


def test_crafted_entropy_streams_in_a_compressed_file_fail_cleanly(tmp_path):
    src, out = tmp_path / "m.onnx", tmp_path / "o.onnx"
    onnx.save(builders.mlp_model(k=256, hidden=384), src)
    _compress(src, out, "--method", "kmeans", "--bits", "4", "--prune", "0.7", "--entropy", "--matmul-runtime", "op")
    names = [t.name for t in onnx.load(out).graph.initializer
             if t.name.startswith("vqe") and t.data_type == onnx.TensorProto.UINT8]
    assert names
    child = subprocess.run([sys.executable, "-c", CHILD, str(out), ",".join(names), "7"], capture_output=True,
                           text=True, timeout=300)
    assert child.returncode == 0, child.stderr[-2000:]  # a signal (segfault) would be a negative code
    lines = child.stdout.split("\n")
    assert sum(line.startswith(("ran", "error")) for line in lines) == 40
