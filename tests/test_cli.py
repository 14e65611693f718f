"""The CLI end to end, and every bad input of the foundation issue: one line, a distinct exit code."""
import hashlib
import json
import os
import subprocess
import sys

import numpy as np
import onnx
import pytest
from click.testing import CliRunner

import onnxvq
from onnxvq.cli import main
from onnxvq.errors import ExitCode

from . import builders


@pytest.fixture()
def wide_mlp_path(tmp_path):
    """Layers with hundreds of outputs: enough rows for 256-codeword PQ codebooks to pay off."""
    path = tmp_path / "wide.onnx"
    onnx.save(builders.mlp_model(k=128, hidden=512, n=384), path)
    return path


@pytest.fixture()
def mlp_path(tmp_path):
    path = tmp_path / "mlp.onnx"
    onnx.save(builders.mlp_model(k=128, hidden=96), path)
    return path


def invoke(*args):
    result = CliRunner().invoke(main, [str(a) for a in args], catch_exceptions=False)
    return result


def digest(path):
    return hashlib.sha256(path.read_bytes()).hexdigest()


def test_compress_writes_model_report_and_json(wide_mlp_path, tmp_path):
    mlp_path = wide_mlp_path
    out, report = tmp_path / "out.onnx", tmp_path / "report.json"
    before = digest(mlp_path)
    r = invoke("compress", mlp_path, "-o", out, "--method", "pq", "--bits", "8", "--dim", "2",
               "--min-elements", "0", "--json", report, "--quiet")
    assert r.exit_code == 0, r.output
    assert digest(mlp_path) == before
    data = json.loads(report.read_text())
    assert {"layers", "original_file_bytes", "compressed_file_bytes", "parity"} <= set(data)
    assert {"max_abs_err", "rel_err", "cosine", "top1_agreement"} <= set(data["parity"])
    assert data["parity"]["cosine"] >= 0.99
    for layer in data["layers"]:
        assert {"name", "method", "original_bytes", "compressed_bytes", "skipped_reason"} <= set(layer)
    assert data["compressed_file_bytes"] == out.stat().st_size
    sess = onnxvq.session(str(out))
    x = np.random.default_rng(0).standard_normal((2, 3, 128)).astype(np.float32)
    assert sess.run(None, {"X": x})[0].shape == (6, 384)


def test_compress_prints_the_table(mlp_path, tmp_path):
    r = invoke("compress", mlp_path, "-o", tmp_path / "o.onnx", "--method", "kmeans", "--bits", "6",
               "--min-elements", "0", "--quiet")
    assert r.exit_code == 0 and r.output == ""
    r = invoke("compress", mlp_path, "-o", tmp_path / "o2.onnx", "--method", "kmeans", "--bits", "6",
               "--min-elements", "0")
    assert r.exit_code == 0, r.output
    for text in ("fc1", "fc2", "kmeans b6", "cosine", "compressed layers:", "whole model file:"):
        assert text in r.output


def test_layer_bytes_add_up_to_the_file(mlp_path, tmp_path):
    out, report = tmp_path / "out.onnx", tmp_path / "r.json"
    invoke("compress", mlp_path, "-o", out, "--method", "kmeans", "--bits", "4", "--min-elements", "0",
           "--json", report, "--quiet", "--no-check")
    data = json.loads(report.read_text())
    model = onnx.load(out)
    init_bytes = sum(onnx.numpy_helper.to_array(t).nbytes for t in model.graph.initializer)
    other = sum(onnx.numpy_helper.to_array(t).nbytes for t in model.graph.initializer
                if not t.name.endswith(("vq_codes", "vq_codebooks", ".vq.codes", ".vq.codebooks"))
                and t.name != "b2")  # b2: fc2's folded bias
    layer_bytes = sum(l["compressed_bytes"] for l in data["layers"] if not l["skipped_reason"])
    assert layer_bytes + other == init_bytes
    overhead = out.stat().st_size - init_bytes
    assert 0 < overhead < 4096  # protobuf framing, names and attributes
    assert data["protobuf_overhead_bytes"] == overhead


def test_portable_runs_in_plain_onnxruntime(mlp_path, tmp_path):
    import onnxruntime as ort

    custom, portable = tmp_path / "c.onnx", tmp_path / "p.onnx"
    for path, fmt in ((custom, "custom"), (portable, "portable")):
        assert invoke("compress", mlp_path, "-o", path, "--method", "pq", "--bits", "5", "--dim", "2",
                      "--min-elements", "0", "--format", fmt, "--quiet").exit_code == 0
    x = np.random.default_rng(1).standard_normal((4, 3, 128)).astype(np.float32)
    plain = ort.InferenceSession(str(portable), providers=["CPUExecutionProvider"]).run(None, {"X": x})[0]
    ours = onnxvq.session(str(custom)).run(None, {"X": x})[0]
    np.testing.assert_allclose(plain, ours, rtol=1e-5, atol=1e-5 * np.abs(ours).max())


def test_same_seed_same_bytes(mlp_path, tmp_path):
    a, b = tmp_path / "a.onnx", tmp_path / "b.onnx"
    for path in (a, b):
        invoke("compress", mlp_path, "-o", path, "--method", "pq", "--bits", "4", "--dim", "2", "--seed", "7",
               "--min-elements", "0", "--quiet", "--no-check")
    assert a.read_bytes() == b.read_bytes()


def test_check_command_and_thresholds(mlp_path, tmp_path):
    out = tmp_path / "o.onnx"
    invoke("compress", mlp_path, "-o", out, "--method", "binary", "--min-elements", "0", "--quiet", "--no-check")
    ok = invoke("check", mlp_path, out, "--samples", "16", "--json", tmp_path / "c.json")
    assert ok.exit_code == 0 and "cosine" in ok.output
    report = json.loads((tmp_path / "c.json").read_text())
    assert report["layers"] and report["parity"]["samples"] == 16
    strict = invoke("check", mlp_path, out, "--min-cosine", "0.999999")
    assert strict.exit_code == ExitCode.CHECK_FAILED


def test_check_with_data_file(mlp_path, tmp_path):
    out, data = tmp_path / "o.onnx", tmp_path / "inputs.npz"
    np.savez(data, X=np.random.default_rng(0).standard_normal((5, 3, 128)).astype(np.float32))
    invoke("compress", mlp_path, "-o", out, "--min-elements", "0", "--quiet", "--no-check")
    r = invoke("check", mlp_path, out, "--data", data, "--json", tmp_path / "c.json")
    assert r.exit_code == 0, r.output
    assert json.loads((tmp_path / "c.json").read_text())["parity"]["samples"] == 5


def test_inspect(mlp_path, tmp_path):
    r = invoke("inspect", mlp_path, "--json", tmp_path / "i.json")
    assert r.exit_code == 0 and "fc1" in r.output and "best whole-file ratio" in r.output
    inv = json.loads((tmp_path / "i.json").read_text())
    assert 0.9 < inv["dense_share"] <= 1.0


def test_config_file_is_stamped_into_metadata(mlp_path, tmp_path):
    cfg = tmp_path / "cfg.yaml"
    cfg.write_text("method: pq\nbits: 4\ndim: 2\nmin_elements: 0\nnodes:\n  fc2: {method: kmeans, bits: 3}\n")
    out = tmp_path / "o.onnx"
    assert invoke("compress", mlp_path, "-o", out, "--config", cfg, "--quiet", "--no-check").exit_code == 0
    stamp = json.loads({p.key: p.value for p in onnx.load(out).metadata_props}["onnxvq"])
    assert stamp["layers"]["fc1"]["method"] == "pq" and stamp["layers"]["fc2"] == {
        "method": "kmeans", "bits": 3, "group_size": 0, "codebook_dtype": "float32"}


# --- bad input: one line on stderr, a distinct exit code, input untouched, no partial output ----------

def run_cli(*args):
    """A real process, to see exactly what a user sees (stderr, exit code, no traceback)."""
    return subprocess.run([sys.executable, "-m", "onnxvq.cli", *map(str, args)], capture_output=True, text=True,
                          env={**os.environ, "PYTHONPATH": os.getcwd()})


def assert_clean_failure(proc, code, *words):
    assert proc.returncode == code, (proc.returncode, proc.stderr)
    assert "Traceback" not in proc.stderr and proc.stderr.startswith("onnxvq: error:")
    assert len(proc.stderr.strip().splitlines()) == 1, proc.stderr
    for w in words:
        assert w in proc.stderr, proc.stderr


def leftovers(folder, keep):
    return sorted(p.name for p in folder.iterdir() if p.name not in keep)


def test_bad_inputs(tmp_path, mlp_path):
    out = tmp_path / "out.onnx"
    assert_clean_failure(run_cli("compress", tmp_path / "missing.onnx", "-o", out), ExitCode.INPUT_NOT_FOUND, "no such file")
    (tmp_path / "text.onnx").write_text("this is not a model")
    assert_clean_failure(run_cli("compress", tmp_path / "text.onnx", "-o", out), ExitCode.INVALID_MODEL, "text.onnx")
    truncated = tmp_path / "truncated.onnx"
    truncated.write_bytes(mlp_path.read_bytes()[: mlp_path.stat().st_size // 2])
    assert_clean_failure(run_cli("compress", truncated, "-o", out), ExitCode.INVALID_MODEL, "truncated.onnx")
    before = digest(mlp_path)
    assert_clean_failure(run_cli("compress", mlp_path, "-o", mlp_path), ExitCode.OUTPUT_ERROR, "input model")
    assert digest(mlp_path) == before
    nothing = tmp_path / "act.onnx"
    onnx.save(builders.non_constant_model(), nothing)
    assert_clean_failure(run_cli("compress", nothing, "-o", out), ExitCode.NOTHING_TO_DO, "no layer")
    nan_model = builders.gemm_model()
    w = onnx.numpy_helper.to_array(nan_model.graph.initializer[0]).copy()
    w[3, 1] = np.inf
    nan_model.graph.initializer[0].CopyFrom(onnx.numpy_helper.from_array(w, "W"))
    onnx.save(nan_model, tmp_path / "nan.onnx")
    assert_clean_failure(run_cli("compress", tmp_path / "nan.onnx", "-o", out, "--min-elements", "0"),
                         ExitCode.INVALID_WEIGHTS, "'W'")
    assert_clean_failure(run_cli("compress", mlp_path, "-o", tmp_path / "nofolder" / "o.onnx"),
                         ExitCode.OUTPUT_ERROR, "does not exist")
    assert not out.exists()
    assert leftovers(tmp_path, {"text.onnx", "truncated.onnx", "mlp.onnx", "act.onnx", "nan.onnx"}) == []


def test_unwritable_folder(tmp_path, mlp_path, monkeypatch):
    """As root os.access says yes to everything, so simulate the refusal the OS would give a user."""
    import onnxvq.modelio as modelio

    real_access = os.access
    locked = tmp_path / "locked"
    locked.mkdir()
    monkeypatch.setattr(modelio.os, "access", lambda p, m: False if os.fspath(p) == str(locked) else real_access(p, m))
    r = CliRunner().invoke(main, ["compress", str(mlp_path), "-o", str(locked / "o.onnx")])
    assert r.exit_code == ExitCode.OUTPUT_ERROR and "not writable" in r.output
    assert list(locked.iterdir()) == []


def test_failed_write_leaves_nothing_behind(tmp_path, mlp_path, monkeypatch):
    """A write that dies half way (disk full) leaves no partial file and an old output untouched."""
    import onnxvq.modelio as modelio

    out = tmp_path / "out.onnx"
    out.write_bytes(b"previous result")

    def disk_full(*a, **k):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(modelio.os, "replace", disk_full)
    r = CliRunner().invoke(main, ["compress", str(mlp_path), "-o", str(out), "--min-elements", "0", "--quiet"])
    assert r.exit_code == ExitCode.OUTPUT_ERROR and "No space left" in r.output
    assert out.read_bytes() == b"previous result"
    assert leftovers(tmp_path, {"mlp.onnx", "out.onnx"}) == []


def test_external_data_model_loads_and_compresses(tmp_path):
    src = tmp_path / "ext.onnx"
    # Small tensors stay inline, as exporters write them (ORT cannot shape-infer from external shape tensors).
    onnx.save(builders.mlp_model(k=128, hidden=96), src, save_as_external_data=True, location="ext.onnx.data",
              size_threshold=1024)
    assert (tmp_path / "ext.onnx.data").exists()
    out = tmp_path / "out.onnx"
    r = invoke("compress", src, "-o", out, "--min-elements", "0", "--quiet", "--json", tmp_path / "r.json")
    assert r.exit_code == 0, r.output
    data = json.loads((tmp_path / "r.json").read_text())
    assert data["original_file_bytes"] == src.stat().st_size + (tmp_path / "ext.onnx.data").stat().st_size
    assert data["parity"]["cosine"] > 0.9


def test_large_models_are_written_with_external_data(tmp_path, monkeypatch):
    """Past the protobuf limit the output goes to <name>.data; simulated with a low threshold."""
    import onnxvq.modelio as modelio

    monkeypatch.setattr(modelio, "EXTERNAL_DATA_THRESHOLD", 2_000)
    src = tmp_path / "m.onnx"
    onnx.save(builders.mlp_model(k=128, hidden=96), src)
    out = tmp_path / "o.onnx"
    r = invoke("compress", src, "-o", out, "--min-elements", "0", "--quiet", "--json", tmp_path / "r.json")
    assert r.exit_code == 0, r.output
    assert (tmp_path / "o.onnx.data").exists()
    data = json.loads((tmp_path / "r.json").read_text())
    assert data["compressed_file_bytes"] == out.stat().st_size + (tmp_path / "o.onnx.data").stat().st_size
    assert leftovers(tmp_path, {"m.onnx", "o.onnx", "o.onnx.data", "r.json"}) == []
    x = np.random.default_rng(0).standard_normal((2, 3, 128)).astype(np.float32)
    assert onnxvq.session(str(out)).run(None, {"X": x})[0].shape == (6, 10)
