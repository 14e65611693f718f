"""Smoke test of an installed onnxvq, run from an empty temp dir (fed on stdin, so nothing
from the source tree is importable):

  1. the installed distribution carries the op library and the `onnxvq` console script, both
     load/run from here (a wheel without either fails this check);
  2. a tiny model compressed by that `onnxvq` CLI (4-bit PQ: the fast-scan layout) runs with
     onnxvq.session on the kernel path the library reports, and matches the numpy reference
     at that path's tolerance tier;
  3. the same model with ONNXVQ_EXACT_LUT=1 (a subprocess: the kernel reads it once) matches
     the reference tightly.

    cd /tmp/x && venv/bin/python - < scripts/aarch64/wheel_smoke.py [--save-only]

--save-only stops after writing tiny.vq.onnx and x.npy (for the aarch64 wheel check).
"""
import ctypes
import os
import subprocess
import sys
from importlib import metadata
from pathlib import Path

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper
from onnx.reference import ReferenceEvaluator

import onnxvq
from onnxvq.ops.reference import reference_ops
from onnxvq.ops.schema import OP_TYPE

# The tiers of the tests, by the same names (this script cannot import tests/ or scripts/):
# outputs are compared as max|y - ref| <= tol * max(1, max|ref|), as in scripts/aarch64/run_cases.py.
#   RTOL: kernel vs reference with exact float tables (tier 1, tests/test_kernel.py RTOL_SCALE).
#   UINT8_TABLES_RTOL: the default fast-scan path's uint8 lookup tables against the exact
#   reference (the error budget of tests/test_pass.py, UINT8_TABLES_RTOL in run_cases.py).
RTOL = 1e-5
UINT8_TABLES_RTOL = 3e-2
# Path names of onnxvq_kernel_path_m (custom_ops/kernels/vq_kernel.h) that use uint8 tables.
UINT8_TABLE_PATHS = {"fastscan"}

BATCH = 3
EXACT_RUN = """
import sys, numpy as np, onnxvq
np.save(sys.argv[1], onnxvq.session("tiny.vq.onnx").run(None, {"X": np.load("x.npy")})[0])
"""


def tiny_model(path: Path) -> None:
    rng = np.random.default_rng(0)
    weight = (rng.standard_normal((24, 40)) * 0.2).astype(np.float32)
    node = helper.make_node("MatMul", ["X", "W"], ["Y"], name="fc")
    graph = helper.make_graph([node], "tiny", [helper.make_tensor_value_info("X", TensorProto.FLOAT, ["batch", 24])],
                              [helper.make_tensor_value_info("Y", TensorProto.FLOAT, ["batch", 40])],
                              [numpy_helper.from_array(weight, "W")])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.save(model, path)


def check_installed(cli: Path) -> list[str]:
    """Problems with what the wheel installed: package, op library, console script."""
    problems = []
    prefix = Path(sys.prefix).resolve()
    package = Path(onnxvq.__file__).resolve().parent
    if not package.is_relative_to(prefix):
        problems.append(f"onnxvq was imported from {package}, not from this venv ({sys.prefix})")
    dist = metadata.distribution("onnxvq")
    recorded = {str(f) for f in dist.files or ()}
    library_name = f"onnxvq/{Path(onnxvq.runtime._library_name()).name}"
    if library_name not in recorded:
        problems.append(f"the installed distribution does not list {library_name} (not in the wheel)")
    try:
        library = Path(onnxvq.library_path()).resolve()
        if not library.is_relative_to(package):
            problems.append(f"op library {library} is not the installed package's ({package})")
        ctypes.CDLL(str(library))
    except (FileNotFoundError, OSError) as exc:
        problems.append(f"op library: {exc}")
    scripts = [e for e in dist.entry_points if e.group == "console_scripts" and e.name == "onnxvq"]
    if not scripts:
        problems.append("the distribution declares no `onnxvq` console script")
    if not cli.is_file():
        problems.append(f"no `onnxvq` console script at {cli}")
    else:
        done = subprocess.run([str(cli), "--version"], capture_output=True, text=True)
        if done.returncode != 0 or onnxvq.__version__ not in done.stdout:
            problems.append(f"`{cli} --version` gave exit {done.returncode}: {(done.stdout + done.stderr).strip()}")
    return problems


def kernel_path(node: onnx.NodeProto, rows: int) -> str:
    """The path the installed library takes for this node at this many rows."""
    lib = ctypes.CDLL(onnxvq.library_path())
    fn = lib.onnxvq_kernel_path_m
    fn.restype = ctypes.c_char_p
    fn.argtypes = [ctypes.c_int64] * 10
    a = {attr.name: attr.i for attr in node.attribute}
    return fn(rows, a["format_version"], a["in_features"], a["out_features"], a["bits"], a["subvector_len"],
              a["stages"], a["axis"], a["group_size"], a["codebook_per_subspace"]).decode()


def rel_diff(y: np.ndarray, expected: np.ndarray) -> float:
    return float(np.max(np.abs(y - expected)) / max(1.0, np.max(np.abs(expected))))


def main() -> int:
    # The default check is of the default path: a stray ONNXVQ_EXACT_LUT in the caller's
    # environment would turn it into the exact one (read once, at the first session).
    os.environ.pop("ONNXVQ_EXACT_LUT", None)
    cli = Path(sys.executable).parent / "onnxvq"
    print(f"onnxvq {onnxvq.__version__} from {Path(onnxvq.__file__).resolve().parent}")
    save_only = "--save-only" in sys.argv  # run by the source tree's venv: not an installed wheel
    failures = [] if save_only else check_installed(cli)
    if not save_only:
        print(f"{'FAIL' if failures else 'PASS'}: installed package, op library and console script {cli}")
        for problem in failures:
            print(f"  {problem}")
    tiny_model(Path("tiny.onnx"))
    command = [str(cli), "compress", "tiny.onnx", "-o", "tiny.vq.onnx", "--min-elements", "0",
               "--method", "pq", "--bits", "4", "--dim", "2", "-q"]
    try:
        subprocess.run(command, check=True)
    except (OSError, subprocess.CalledProcessError) as exc:
        print(f"FAIL: {' '.join(command)}: {exc}")
        return 1
    x = np.random.default_rng(1).uniform(-1, 1, (BATCH, 24)).astype(np.float32)
    np.save("x.npy", x)
    if save_only:
        return 0

    model = onnx.load("tiny.vq.onnx")
    nodes = [n for n in model.graph.node if n.op_type == OP_TYPE]
    expected = ReferenceEvaluator(model, new_ops=reference_ops()).run(None, {"X": x})[0]
    if not nodes:
        failures.append(f"compressed model has no {OP_TYPE} node: {[n.op_type for n in model.graph.node]}")
        print(f"FAIL: {failures[-1]}")
        return 1
    path = kernel_path(nodes[0], BATCH)
    uint8 = path in UINT8_TABLE_PATHS
    tier, tol = ("UINT8_TABLES_RTOL", UINT8_TABLES_RTOL) if uint8 else ("RTOL", RTOL)
    y = onnxvq.session("tiny.vq.onnx").run(None, {"X": x})[0]
    error = rel_diff(y, expected)
    # A uint8-table path that equals the exact reference did not quantize its tables.
    ok = y.shape == expected.shape and error <= tol and (error > 0 or not uint8)
    failures += [] if ok else ["default path"]
    print(f"{'PASS' if ok else 'FAIL'}: default kernel path '{path}', output {y.shape}, "
          f"max rel diff vs reference {error:.1e} (tier {tier} = {tol:.0e}{', must be > 0' if uint8 else ''})")

    env = dict(os.environ, ONNXVQ_EXACT_LUT="1")
    done = subprocess.run([sys.executable, "-c", EXACT_RUN, "y_exact.npy"], env=env, capture_output=True, text=True)
    if done.returncode != 0:
        failures.append("exact path")
        print(f"FAIL: ONNXVQ_EXACT_LUT=1 run exited {done.returncode}:\n{done.stderr}")
    else:
        y_exact = np.load("y_exact.npy")
        error = rel_diff(y_exact, expected)
        ok = y_exact.shape == expected.shape and error <= RTOL
        failures += [] if ok else ["exact path"]
        print(f"{'PASS' if ok else 'FAIL'}: ONNXVQ_EXACT_LUT=1, output {y_exact.shape}, "
              f"max rel diff vs reference {error:.1e} (tier RTOL = {RTOL:.0e})")
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
