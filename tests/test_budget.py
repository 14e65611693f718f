"""Calibration (--calibration) and budget mode (--target-ratio/--target-size/--min-agreement, --save-config)
end to end on a tiny conv + dense model, plus unit tests of the allocator (onnxvq.budget) on hand-made tables.

Runtime: every budget run fits the same 5 layers with the same ~10 candidates each; the fits are
deterministic (test_saved_config_reproduces_the_budget_file checks a fresh fit against them), so the
module memoizes ``budget.rate_distortion`` per layer and only the first budget run pays for fitting.
"""
from __future__ import annotations

import csv
import hashlib
import io
import json
import math
import os
import shutil
import subprocess
import sys
import tarfile
from itertools import product
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import onnx
import pytest
import yaml
from click.testing import CliRunner
from onnx import TensorProto, helper, numpy_helper

import onnxvq
from onnxvq import budget
from onnxvq.budget import BACKOFF_STEPS, Budget, Point, allocate, choose, lambda_for_size, output_quality
from onnxvq.cli import main
from onnxvq.compress import compress_model
from onnxvq.config import build_plan, make_method_config
from onnxvq.errors import ConfigError, ExitCode

from . import builders

#: The commit before calibration and budget mode: a data-free compression must still write its bytes.
PRE_CALIBRATION_COMMIT = "c3a952e3f6a9aeebd164e0065a2b19cdb5210116"


# --- the tiny model and its data ------------------------------------------------------------------

def conv_dense_model(seed=0) -> onnx.ModelProto:
    """Conv -> Relu -> Conv(stride 2) -> Relu -> Flatten -> Gemm -> Relu -> MatMul+Add -> Relu -> Gemm(transB).
    Every weight has >= 1024 elements, so the default --min-elements compresses all five."""
    rng = np.random.default_rng(seed)

    def init(name, *shape, scale):
        return numpy_helper.from_array(builders.rand(rng, *shape, scale=scale), name)

    inits = [init("c1.w", 16, 8, 3, 3, scale=0.2), init("c1.b", 16, scale=0.1), init("c2.w", 32, 16, 3, 3, scale=0.1),
             init("fc1.w", 288, 64, scale=0.08), init("fc1.b", 64, scale=0.1),
             init("fc2.w", 64, 64, scale=0.15), init("fc2.b", 64, scale=0.1),
             init("fc3.w", 24, 64, scale=0.2), init("fc3.b", 24, scale=0.1)]
    nodes = [helper.make_node("Conv", ["x", "c1.w", "c1.b"], ["c1"], name="conv1", pads=[1, 1, 1, 1]),
             helper.make_node("Relu", ["c1"], ["r1"], name="relu1"),
             helper.make_node("Conv", ["r1", "c2.w"], ["c2"], name="conv2", strides=[2, 2], pads=[1, 1, 1, 1]),
             helper.make_node("Relu", ["c2"], ["r2"], name="relu2"),
             helper.make_node("Flatten", ["r2"], ["f"], name="flatten"),
             helper.make_node("Gemm", ["f", "fc1.w", "fc1.b"], ["h"], name="fc1"),
             helper.make_node("Relu", ["h"], ["hr"], name="relu3"),
             helper.make_node("MatMul", ["hr", "fc2.w"], ["h2"], name="fc2"),
             helper.make_node("Add", ["h2", "fc2.b"], ["h3"], name="fc2_bias"),
             helper.make_node("Relu", ["h3"], ["h4"], name="relu4"),
             helper.make_node("Gemm", ["h4", "fc3.w", "fc3.b"], ["logits"], name="fc3", transB=1)]
    graph = helper.make_graph(nodes, "convdense",
                              [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", 8, 6, 6])],
                              [helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["batch", 24])], inits)
    return builders._model(graph)


LAYERS = ("conv1", "conv2", "fc1", "fc2", "fc3")


def correlated_images(n, seed):
    """Spatially smoothed noise, channels mixed with decaying scales, plus an offset: a second moment
    far from a multiple of I (so fitting to the outputs differs from fitting to the weights)."""
    rng = np.random.default_rng(seed)
    mix = np.random.default_rng(123).standard_normal((8, 8)) * np.exp(-np.arange(8) / 2.0)[None, :]
    z = rng.standard_normal((n, 8, 8, 8))
    z = (z[:, :, :-2] + z[:, :, 1:-1] + z[:, :, 2:]) / 3
    z = (z[:, :, :, :-2] + z[:, :, :, 1:-1] + z[:, :, :, 2:]) / 3
    return (np.einsum("ij,njhw->nihw", mix, z) + 0.5).astype(np.float32)


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    folder = tmp_path_factory.mktemp("budget")
    model = folder / "m.onnx"
    onnx.save(conv_dense_model(), model)
    calib, held = folder / "calib.npz", folder / "held.npz"
    np.savez(calib, x=correlated_images(128, 1))   # one distribution, two draws:
    np.savez(held, x=correlated_images(128, 2))    # calibration and held-out
    return SimpleNamespace(folder=folder, model=model, calib=calib, held=held, original=model.stat().st_size)


@pytest.fixture(scope="module", autouse=True)
def fit_each_layer_once():
    """Memoize budget.rate_distortion per layer (weight, statistics, seed, format)."""
    real = budget.rate_distortion
    memo: dict[str, list] = {}

    def key(job, fmt):
        h = hashlib.sha256(f"{fmt}|{job.first.display_name}|{job.first.op_type}|{job.seed}|{len(job.sites)}".encode())
        h.update(np.ascontiguousarray(job.first.weight_array).tobytes())
        stats = job.stats
        for part in ((stats.hessian, stats.mean, stats.row_weights) if stats is not None else ()):
            h.update(b"-" if part is None else np.ascontiguousarray(part).tobytes())
        return h.hexdigest()

    def cached(weight_jobs, fmt, *args, **kwargs):
        keys = [key(j, fmt) for j in weight_jobs]
        missing = [(k, j) for k, j in zip(keys, weight_jobs) if k not in memo]
        if missing:
            for (k, _), points in zip(missing, real([j for _, j in missing], fmt, *args, **kwargs)):
                memo[k] = points
        return [memo[k] for k in keys]

    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(budget, "rate_distortion", cached)
        yield memo


def invoke(*args):
    return CliRunner().invoke(main, [str(a) for a in args], catch_exceptions=False)


def compress(files, name, *flags):
    """`onnxvq compress` of the tiny model to NAME.onnx with a JSON report; returns (result, path, report)."""
    out, report = files.folder / f"{name}.onnx", files.folder / f"{name}.json"
    r = invoke("compress", files.model, "-o", out, "--json", report, *flags)
    assert r.exit_code == 0, r.output
    return r, out, json.loads(report.read_text())


def stamp(path) -> dict:
    return json.loads({p.key: p.value for p in onnx.load(str(path)).metadata_props}["onnxvq"])


def floor_holds(b: dict, quality: dict) -> bool:
    return ((b["min_agreement"] is None or quality["top1_agreement"] >= b["min_agreement"])
            and (b["min_cosine"] is None or quality["cosine_mean"] >= b["min_cosine"]))


def assert_consistent_with_trials(report: dict) -> None:
    """What a budget report says follows from its own trials."""
    b = report["budget"]
    trials = b["trials"]
    assert trials, b
    last = trials[-1]
    has_floor = b["min_agreement"] is not None or b["min_cosine"] is not None
    if b["target_bytes"] is not None:  # target mode: the returned allocation is the last trial
        assert b["file_bytes"] == last["file_bytes"], b
        assert b["calibration_quality"] == {k: last[k] for k in ("top1_agreement", "cosine_mean")}, b
        for before, after in zip(trials, trials[1:]):  # each back-off halves lambda
            assert after["lambda"] == pytest.approx(before["lambda"] / 2, rel=1e-12), trials
        # it backs off only while the floor fails, and stops when it holds
        assert all(not floor_holds(b, t) for t in trials[:-1]), trials
        if not has_floor:
            assert len(trials) == 1, trials
        elif not b["floor_held"]:
            assert len(trials) == 1 + BACKOFF_STEPS, trials
    assert b["floor_held"] == floor_holds(b, b["calibration_quality"]), b
    if b["floor_held"] and b["min_agreement"] is not None:
        assert b["calibration_quality"]["top1_agreement"] >= b["min_agreement"], b
    # the allocator's size of the chosen file is not smaller than the file written
    assert report["compressed_file_bytes"] <= b["file_bytes"], (report["compressed_file_bytes"], b["file_bytes"])
    assert report["compressed_file_bytes"] == Path(report["output"]).stat().st_size


# --- 1. data-free files stay byte-identical -------------------------------------------------------

def _run_old_onnxvq(tmp_path, *args):
    """`onnxvq` as of PRE_CALIBRATION_COMMIT (from git), in a subprocess; skips when that is unavailable."""
    repo = Path(__file__).resolve().parents[1]
    if shutil.which("git") is None or not (repo / ".git").exists():
        pytest.skip("no git checkout to take the previous version from")
    archive = subprocess.run(["git", "-C", str(repo), "archive", PRE_CALIBRATION_COMMIT, "onnxvq"],
                             capture_output=True)
    if archive.returncode != 0:
        pytest.skip(f"commit {PRE_CALIBRATION_COMMIT[:10]} not in this checkout")
    old = tmp_path / "old"
    with tarfile.open(fileobj=io.BytesIO(archive.stdout)) as tar:
        try:
            tar.extractall(old, filter="data")
        except TypeError:  # Python without extraction filters
            tar.extractall(old)
    script = ("import sys; old = sys.argv.pop(1)\n"
              # an editable install's finder would otherwise import the working tree's onnxvq
              "sys.meta_path[:] = [f for f in sys.meta_path if 'editable' not in type(f).__module__.lower()]\n"
              "sys.path.insert(0, old)\n"
              "import onnxvq\n"
              "if not onnxvq.__file__.startswith(old): sys.exit(99)\n"
              "from onnxvq.cli import main; main()\n")
    proc = subprocess.run([sys.executable, "-c", script, str(old), *map(str, args)], capture_output=True, text=True,
                          env={k: v for k, v in os.environ.items() if k != "PYTHONPATH"})
    if proc.returncode == 99:
        pytest.skip("cannot import the previous version beside the installed one")
    assert proc.returncode == 0, proc.stderr


def test_data_free_output_is_byte_identical_and_unstamped(files, tmp_path):
    a, b = tmp_path / "a.onnx", tmp_path / "b.onnx"
    for path in (a, b):
        r = invoke("compress", files.model, "-o", path, "--no-check", "-q")
        assert r.exit_code == 0, r.output
    assert a.read_bytes() == b.read_bytes()
    assert "calibrated" not in stamp(a)
    # the same model, fitted on calibration data: stamped, and different codes
    c = tmp_path / "c.onnx"
    r = invoke("compress", files.model, "-o", c, "--calibration", files.calib, "--no-check", "-q")
    assert r.exit_code == 0, r.output
    assert stamp(c)["calibrated"] is True
    assert onnx.load(str(c)).graph.SerializeToString() != onnx.load(str(a)).graph.SerializeToString()


@pytest.mark.parametrize("flags", [(), ("--method", "kmeans", "--bits", "2", "--format", "portable")],
                         ids=["defaults", "kmeans-b2-portable"])
def test_data_free_bytes_match_the_version_before_calibration(files, tmp_path, flags):
    new, old = tmp_path / "new.onnx", tmp_path / "old.onnx"
    r = invoke("compress", files.model, "-o", new, *flags, "--no-check", "-q")
    assert r.exit_code == 0, r.output
    _run_old_onnxvq(tmp_path, "compress", files.model, "-o", old, *flags, "--no-check", "-q")
    assert new.read_bytes() == old.read_bytes()


# --- 2. calibration lowers the error on held-out inputs -------------------------------------------

def _held_out_rel_err(files, compressed) -> float:
    import onnxruntime as ort

    x = np.load(files.held)["x"]
    ref = ort.InferenceSession(str(files.model), providers=["CPUExecutionProvider"]).run(None, {"x": x})[0]
    got = onnxvq.session(str(compressed)).run(None, {"x": x})[0]
    return float(np.linalg.norm(got - ref) / np.linalg.norm(ref))


def test_calibration_lowers_the_held_out_output_error(files):
    setting = ("--method", "kmeans", "--bits", "2", "--data", files.held, "-q")
    _, free_path, free = compress(files, "free_b2", *setting)
    _, aware_path, aware = compress(files, "aware_b2", *setting, "--calibration", files.calib)
    assert "calibration" not in free
    assert aware["calibration"] == {"path": str(files.calib), "samples": 128, "same_file_as_data": False}
    # the parity check runs on --data (held out), as does the independent measurement
    assert aware["parity"]["rel_err"] < free["parity"]["rel_err"], (aware["parity"], free["parity"])
    free_err, aware_err = _held_out_rel_err(files, free_path), _held_out_rel_err(files, aware_path)
    assert aware_err < free_err, (aware_err, free_err)
    assert aware_err == pytest.approx(aware["parity"]["rel_err"], rel=1e-3)
    # same settings and sizes: only the fit differs
    assert [(l["name"], l["method"]) for l in aware["layers"]] == [(l["name"], l["method"]) for l in free["layers"]]
    assert sorted(l["name"] for l in aware["layers"] if not l["skipped_reason"]) == sorted(LAYERS)
    for layer in aware["layers"]:
        assert layer["calib_output_rel_err"] < layer["data_free_calib_output_rel_err"], layer
    for layer in free["layers"]:
        assert layer["calib_output_rel_err"] is None and layer["data_free_calib_output_rel_err"] is None, layer


# --- 3.-6. budget mode end to end -----------------------------------------------------------------

TARGET_RATIO = 3.4
TARGET_SIZE = 30_000


@pytest.fixture(scope="module")
def budget_runs(files):
    """The budget runs several tests look at, each run once."""
    runs = {}

    def run(name, *flags):
        if name not in runs:
            runs[name] = compress(files, name, *flags)
        return runs[name]

    return run


def test_target_ratio_meets_the_size(files, budget_runs):
    r, out, report = budget_runs("ratio", "--calibration", files.calib, "--data", files.held,
                                 "--target-ratio", TARGET_RATIO, "--save-config", files.folder / "ratio.yaml")
    b = report["budget"]
    target = int(files.original / TARGET_RATIO)
    written = out.stat().st_size
    sizes = f"original {files.original}, target {target}, written {written}, allocator {b['file_bytes']}"
    assert b["target_bytes"] == target, sizes
    assert written <= target, sizes
    assert written >= 0.9 * target, sizes
    assert report["file_ratio"] >= TARGET_RATIO, sizes
    assert b["min_agreement"] is None and b["floor_held"] is True
    assert_consistent_with_trials(report)
    assert len(b["layer_gains"]) == len(LAYERS) and all(g > 0 for g in b["layer_gains"]), b["layer_gains"]
    # the chosen settings are the ones written, and a candidate of each layer's op type
    layers = stamp(out)["layers"]
    assert layers == b["config"]["nodes"]
    op_type = {"conv1": "Conv", "conv2": "Conv", "fc1": "Gemm", "fc2": "MatMul", "fc3": "Gemm"}
    for name, options in layers.items():
        assert options in [make_method_config(c).options() for c in budget.CANDIDATES[op_type[name]]], (name, options)
    assert stamp(out)["calibrated"] is True
    assert "budget: calibration top-1 agreement" in r.output and "chosen settings" in r.output


def test_target_size_meets_the_size(files, budget_runs):
    _, out, report = budget_runs("size", "--calibration", files.calib, "--target-size", TARGET_SIZE, "--no-check",
                                 "--save-config", files.folder / "size_config.json", "-q")
    b = report["budget"]
    written = out.stat().st_size
    sizes = f"target {TARGET_SIZE}, written {written}, allocator {b['file_bytes']}"
    assert b["target_bytes"] == TARGET_SIZE
    assert 0.9 * TARGET_SIZE <= written <= TARGET_SIZE, sizes
    assert_consistent_with_trials(report)
    # a .json --save-config is JSON
    assert json.loads((files.folder / "size_config.json").read_text()) == b["config"]


BACKOFF_RATIO = "5.5"


def unreachable_run(files, budget_runs):
    """A floor no setting reaches: every back-off step is tried and recorded."""
    return budget_runs("unreachable", "--calibration", files.calib, "--target-ratio", BACKOFF_RATIO,
                       "--min-agreement", "1.0", "--min-cosine", "0.9999999", "--no-check", "-q")


def test_an_unreachable_floor_is_reported_not_held(files, budget_runs):
    _, out, report = unreachable_run(files, budget_runs)
    b = report["budget"]
    assert b["min_agreement"] == 1.0 and b["min_cosine"] == 0.9999999
    assert b["floor_held"] is False, b["trials"]
    assert len(b["trials"]) == 1 + BACKOFF_STEPS
    assert out.stat().st_size > b["target_bytes"]  # backed off all the way: past the size target
    assert_consistent_with_trials(report)


def test_a_floor_the_target_misses_backs_off_until_it_holds(files, budget_runs):
    # The same target with a floor that the unreachable run's trials first meet at back-off step k:
    # the allocation must retrace those trials and stop exactly there.
    steps = unreachable_run(files, budget_runs)[2]["budget"]["trials"]
    k = next((k for k in range(1, len(steps))
              if steps[k]["top1_agreement"] > max(t["top1_agreement"] for t in steps[:k])), None)
    assert k is not None, f"no back-off step raises the agreement: {steps}"
    floor = steps[k]["top1_agreement"]
    _, out, report = budget_runs("backoff", "--calibration", files.calib, "--target-ratio", BACKOFF_RATIO,
                                 "--min-agreement", repr(floor), "--no-check", "-q")
    b = report["budget"]
    assert_consistent_with_trials(report)
    assert b["min_agreement"] == floor and b["floor_held"] is True, b["trials"]
    assert b["calibration_quality"]["top1_agreement"] >= floor
    assert b["trials"] == steps[:k + 1]
    assert b["file_bytes"] >= b["trials"][0]["file_bytes"]  # more bytes than the size target gave at first


def test_a_target_below_the_smallest_file_is_a_clear_error(files, tmp_path):
    out = tmp_path / "o.onnx"
    r = invoke("compress", files.model, "-o", out, "--calibration", files.calib, "--target-ratio", "1000",
               "--min-agreement", "0.9", "--no-check", "-q")
    assert r.exit_code == ExitCode.USAGE, r.output
    assert "error:" in r.output and "below the smallest file" in r.output, r.output
    assert "Traceback" not in r.output and not out.exists()


def test_floor_only_gives_the_smallest_trial_that_holds_it(files):
    model = onnx.load(str(files.model))
    calib = dict(np.load(files.calib))
    result = compress_model(model, build_plan(None, {}), calibration=calib, budget=Budget(min_agreement=0.9))
    alloc = result.allocation
    passing = [t for t in alloc.history if t["top1_agreement"] >= 0.9]
    assert passing and alloc.quality["top1_agreement"] >= 0.9, alloc.history
    assert alloc.file_bytes == min(t["file_bytes"] for t in passing), alloc.history
    assert alloc.history[0]["lambda"] == pytest.approx(1e-18)  # it starts from the most accurate choice
    assert any(t["top1_agreement"] < 0.9 for t in alloc.history), alloc.history  # and searched past the floor
    assert len(result.model.SerializeToString()) <= alloc.file_bytes
    assert stamp_of(result.model)["layers"] == alloc.config["nodes"]


def stamp_of(model: onnx.ModelProto) -> dict:
    return json.loads({p.key: p.value for p in model.metadata_props}["onnxvq"])


def test_floor_only_on_the_command_line(files, budget_runs):
    r = invoke("compress", files.model, "-o", files.folder / "floor.onnx", "--calibration", files.calib,
               "--min-agreement", "0.9", "--no-check", "-q", "--json", files.folder / "floor.json")
    assert r.exit_code == 0, r.output
    report = json.loads((files.folder / "floor.json").read_text())
    b = report["budget"]
    assert b["target_bytes"] is None and b["floor_held"] is True
    passing = [t for t in b["trials"] if t["top1_agreement"] >= 0.9]
    assert b["file_bytes"] == min(t["file_bytes"] for t in passing), b["trials"]
    assert_consistent_with_trials(report)


@pytest.fixture(scope="module")
def reproduced(files, budget_runs):
    """The ratio run's saved config passed back with --config and the same calibration data, no budget."""
    _, out, report = budget_runs("ratio", "--calibration", files.calib, "--data", files.held,
                                 "--target-ratio", TARGET_RATIO, "--save-config", files.folder / "ratio.yaml")
    again = files.folder / "again.onnx"
    r = invoke("compress", files.model, "-o", again, "--config", files.folder / "ratio.yaml",
               "--calibration", files.calib, "--no-check", "-q")
    assert r.exit_code == 0, r.output
    return out, report, again


def test_saved_config_reproduces_the_budget_file(files, reproduced):
    out, report, again = reproduced
    saved = yaml.safe_load((files.folder / "ratio.yaml").read_text())
    assert saved == report["budget"]["config"] and set(saved["nodes"]) == set(LAYERS)
    first, second = stamp(out), stamp(again)
    assert second["layers"] == first["layers"] == saved["nodes"]
    assert second["calibrated"] is True
    # the fits are deterministic: the same graph, tensor for tensor
    a, b = onnx.load(str(out)), onnx.load(str(again))
    assert a.graph.SerializeToString() == b.graph.SerializeToString()
    # and the whole file (test below): a few hundred bytes of slack here keeps the two failures apart
    assert abs(again.stat().st_size - out.stat().st_size) < 1024, (again.stat().st_size, out.stat().st_size)


def test_saved_config_reproduces_the_budget_file_byte_for_byte(reproduced):
    out, _, again = reproduced
    assert again.stat().st_size == out.stat().st_size
    assert again.read_bytes() == out.read_bytes()


def test_saved_config_keeps_the_plan_flags(files, tmp_path):
    config = tmp_path / "c.yaml"
    first = tmp_path / "first.onnx"
    r = invoke("compress", files.model, "-o", first, "--calibration", files.calib, "--target-ratio", "3",
               "--min-elements", "2000", "--save-config", config, "--no-check", "-q")
    assert r.exit_code == 0, r.output
    assert set(stamp(first)["layers"]) == {"conv2", "fc1", "fc2"}  # conv1 and fc3 have < 2000 weights
    again = tmp_path / "again.onnx"
    r = invoke("compress", files.model, "-o", again, "--config", config, "--calibration", files.calib,
               "--no-check", "-q")
    assert r.exit_code == 0, r.output
    assert stamp(again)["layers"] == stamp(first)["layers"]


@pytest.mark.parametrize("which", ["input", "output"])
def test_save_config_does_not_overwrite_a_model(files, tmp_path, which):
    model, out = tmp_path / "m.onnx", tmp_path / "o.onnx"
    shutil.copyfile(files.model, model)
    before = model.read_bytes()
    r = invoke("compress", model, "-o", out, "--calibration", files.calib, "--target-ratio", "3",
               "--save-config", model if which == "input" else out, "--no-check", "-q")
    assert model.read_bytes() == before
    assert r.exit_code == ExitCode.OUTPUT_ERROR and "error:" in r.output, r.output


# --- 7. the allocator on hand-made tables ---------------------------------------------------------

def fake_table(sizes=(4096, 1024, 512), scales=(1.0, 0.6, 1.5)):
    """kmeans b2..b6 per layer: bytes = codes + codebook, error halving per bit (a convex curve)."""
    table = []
    for n, s in zip(sizes, scales):
        points = []
        for bits in range(2, 7):
            stored = n * bits // 8 + 4 * 2 ** bits
            points.append(Point(make_method_config({"method": "kmeans", "bits": bits}),
                                SimpleNamespace(bits=bits, stored_bytes=stored), stored, s * 2.0 ** -bits))
        table.append(points)
    return table


GAINS = [1.0, 0.5, 2.0]
REST = 700  # the file's bytes besides the codes: graph, biases, decoders


def code_bytes(table, choice):
    return sum(p[i].stored_bytes for p, i in zip(table, choice))


def weighted_error(table, gains, choice):
    return sum((g * p[i].rel_err) ** 2 for p, g, i in zip(table, gains, choice))


def fake_size_of(table):
    # decoders of odd bit widths cost a few bytes more: the correction loop has something to correct
    return lambda choice: REST + code_bytes(table, choice) + sum(9 for p, i in zip(table, choice)
                                                                 if p[i].encoded.bits % 2)


def fake_measure(table, gains=GAINS):
    def measure(choice):
        e = weighted_error(table, gains, choice)
        return {"top1_agreement": 1.0 - math.sqrt(e), "cosine_mean": 1.0 - e}
    return measure


def test_choose_trades_error_for_bytes():
    table = fake_table()
    assert choose(table, 1e-18, GAINS) == [4, 4, 4]  # most accurate
    assert choose(table, 1e3, GAINS) == [0, 0, 0]    # fewest bytes
    # at one lambda a layer with a larger gain gets at least as many bits as the same layer with a smaller one
    for lam in np.logspace(-12, -3, 30):
        low, high = choose(table, lam, [0.5] * 3), choose(table, lam, [2.0] * 3)
        assert all(h >= l for h, l in zip(high, low)), (lam, low, high)


def test_lambda_for_size_meets_the_budget_with_the_least_error():
    table = fake_table()
    combos = list(product(*(range(len(p)) for p in table)))

    def best_error_within(limit):
        return min(weighted_error(table, GAINS, c) for c in combos if code_bytes(table, c) <= limit)

    lightest, heaviest = code_bytes(table, [0, 0, 0]), code_bytes(table, [4, 4, 4])
    hull = {code_bytes(table, choose(table, lam, GAINS)) for lam in np.logspace(-14, 0, 300)}
    assert len(hull) > 5
    for limit in sorted(hull | set(np.linspace(lightest, heaviest, 25).astype(int))):
        lam = lambda_for_size(table, GAINS, limit)
        choice = choose(table, lam, GAINS)
        assert code_bytes(table, choice) <= limit, (limit, choice)
        if limit in hull:  # a Lagrangian point is the exact optimum at its own size
            assert weighted_error(table, GAINS, choice) == pytest.approx(best_error_within(limit)), (limit, choice)
        # the smallest such lambda: any smaller one stores more than the budget
        assert lam == pytest.approx(1e-18) or code_bytes(table, choose(table, lam / 1.01, GAINS)) > limit
        # and no lambda does better within the budget
        for other in np.logspace(-14, 0, 60):
            c = choose(table, other, GAINS)
            if code_bytes(table, c) <= limit:
                assert weighted_error(table, GAINS, choice) <= weighted_error(table, GAINS, c) + 1e-15
    assert lambda_for_size(table, GAINS, heaviest + 10) == pytest.approx(1e-18)


def test_allocate_meets_a_target_measured_on_the_file():
    table = fake_table()
    size_of, measure = fake_size_of(table), fake_measure(table)
    for target in range(size_of([0, 0, 0]) + 1, size_of([4, 4, 4]) + 200, 97):
        alloc = allocate(table, GAINS, Budget(target_bytes=target), size_of, measure)
        assert alloc.file_bytes == size_of(alloc.choice) <= target, (target, alloc.choice)
        assert len(alloc.history) == 1 and alloc.quality == measure(alloc.choice)
        assert alloc.gains == GAINS


def test_allocate_backs_off_until_the_floor_holds():
    table = fake_table()
    size_of, measure = fake_size_of(table), fake_measure(table)
    target = size_of([0, 1, 0]) + 50
    first = measure(choose(table, lambda_for_size(table, GAINS, target - REST), GAINS))
    floor = first["top1_agreement"] + 0.5 * (1 - first["top1_agreement"])  # above what the target allows
    said = []
    alloc = allocate(table, GAINS, Budget(target_bytes=target, min_agreement=floor), size_of, measure, said.append)
    assert alloc.quality["top1_agreement"] >= floor
    assert len(alloc.history) >= 2 and len(said) == len(alloc.history)
    assert all(h["top1_agreement"] < floor for h in alloc.history[:-1])
    for before, after in zip(alloc.history, alloc.history[1:]):
        assert after["lambda"] == pytest.approx(before["lambda"] / 2)
    assert alloc.file_bytes > target  # the floor won over the size
    assert alloc.file_bytes == alloc.history[-1]["file_bytes"] == size_of(alloc.choice)
    # a floor no choice reaches: every back-off step is tried, the result says it failed
    never = allocate(table, GAINS, Budget(target_bytes=target, min_agreement=1.0), size_of, measure)
    assert len(never.history) == 1 + BACKOFF_STEPS
    assert not Budget(target_bytes=target, min_agreement=1.0).floor_holds(never.quality)


def test_allocate_floor_only_returns_the_smallest_passing_trial():
    table = fake_table()
    size_of, measure = fake_size_of(table), fake_measure(table)
    qualities = sorted({measure(c)["top1_agreement"] for c in product(range(5), range(5), range(5))})
    for floor in (qualities[len(qualities) // 4], qualities[len(qualities) // 2], qualities[-3]):
        budget_ = Budget(min_agreement=floor)
        alloc = allocate(table, GAINS, budget_, size_of, measure)
        passing = [h for h in alloc.history if h["top1_agreement"] >= floor]
        assert budget_.floor_holds(alloc.quality), (floor, alloc.history)
        assert alloc.file_bytes == min(h["file_bytes"] for h in passing), (floor, alloc.history)
        assert alloc.file_bytes == size_of(alloc.choice)
    # a floor every choice holds: the lightest; one none holds: the most accurate, reported as failing
    assert allocate(table, GAINS, Budget(min_agreement=1e-6), size_of, measure).choice == [0, 0, 0]
    worst = allocate(table, GAINS, Budget(min_agreement=1.0), size_of, measure)
    assert worst.choice == [4, 4, 4] and len(worst.history) == 1
    assert not Budget(min_agreement=1.0).floor_holds(worst.quality)


def test_allocate_never_exceeds_the_target_when_decoders_vary():
    """Odd bit widths with a costlier decoder (as the standard-op unpacking is): a lighter setting
    can make a larger file, so the first lambda overshoots and has to be corrected."""
    table = fake_table()
    extra = [0, 120, 0, 120, 0]  # per setting, b2..b6

    def size_of(choice):
        return REST + code_bytes(table, choice) + sum(extra[i] for i in choice)

    over = []
    for target in range(size_of([0, 0, 0]) + 1, size_of([4, 4, 4]) + 300, 7):
        alloc = allocate(table, GAINS, Budget(target_bytes=target), size_of, fake_measure(table))
        if alloc.file_bytes > target:
            over.append((target, alloc.file_bytes, alloc.choice))
    assert not over, over[:5]


def test_allocate_rejects_a_target_below_the_smallest_file():
    table = fake_table()
    size_of, measure = fake_size_of(table), fake_measure(table)
    smallest = size_of([0, 0, 0])
    for target in (1, smallest - 1):
        with pytest.raises(ConfigError, match="below the smallest file"):
            allocate(table, GAINS, Budget(target_bytes=target), size_of, measure)
    assert allocate(table, GAINS, Budget(target_bytes=smallest + 1), size_of, measure).choice == [0, 0, 0]


@pytest.mark.parametrize("kwargs", [{}, {"target_bytes": 0}, {"target_bytes": -5}, {"min_agreement": 1.5},
                                    {"min_agreement": 0.0}, {"min_cosine": -0.1}, {"min_cosine": 2}])
def test_bad_budgets_are_config_errors(kwargs):
    with pytest.raises(ConfigError):
        Budget(**kwargs)


def test_output_quality():
    ref = np.array([[1.0, 2.0, 0.0], [0.0, 1.0, 3.0], [2.0, 0.0, 1.0], [1.0, 1.0, 2.0]])
    cand = ref.copy()
    cand[1] = [4.0, 1.0, 3.0]   # argmax changes
    cand[3] *= 2                # same direction: cosine 1
    q = output_quality(ref, cand)
    assert q["top1_agreement"] == pytest.approx(0.75)
    cos1 = ref[1] @ cand[1] / (np.linalg.norm(ref[1]) * np.linalg.norm(cand[1]))
    assert q["cosine_mean"] == pytest.approx((3 + cos1) / 4)


# --- 8.-9. bad input and warnings on the command line ---------------------------------------------

def assert_clean_error(r, code, *words, out=None):
    assert r.exit_code == code, (r.exit_code, r.output)
    assert "error:" in r.output.lower(), r.output
    assert "Traceback" not in r.output and "internal error" not in r.output, r.output
    for w in words:
        assert w in r.output, r.output
    if out is not None:
        assert not out.exists()


def test_bad_budget_input_is_one_clear_error(files, tmp_path):
    out = tmp_path / "o.onnx"
    base = ("compress", files.model, "-o", out, "--no-check", "-q")
    for flag in (("--target-ratio", "4"), ("--target-size", "30000"), ("--min-agreement", "0.9")):
        assert_clean_error(invoke(*base, *flag), ExitCode.USAGE, "needs --calibration", out=out)
    assert_clean_error(invoke(*base, "--calibration", files.calib, "--target-ratio", "4", "--target-size", "30000"),
                       ExitCode.USAGE, "--target-ratio", "--target-size", "not both", out=out)
    for value in ("0.5", "1"):
        assert_clean_error(invoke(*base, "--calibration", files.calib, "--target-ratio", value),
                           ExitCode.USAGE, "--target-ratio", value, out=out)
    for value in ("1.5", "0"):
        assert_clean_error(invoke(*base, "--calibration", files.calib, "--min-agreement", value),
                           ExitCode.USAGE, "--min-agreement", value, out=out)
    assert_clean_error(invoke(*base, "--calibration", files.calib, "--target-size", "0"),
                       ExitCode.USAGE, "--target-size", out=out)
    wrong = tmp_path / "wrong.npz"
    np.savez(wrong, images=correlated_images(4, 0))
    assert_clean_error(invoke(*base, "--calibration", wrong), ExitCode.INVALID_MODEL,
                       "wrong.npz", "no array for input", "'x'", out=out)
    assert_clean_error(invoke(*base, "--calibration", wrong, "--target-ratio", "4"), ExitCode.INVALID_MODEL,
                       "no array for input", out=out)
    r = invoke(*base, "--calibration", tmp_path / "missing.npz")
    assert r.exit_code != 0
    assert_clean_error(r, r.exit_code, "missing.npz", out=out)


def test_same_file_for_calibration_and_data_warns(files, tmp_path):
    warning = "warning: --calibration and --data are the same file"
    alias = tmp_path / "alias.npz"  # another name for the same file: os.path.samefile, not string equality
    os.link(files.calib, alias)
    out, report = tmp_path / "o.onnx", tmp_path / "r.json"
    one_layer = ("--include", "fc3", "--no-check", "-q", "--json", report)
    r = invoke("compress", files.model, "-o", out, "--calibration", files.calib, "--data", alias, *one_layer)
    assert r.exit_code == 0, r.output
    assert warning in r.output
    assert json.loads(report.read_text())["calibration"]["same_file_as_data"] is True
    r = invoke("compress", files.model, "-o", out, "--calibration", files.calib, "--data", files.held, *one_layer)
    assert r.exit_code == 0 and warning not in r.output, r.output
    assert json.loads(report.read_text())["calibration"]["same_file_as_data"] is False
    grid = tmp_path / "g.yaml"
    grid.write_text("settings:\n  - {method: kmeans, bits: 3}\nper_layer: false\ninclude: [fc3]\n")
    r = invoke("sweep", files.model, "--data", alias, "--calibration", files.calib, "--out", tmp_path / "s",
               "--grid", grid, "--no-plots", "-q")
    assert r.exit_code == 0, r.output
    assert warning in r.output


# --- 10. sweep --calibration ----------------------------------------------------------------------

def test_sweep_with_calibration_is_marked_and_better_at_low_bits(files, tmp_path):
    grid = tmp_path / "small.yaml"
    grid.write_text("settings:\n  - {method: kmeans, bits: [2, 3]}\nper_layer: false\nmin_elements: 0\n")
    reports = {}
    for name, extra in (("free", ()), ("aware", ("--calibration", files.calib))):
        out = tmp_path / name
        r = invoke("sweep", files.model, "--data", files.held, "--out", out, "--grid", grid, "--no-plots", "-q",
                   *extra)
        assert r.exit_code == 0, r.output
        reports[name] = json.loads((out / "sweep.json").read_text())
        assert len(list(csv.DictReader((out / "sweep.csv").open()))) == 3  # baseline + 2 settings
    assert reports["free"]["calibrated"] is False and reports["aware"]["calibrated"] is True
    rows = {name: {row["label"]: row for row in rep["rows"]} for name, rep in reports.items()}
    free, aware = rows["free"]["kmeans b2"], rows["aware"]["kmeans b2"]
    assert aware["file_bytes"] == free["file_bytes"]  # same setting, same size
    assert aware["output_rel_err"] < free["output_rel_err"], (aware["output_rel_err"], free["output_rel_err"])
    assert aware["top1_agreement"] >= free["top1_agreement"], (aware["top1_agreement"], free["top1_agreement"])


def test_fill_spends_the_slack_without_passing_the_target():
    from onnxvq.budget import fill

    table = fake_table()
    size_of = fake_size_of(table)
    for target in range(size_of([0, 0, 0]) + 1, size_of([4, 4, 4]) + 200, 97):
        start = choose(table, lambda_for_size(table, GAINS, target - REST - 30), GAINS)
        if size_of(start) > target:
            continue
        filled = fill(table, GAINS, start, target, size_of)
        assert size_of(filled) <= target
        assert weighted_error(table, GAINS, filled) <= weighted_error(table, GAINS, start)
        # nothing affordable is left: no single upgrade both fits and cuts the error
        for j, points in enumerate(table):
            for i, p in enumerate(points):
                trial = list(filled)
                trial[j] = i
                if p.rel_err < points[filled[j]].rel_err:
                    assert size_of(trial) > target, (target, filled, j, i)
