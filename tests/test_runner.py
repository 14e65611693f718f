"""The C++ deployment runner (custom_ops/runner) on x86_64: built here with CMake against the
onnxruntime wheel this python uses, it must give the same output as onnxvq.session on a
compressed model, read and write .npy files numpy understands, and fail clearly on bad flags.
"""
from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import numpy as np
import onnx
import onnxruntime
import pytest
from click.testing import CliRunner
from onnx import TensorProto, helper, numpy_helper

import onnxvq
from onnxvq.cli import main as cli_main

ROOT = Path(__file__).resolve().parents[1]
RUNNER_SOURCE = ROOT / "custom_ops" / "runner"
# Apart from scripts/aarch64/build.sh's build/x86_64/runner, so the two never race.
BUILD_DIR = ROOT / "build" / "pytest" / "runner"
ORT_INCLUDE = ROOT / ".cache" / "onnxruntime" / "include"


def _onnxruntime_library() -> Path:
    """libonnxruntime.so.<version> of the onnxruntime that onnxvq.session uses."""
    found = sorted((Path(onnxruntime.__file__).parent / "capi").glob("libonnxruntime.so.*"))
    if not found:
        pytest.fail("the onnxruntime package has no capi/libonnxruntime.so.*")
    return found[-1]


def _run(command):
    return subprocess.run([str(c) for c in command], capture_output=True, text=True)


@pytest.fixture(scope="module")
def runner() -> Path:
    if shutil.which("cmake") is None:
        pytest.skip("cmake is not installed")
    if not (ORT_INCLUDE / "onnxruntime_cxx_api.h").exists():
        subprocess.run(["bash", str(ROOT / "scripts" / "fetch_ort_headers.sh")], check=True)
    configure = ["cmake", "-S", RUNNER_SOURCE, "-B", BUILD_DIR, "-DCMAKE_BUILD_TYPE=Release",
                 f"-DONNXRUNTIME_INCLUDE_DIR={ORT_INCLUDE}", f"-DONNXRUNTIME_LIBRARY={_onnxruntime_library()}"]
    if shutil.which("ninja") and not (BUILD_DIR / "CMakeCache.txt").exists():
        configure[1:1] = ["-G", "Ninja"]
    for command in (configure, ["cmake", "--build", BUILD_DIR, "--parallel"]):
        done = _run(command)
        assert done.returncode == 0, f"{' '.join(map(str, command))}\n{done.stdout}{done.stderr}"
    return BUILD_DIR / "onnxvq_runner"


@pytest.fixture(scope="module")
def compressed_model(tmp_path_factory) -> Path:
    """A Gemm with odd sizes, compressed with 4-bit PQ into one VQMatMul."""
    work = tmp_path_factory.mktemp("runner")
    rng = np.random.default_rng(0)
    node = helper.make_node("Gemm", ["X", "W", "b"], ["Y"], name="fc", transB=1)
    graph = helper.make_graph(
        [node], "gemm", [helper.make_tensor_value_info("X", TensorProto.FLOAT, ["batch", 37])],
        [helper.make_tensor_value_info("Y", TensorProto.FLOAT, ["batch", 23])],
        [numpy_helper.from_array((rng.standard_normal((23, 37)) * 0.2).astype(np.float32), "W"),
         numpy_helper.from_array(rng.standard_normal(23).astype(np.float32), "b")])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    source, target = work / "gemm.onnx", work / "gemm.vq.onnx"
    onnx.save(model, source)
    result = CliRunner().invoke(cli_main, ["compress", str(source), "-o", str(target), "--method", "pq",
                                           "--bits", "4", "--dim", "3", "--min-elements", "0", "--quiet"])
    assert result.exit_code == 0, result.output
    assert "VQMatMul" in {n.op_type for n in onnx.load(target).graph.node}
    return target


def test_runner_output_equals_onnxvq_session(runner, compressed_model, tmp_path):
    x = np.random.default_rng(1).uniform(-1, 1, (5, 37)).astype(np.float32)
    np.save(tmp_path / "x.npy", x)
    done = _run([runner, "--model", compressed_model, "--ops-library", onnxvq.library_path(),
                 "--input", f"X={tmp_path / 'x.npy'}", "--output-dir", tmp_path, "--repeat", "3"])
    assert done.returncode == 0, done.stdout + done.stderr
    assert "kernel: " in done.stdout and "run: 3 timed" in done.stdout
    y = np.load(tmp_path / "Y.npy")
    expected = onnxvq.session(compressed_model).run(None, {"X": x})[0]
    assert y.dtype == np.float32 and y.shape == (5, 23)
    np.testing.assert_array_equal(y, expected)  # same runtime, same library: same bits


def test_runner_generates_inputs_for_free_dimensions(runner, compressed_model, tmp_path):
    done = _run([runner, "--model", compressed_model, "--ops-library", onnxvq.library_path(),
                 "--dim", "batch=4", "--output-dir", tmp_path, "--warmup", "0", "--repeat", "1"])
    assert done.returncode == 0, done.stdout + done.stderr
    assert "input X: float32 [4, 37] generated" in done.stdout
    assert np.load(tmp_path / "Y.npy").shape == (4, 23)


@pytest.mark.parametrize("flags, message", [
    (["--input", "nope=x.npy"], "the model has no input 'nope'"),
    (["--repeat", "0"], "--repeat needs an integer >= 1"),
])
def test_runner_rejects_bad_flags(runner, compressed_model, flags, message):
    done = _run([runner, "--model", compressed_model, "--ops-library", onnxvq.library_path(), *flags])
    assert done.returncode == 2 and message in done.stderr, done.stderr


def test_runner_names_a_bad_npy_file(runner, compressed_model, tmp_path):
    np.save(tmp_path / "x64.npy", np.zeros((2, 37)))  # float64, the model wants float32
    (tmp_path / "junk.npy").write_bytes(b"not numpy")
    for name, message in [("x64.npy", "dtype <f8"), ("junk.npy", "not a .npy file")]:
        done = _run([runner, "--model", compressed_model, "--ops-library", onnxvq.library_path(),
                     "--input", f"X={tmp_path / name}"])
        assert done.returncode == 1 and message in done.stderr, done.stderr


@pytest.mark.parametrize("dtype, elem_type, shape", [
    (np.float32, TensorProto.FLOAT, ()),          # a scalar
    (np.float16, TensorProto.FLOAT16, (2, 0, 3)),  # an empty tensor
    (np.int64, TensorProto.INT64, (5,)),
    (np.bool_, TensorProto.BOOL, (3, 4)),
])
def test_runner_npy_round_trip(runner, tmp_path, dtype, elem_type, shape):
    """Identity model: what numpy wrote, the runner reads, feeds and writes back unchanged."""
    graph = helper.make_graph([helper.make_node("Identity", ["X"], ["Y"])], "identity",
                              [helper.make_tensor_value_info("X", elem_type, list(shape))],
                              [helper.make_tensor_value_info("Y", elem_type, list(shape))])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.save(model, tmp_path / "identity.onnx")
    x = (np.random.default_rng(0).standard_normal(shape) * 10).astype(dtype)
    np.save(tmp_path / "x.npy", x)
    done = _run([runner, "--model", tmp_path / "identity.onnx", "--input", tmp_path / "x.npy",
                 "--output-dir", tmp_path / "out", "--repeat", "1"])
    assert done.returncode == 0, done.stderr
    y = np.load(tmp_path / "out" / "Y.npy")
    assert y.dtype == x.dtype and y.shape == x.shape and np.array_equal(y, x)
