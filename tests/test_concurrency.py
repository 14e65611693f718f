"""Concurrency and determinism (issue 8).

* one session run from several threads at once gives the same bits as serial runs;
* several sessions in one process share one copy of the library, live and die in any order;
* intra-op thread counts do not change the output bits;
* compressing the same model twice with the same seed gives the same bytes, for every method;
* --jobs does not change the output bytes;
* two processes writing the same output path at once leave one whole model and no temp file.
"""
from __future__ import annotations

import gc
import hashlib
import subprocess
import sys
import threading
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from click.testing import CliRunner
from onnx import TensorProto, helper, numpy_helper

import onnxvq
from onnxvq.cli import main

from . import builders

REPO = Path(__file__).resolve().parents[1]


def compress(src: Path, out: Path, *args) -> Path:
    result = CliRunner().invoke(main, ["compress", str(src), "-o", str(out), "--min-elements", "0", "--quiet",
                                       "--no-check", *map(str, args)])
    assert result.exit_code == 0, (result.output, result.exception)
    return out


def deep_model(k=96, widths=(80, 72, 64, 48), seed=0) -> onnx.ModelProto:
    """A chain of MatMul/Gemm layers: several weights, so --jobs has work to share out."""
    rng = np.random.default_rng(seed)
    nodes, inits, prev, width = [], [], "X", k
    for i, out in enumerate(widths):
        w = (rng.standard_normal((width, out)) * 0.1).astype(np.float32)
        if i % 2:
            inits += [numpy_helper.from_array(w.T.copy(), f"W{i}"), numpy_helper.from_array(rng.standard_normal(out).astype(np.float32), f"b{i}")]
            nodes.append(helper.make_node("Gemm", [prev, f"W{i}", f"b{i}"], [f"h{i}"], name=f"fc{i}", transB=1))
        else:
            inits.append(numpy_helper.from_array(w, f"W{i}"))
            nodes.append(helper.make_node("MatMul", [prev, f"W{i}"], [f"h{i}"], name=f"fc{i}"))
        nodes.append(helper.make_node("Relu", [f"h{i}"], [f"r{i}"], name=f"relu{i}"))
        prev, width = f"r{i}", out
    graph = helper.make_graph(nodes, "deep", [helper.make_tensor_value_info("X", TensorProto.FLOAT, ["batch", k])],
                              [helper.make_tensor_value_info(prev, TensorProto.FLOAT, ["batch", width])], inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.checker.check_model(model, full_check=True)
    return model


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    folder = tmp_path_factory.mktemp("concurrency")
    src = folder / "deep.onnx"
    onnx.save(deep_model(), src)
    out = {"src": src}
    for name, args in {"pq": ("--method", "pq", "--bits", "5", "--dim", "2"),
                       "kmeans": ("--method", "kmeans", "--bits", "4"),
                       "rq": ("--method", "rq", "--bits", "4", "--dim", "4", "--stages", "2"),
                       "axis_out": ("--method", "pq", "--bits", "5", "--dim", "3", "--axis", "out")}.items():
        out[name] = compress(src, folder / f"{name}.onnx", *args)
    return out


def inputs(seed: int, batch: int = 5) -> np.ndarray:
    return np.random.default_rng(seed).standard_normal((batch, 96)).astype(np.float32)


# --- sessions and threads -------------------------------------------------------------------

@pytest.mark.parametrize("intra_threads", [1, 3])
def test_one_session_many_threads_same_bits(models, intra_threads):
    options = ort.SessionOptions()
    options.intra_op_num_threads = intra_threads
    sess = onnxvq.session(str(models["pq"]), options)
    name = sess.get_inputs()[0].name
    xs = [inputs(seed, batch=1 + seed % 7) for seed in range(16)]
    expected = [sess.run(None, {name: x})[0] for x in xs]
    start = threading.Barrier(8)

    def worker(t: int):
        start.wait()
        mismatches = 0
        for rep in range(12):
            i = (t * 5 + rep) % len(xs)
            y = sess.run(None, {name: xs[i]})[0]
            mismatches += not np.array_equal(y, expected[i])
        return mismatches

    with ThreadPoolExecutor(8) as pool:
        assert sum(pool.map(worker, range(8))) == 0


def test_intra_op_threads_do_not_change_bits(models):
    x = inputs(7, batch=33)
    results = []
    for threads in (1, 2, 4):
        for name in ("pq", "kmeans", "rq", "axis_out"):
            options = ort.SessionOptions()
            options.intra_op_num_threads = threads
            sess = onnxvq.session(str(models[name]), options)
            results.append((name, threads, sess.run(None, {"X": x})[0]))
    for name in ("pq", "kmeans", "rq", "axis_out"):
        runs = [y for n, _, y in results if n == name]
        assert all(np.array_equal(runs[0], y) for y in runs[1:]), name


def _loaded_copies() -> set[str]:
    maps = Path("/proc/self/maps")
    if not maps.exists():
        pytest.skip("needs /proc/self/maps")
    return {line.split()[-1] for line in maps.read_text().splitlines() if "onnxvq_ops" in line}


def test_many_sessions_share_the_library(models):
    x = inputs(3)
    ref = {name: onnxvq.session(str(models[name])).run(None, {"X": x})[0] for name in ("pq", "kmeans", "rq", "axis_out")}
    sessions = {f"{name}{i}": (name, onnxvq.session(str(models[name]))) for i in range(3)
                for name in ("pq", "kmeans", "rq", "axis_out")}
    assert len(_loaded_copies()) == 1, _loaded_copies()  # one library, however many sessions

    def run(item):
        name, sess = item
        return all(np.array_equal(sess.run(None, {"X": x})[0], ref[name]) for _ in range(10))

    with ThreadPoolExecutor(6) as pool:
        assert all(pool.map(run, sessions.values()))
    # Sessions die in any order; the ones left (and new ones) keep working.
    for key in list(sessions)[::2]:
        del sessions[key]
    gc.collect()
    assert all(run(item) for item in sessions.values())
    sessions.clear()
    gc.collect()
    assert np.array_equal(onnxvq.session(str(models["rq"])).run(None, {"X": x})[0], ref["rq"])
    assert len(_loaded_copies()) == 1


def test_sessions_created_concurrently(models):
    """Registering the library from many threads at once (the domain is created once, under a lock)."""
    x = inputs(11)
    expected = onnxvq.session(str(models["kmeans"])).run(None, {"X": x})[0]
    start = threading.Barrier(6)

    def make_and_run(_):
        start.wait()
        return np.array_equal(onnxvq.session(str(models["kmeans"])).run(None, {"X": x})[0], expected)

    with ThreadPoolExecutor(6) as pool:
        assert all(pool.map(make_and_run, range(12)))


# --- determinism of compression -------------------------------------------------------------

def digest(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


@pytest.mark.parametrize("method_args", [
    ("--method", "pq", "--bits", "6", "--dim", "2"),
    ("--method", "kmeans", "--bits", "5"),
    ("--method", "kmeans", "--bits", "3", "--group-size", "8"),
    ("--method", "rq", "--bits", "4", "--dim", "4", "--stages", "2"),
    ("--method", "binary",),
    ("--method", "svd", "--rank", "8"),
    ("--method", "pq", "--bits", "4", "--dim", "4", "--format", "portable"),
], ids=lambda a: "-".join(a[1::2]))
def test_same_seed_same_bytes(models, tmp_path, method_args):
    a = compress(models["src"], tmp_path / "a.onnx", *method_args, "--seed", "5")
    b = compress(models["src"], tmp_path / "b.onnx", *method_args, "--seed", "5")
    assert a.read_bytes() == b.read_bytes()


def test_seed_matters(models, tmp_path):
    a = compress(models["src"], tmp_path / "a.onnx", "--method", "pq", "--bits", "6", "--dim", "2", "--seed", "1")
    b = compress(models["src"], tmp_path / "b.onnx", "--method", "pq", "--bits", "6", "--dim", "2", "--seed", "2")
    assert a.read_bytes() != b.read_bytes()


@pytest.mark.parametrize("method_args", [("--method", "pq", "--bits", "6", "--dim", "2"),
                                         ("--method", "kmeans", "--bits", "4")], ids=["pq", "kmeans"])
def test_jobs_do_not_change_bytes(models, tmp_path, method_args):
    outs = [compress(models["src"], tmp_path / f"j{jobs}.onnx", *method_args, "--seed", "3", "--jobs", jobs)
            for jobs in ("1", "2", "-1")]
    assert len({digest(p) for p in outs}) == 1


def test_two_processes_racing_for_one_output(models, tmp_path):
    """Both succeed; the output is one whole model (not a mix of the two); no temp file is left."""
    out = tmp_path / "race.onnx"
    cmd = [sys.executable, "-m", "onnxvq.cli", "compress", str(models["src"]), "-o", str(out), "--min-elements", "0",
           "--quiet", "--no-check", "--method", "pq", "--bits", "6", "--dim", "2"]
    procs = [subprocess.Popen(cmd + ["--seed", str(seed)], cwd=REPO, stderr=subprocess.PIPE, text=True)
             for seed in (1, 2)]
    for p in procs:
        assert p.wait(timeout=120) == 0, p.stderr.read()
        p.stderr.close()
    singles = [compress(models["src"], tmp_path / f"single{seed}.onnx", "--method", "pq", "--bits", "6", "--dim", "2",
                        "--seed", seed) for seed in ("1", "2")]
    assert digest(out) in {digest(p) for p in singles}
    assert sorted(p.name for p in tmp_path.iterdir()) == ["race.onnx", "single1.onnx", "single2.onnx"]


def test_reusing_session_options(models):
    options = ort.SessionOptions()
    options.intra_op_num_threads = 2
    first = onnxvq.session(str(models["pq"]), options)
    second = onnxvq.session(str(models["kmeans"]), options)
    assert first.run(None, {"X": inputs(0)})[0].shape == second.run(None, {"X": inputs(0)})[0].shape
