"""The aarch64 test cases: the C++ kernel tests under qemu, then the runner on compressed models.

Called by scripts/aarch64/test.sh after the builds, with the x86 venv's python. For every
compression method it builds a tiny model with odd shapes (onnx.helper), compresses it with
the `onnxvq compress` CLI, and runs it at batch 1 and batch > 1:

  * on aarch64 under qemu: the runner with the library's default kernel table (NEON when the
    build has one) and with ONNXVQ_FORCE_SCALAR=1;
  * on x86_64: the same runner, both ways, and onnxvq.session (the Python API);
  * in numpy: onnx's ReferenceEvaluator with onnxvq.ops.reference's VQMatMul.

VQGather cases (embedding lookup on a compressed table) are built directly with onnx.helper
from quantized tables (the CLI's Gather rewrite is not needed for them) and run the same way,
fed int64 indices (negatives included).

One line per (case, aarch64 kernel path) compares that aarch64 output with the x86 runner's
output of the same path, with the reference and (default path) with the forced-scalar path.
Prints `N passed, N failed` last; exits 1 on any failure.
"""
from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

import onnxvq
from onnxvq.ops.packing import pack_for_op
from onnxvq.ops.reference import reference_ops

# Outputs are compared relative to their scale: max|a - b| <= RTOL * max(1, max|b|).
# float32 sums of at most a few hundred terms in different orders stay well inside it.
RTOL = 1e-5
# 4-bit axis-in PQ runs the fast-scan kernel, whose default lookup tables are quantized to uint8:
# against the exact numpy reference it keeps the error budget tests/test_pass.py states (NEON vs
# scalar vs x86 must still agree bit for bit).
UINT8_TABLES_RTOL = 3e-2
BATCHES = (1, 5)
OPSET = 17


# --- models -----------------------------------------------------------------------------

def _weights(rng, *shape):
    return (rng.standard_normal(shape) * 0.2).astype(np.float32)


def _save(graph: onnx.GraphProto, path: Path) -> None:
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", OPSET)],
                              producer_name="onnxvq-aarch64-tests")
    model.ir_version = 8
    onnx.checker.check_model(model, full_check=True)
    onnx.save(model, path)


def gemm_model(path: Path, k: int, n: int) -> None:
    """Y[batch, n] = X[batch, k] @ W^T + b (Gemm, transB)."""
    rng = np.random.default_rng(k * 1000 + n)
    node = helper.make_node("Gemm", ["X", "W", "b"], ["Y"], name="fc", transB=1)
    _save(helper.make_graph(
        [node], "gemm",
        [helper.make_tensor_value_info("X", TensorProto.FLOAT, ["batch", k])],
        [helper.make_tensor_value_info("Y", TensorProto.FLOAT, ["batch", n])],
        [numpy_helper.from_array(_weights(rng, n, k), "W"),
         numpy_helper.from_array(_weights(rng, n), "b")]), path)


def mlp_model(path: Path, k: int, hidden: int, n: int) -> None:
    """A 3-D input through MatMul + bias -> Relu -> MatMul: Y[batch, 3, n]."""
    rng = np.random.default_rng(k * 1000 + hidden)
    nodes = [helper.make_node("MatMul", ["X", "W1"], ["h0"], name="fc1"),
             helper.make_node("Add", ["h0", "b1"], ["h1"], name="fc1_bias"),
             helper.make_node("Relu", ["h1"], ["h2"], name="relu"),
             helper.make_node("MatMul", ["h2", "W2"], ["Y"], name="fc2")]
    _save(helper.make_graph(
        nodes, "mlp",
        [helper.make_tensor_value_info("X", TensorProto.FLOAT, ["batch", 3, k])],
        [helper.make_tensor_value_info("Y", TensorProto.FLOAT, ["batch", 3, n])],
        [numpy_helper.from_array(_weights(rng, k, hidden), "W1"),
         numpy_helper.from_array(_weights(rng, hidden), "b1"),
         numpy_helper.from_array(_weights(rng, hidden, n), "W2")]), path)


def gather_model(path: Path, v: int, d: int, config_name: str, format_version: int = 1) -> None:
    """Y[batch, 3, d] = VQGather(indices[batch, 3]) on a [v, d] table quantized by `config_name`."""
    import dataclasses

    from onnxvq.config import KMeansConfig, PQConfig, RQConfig
    from onnxvq.ops.schema import DOMAIN, DOMAIN_VERSION, GATHER_OP_TYPE
    from onnxvq.quantizers import quantize

    configs = {
        "kmeans4": KMeansConfig(bits=4),
        "pq-in-8bit-d8-fp16": PQConfig(bits=8, dim=8, axis="in", codebook_dtype="float16"),
        "pq-in-4bit-d4": PQConfig(bits=4, dim=4, axis="in"),
        "rq-in-3x4bit-d5": RQConfig(bits=4, dim=5, stages=3, axis="in"),
        "pq-out-5bit-d2": PQConfig(bits=5, dim=2, axis="out"),
    }
    rng = np.random.default_rng(v * 1000 + d)
    coded = quantize(_weights(rng, v, d).T, configs[config_name], seed=0)  # W = table^T
    layout = dataclasses.replace(coded.layout, format_version=format_version)
    node = helper.make_node(GATHER_OP_TYPE, ["indices", "codes", "codebooks"], ["Y"], domain=DOMAIN,
                            name="embed", **layout.attributes())
    graph = helper.make_graph(
        [node], "gather", [helper.make_tensor_value_info("indices", TensorProto.INT64, ["batch", 3])],
        [helper.make_tensor_value_info("Y", TensorProto.FLOAT, ["batch", 3, d])],
        [numpy_helper.from_array(pack_for_op(coded.codes, layout), "codes"),
         numpy_helper.from_array(coded.codebooks, "codebooks")])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", OPSET),
                                                    helper.make_opsetid(DOMAIN, DOMAIN_VERSION)],
                              producer_name="onnxvq-aarch64-tests")
    model.ir_version = 8
    onnx.checker.check_model(model, full_check=True)
    onnx.save(model, path)


# name -> (builder, its arguments, input shape without the batch)
MODELS = {
    "gemm37x29": (gemm_model, (37, 29), (37,)),
    "gemm130x67": (gemm_model, (130, 67), (130,)),
    # enough output rows (> ~300) for 256-codeword PQ codebooks to be smaller than the dense weight
    "gemm130x400": (gemm_model, (130, 400), (130,)),
    "mlp45x19x11": (mlp_model, (45, 19, 11), (3, 45)),
}
# VQGather models: name -> (builder, its arguments, indices shape without the batch, V)
GATHER_MODELS = {
    "gather33x40-kmeans4": (gather_model, (33, 40, "kmeans4"), (3,), 33),
    "gather31x21-pq8-fp16": (gather_model, (31, 21, "pq-in-8bit-d8-fp16"), (3,), 31),
    "gather65x18-pq4-v2": (gather_model, (65, 18, "pq-in-4bit-d4", 2), (3,), 65),
    "gather33x17-rq3": (gather_model, (33, 17, "rq-in-3x4bit-d5"), (3,), 33),
    "gather31x11-pq-out": (gather_model, (31, 11, "pq-out-5bit-d2"), (3,), 31),
}


@dataclass(frozen=True)
class Case:
    name: str
    model: str
    flags: tuple[str, ...]
    reference_rtol: float = RTOL


# Every method, both PQ axes, several bit widths (4-bit axis-in PQ may use the fast-scan
# layout), fp16 codebooks, grouped k-means, residual stages and the SVD baseline.
CASES = (
    Case("pq-in-4bit", "gemm37x29", ("--method", "pq", "--bits", "4", "--dim", "3", "--axis", "in"),
         reference_rtol=UINT8_TABLES_RTOL),
    Case("pq-in-8bit-fp16", "gemm130x400",
         ("--method", "pq", "--bits", "8", "--dim", "4", "--axis", "in", "--codebook-dtype", "float16")),
    Case("pq-out-5bit", "mlp45x19x11", ("--method", "pq", "--bits", "5", "--dim", "2", "--axis", "out")),
    Case("kmeans-3bit-g5", "gemm37x29", ("--method", "kmeans", "--bits", "3", "--group-size", "5")),
    Case("binary", "mlp45x19x11", ("--method", "binary",)),
    Case("rq-2x3bit", "gemm37x29", ("--method", "rq", "--bits", "3", "--dim", "2", "--stages", "2")),
    Case("svd-rank5", "mlp45x19x11", ("--method", "svd", "--rank", "5")),
) + tuple(Case(name, name, ()) for name in GATHER_MODELS)


# --- running ----------------------------------------------------------------------------

@dataclass(frozen=True)
class Tools:
    qemu: list[str]          # qemu-aarch64 command prefix
    arm_runner: Path
    arm_library: Path
    arm_kernel_test: Path
    x86_runner: Path
    x86_library: Path
    expect_neon: bool
    kernel_test_cases: int = 300


@dataclass
class RunResult:
    outputs: dict[str, np.ndarray]
    kernel: str
    log: str


def run_process(command: list[str], *, force_scalar: bool,
                extra_env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
    env = dict(os.environ)
    env.update(extra_env or {})
    env.pop("ONNXVQ_FORCE_SCALAR", None)
    if force_scalar:
        env["ONNXVQ_FORCE_SCALAR"] = "1"
    return subprocess.run(command, env=env, capture_output=True, text=True)


def run_runner(prefix: list[str], runner: Path, library: Path, model: Path, inputs: Path,
               out_dir: Path, *, force_scalar: bool, input_name: str = "X") -> RunResult:
    """One onnxvq_runner process; raises RuntimeError with its log when it fails."""
    out_dir.mkdir(parents=True, exist_ok=True)
    command = prefix + [str(runner), "--model", str(model), "--ops-library", str(library),
                        "--input", f"{input_name}={inputs}", "--output-dir", str(out_dir),
                        "--warmup", "0", "--repeat", "1", "--threads", "1"]
    done = run_process(command, force_scalar=force_scalar)
    log = done.stdout + done.stderr
    if done.returncode != 0:
        raise RuntimeError(f"exit {done.returncode}: {' '.join(command)}\n{log}")
    kernel = re.search(r"^kernel: (\S+)", done.stdout, re.M)
    outputs = {p.stem: np.load(p) for p in sorted(out_dir.glob("*.npy"))}
    return RunResult(outputs, kernel.group(1) if kernel else "unknown", log)


def compress(case: Case, work: Path) -> Path:
    if case.model in GATHER_MODELS:  # built compressed, no CLI involved
        target = work / f"{case.name}.vq.onnx"
        builder, args, _, _ = GATHER_MODELS[case.model]
        builder(target, *args)
        return target
    source = work / f"{case.model}.onnx"
    if not source.exists():
        builder, args, _ = MODELS[case.model]
        builder(source, *args)
    target = work / f"{case.name}.vq.onnx"
    cli = Path(sys.executable).parent / "onnxvq"
    done = subprocess.run([str(cli), "compress", str(source), "-o", str(target), "--min-elements", "0",
                           "--seed", "0", "-q", *case.flags], capture_output=True, text=True)
    if done.returncode != 0:
        raise RuntimeError(f"onnxvq compress failed ({done.returncode}):\n{done.stdout}{done.stderr}")
    return target


def python_outputs(model: Path, x: np.ndarray, input_name: str = "X") -> tuple[np.ndarray, np.ndarray]:
    """(onnxvq.session on x86, the numpy reference) outputs for input `input_name` = x."""
    from onnx.reference import ReferenceEvaluator

    session_y = onnxvq.session(model).run(None, {input_name: x})[0]
    reference_y = ReferenceEvaluator(str(model), new_ops=reference_ops()).run(None, {input_name: x})[0]
    return session_y, np.asarray(reference_y, dtype=np.float32)


# --- comparing --------------------------------------------------------------------------

def difference(a: np.ndarray, b: np.ndarray) -> float | None:
    """Max |a - b| relative to b's scale; None when shapes differ."""
    if a.shape != b.shape:
        return None
    scale = max(1.0, float(np.max(np.abs(b))) if b.size else 1.0)
    return float(np.max(np.abs(a.astype(np.float64) - b.astype(np.float64)))) / scale if a.size else 0.0


def describe(a: np.ndarray, b: np.ndarray, rtol: float = RTOL) -> tuple[bool, str]:
    if a.shape == b.shape and np.array_equal(a, b):
        return True, "bitwise"
    error = difference(a, b)
    if error is None:
        return False, f"shape {a.shape} != {b.shape}"
    return error <= rtol, f"{error:.1e}"


class Tally:
    def __init__(self):
        self.passed = 0
        self.failed = 0

    def report(self, ok: bool, line: str, detail: str = "") -> None:
        self.passed += ok
        self.failed += not ok
        print(f"{'PASS' if ok else 'FAIL'}  {line}", flush=True)
        if detail and not ok:
            print("      " + detail.strip().replace("\n", "\n      "), flush=True)


def kernel_test(tools: Tools, force_scalar: bool) -> tuple[bool, str, str]:
    """The C++ kernel test binary under qemu: (passed, report line, log)."""
    start = time.monotonic()
    # Quick mode: the random oracle cases scaled down (ONNXVQ_TEST_CASES, default 3000),
    # since a full run takes ~5 min per path under qemu.
    done = run_process(tools.qemu + [str(tools.arm_kernel_test)], force_scalar=force_scalar,
                       extra_env={"ONNXVQ_TEST_CASES": str(tools.kernel_test_cases)})
    found = re.search(r"active kernel table: (\S+)", done.stdout)
    kernel = found.group(1) if found else "unknown"
    summary = done.stdout.strip().splitlines()[0] if done.stdout.strip() else "no output"
    mode = "forced-scalar" if force_scalar else "default"
    line = f"{'kernel-tests':22s} aarch64 {mode:13s} kernel={kernel:7s} {summary} ({time.monotonic() - start:.0f} s)"
    ok = done.returncode == 0 and kernel_ok(tools, kernel, force_scalar)
    return ok, line, done.stdout + done.stderr


def kernel_ok(tools: Tools, kernel: str, force_scalar: bool) -> bool:
    """Forced scalar must be scalar; the default must be NEON when the build has it."""
    if force_scalar:
        return kernel == "scalar"
    return kernel != "scalar" if tools.expect_neon else kernel in ("scalar", "neon")


def model_case(tools: Tools, case: Case, batch: int, work: Path, model: Path, tally: Tally,
               pool: ThreadPoolExecutor) -> None:
    """All runs of one (case, batch), then one line per aarch64 kernel path."""
    tag = f"{case.name}-b{batch}"
    rng = np.random.default_rng(batch)
    if case.model in GATHER_MODELS:  # int64 indices in [-V, V-1]
        _, _, shape, rows = GATHER_MODELS[case.model]
        x, input_name = rng.integers(-rows, rows, (batch, *shape)).astype(np.int64), "indices"
    else:
        x, input_name = rng.uniform(-1, 1, (batch, *MODELS[case.model][2])).astype(np.float32), "X"
    inputs = work / f"{tag}.{input_name}.npy"
    np.save(inputs, x)

    def arm(force_scalar):
        return run_runner(tools.qemu, tools.arm_runner, tools.arm_library, model, inputs,
                          work / tag / ("arm-scalar" if force_scalar else "arm"), force_scalar=force_scalar,
                          input_name=input_name)

    def x86(force_scalar):
        return run_runner([], tools.x86_runner, tools.x86_library, model, inputs,
                          work / tag / ("x86-scalar" if force_scalar else "x86"), force_scalar=force_scalar,
                          input_name=input_name)

    futures = {(arch, s): pool.submit(fn, s) for arch, fn in (("arm", arm), ("x86", x86))
               for s in (False, True)}
    session_y, reference_y = python_outputs(model, x, input_name)
    runs = {}
    for key, future in futures.items():
        try:
            runs[key] = future.result()
        except RuntimeError as error:
            tally.report(False, f"{tag:22s} {key[0]} {'forced-scalar' if key[1] else 'default'}: runner failed",
                         str(error))
            return

    # The x86 runner and the Python API load the same library into the same onnxruntime.
    session_check = describe(runs["x86", False].outputs["Y"], session_y)
    for force_scalar in (False, True):
        arm_run, x86_run = runs["arm", force_scalar], runs["x86", force_scalar]
        y = arm_run.outputs["Y"]
        checks = [("x86", describe(y, x86_run.outputs["Y"])),
                  ("reference", describe(y, reference_y, case.reference_rtol))]
        if not force_scalar:
            checks.insert(0, ("scalar", describe(y, runs["arm", True].outputs["Y"])))
        else:
            checks.append(("x86 runner vs onnxvq.session", session_check))
        line_ok = all(c[1][0] for c in checks) and kernel_ok(tools, arm_run.kernel, force_scalar)
        mode = "forced-scalar" if force_scalar else "default"
        text = "  ".join(f"{name if ' vs ' in name else 'vs ' + name}: {result[1]}"
                         for name, result in checks)
        tally.report(line_ok, f"{tag:22s} aarch64 {mode:13s} kernel={arm_run.kernel:7s} "
                              f"Y{list(y.shape)}  {text}", arm_run.log)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--qemu", required=True, help="qemu-aarch64 command, e.g. 'qemu-aarch64 -cpu X -L ROOT'")
    parser.add_argument("--arm-build", type=Path, required=True, help="aarch64 build dir of the top CMakeLists")
    parser.add_argument("--arm-runner", type=Path, required=True)
    parser.add_argument("--x86-runner", type=Path, required=True)
    parser.add_argument("--work", type=Path, required=True, help="scratch dir for models and outputs")
    parser.add_argument("--kernel-test-cases", type=int, default=300,
                        help="random oracle cases per kernel table for the C++ test binary "
                             "(ONNXVQ_TEST_CASES; the binary's own default is 3000)")
    args = parser.parse_args()

    arm_build = args.arm_build.resolve()
    commands = json.loads((arm_build / "compile_commands.json").read_text())
    work = args.work.resolve()
    work.mkdir(parents=True, exist_ok=True)
    # One x86 library for the whole run, whatever rebuilds the venv's meanwhile: the x86
    # runner uses this copy, and the CLI and onnxvq.session find it through ONNXVQ_LIBRARY.
    x86_library = work / "x86_64" / Path(onnxvq.library_path()).name
    x86_library.parent.mkdir(exist_ok=True)
    shutil.copy2(onnxvq.library_path(), x86_library)
    os.environ["ONNXVQ_LIBRARY"] = str(x86_library)
    # x86 on float panels: the panel GEMM's int8 tier (AVX-512 VNNI only) is tested against
    # scalar in the x86 suite; here NEON and x86 must agree at the fp32 tier.
    os.environ["ONNXVQ_EXACT_GEMM"] = "1"
    tools = Tools(
        qemu=args.qemu.split(),
        arm_runner=args.arm_runner.resolve(),
        arm_library=arm_build / "libonnxvq_ops.so",
        arm_kernel_test=arm_build / "custom_ops" / "tests" / "test_vq_kernel",
        x86_runner=args.x86_runner.resolve(),
        x86_library=x86_library,
        # The top CMakeLists.txt defines ONNXVQ_HAVE_NEON when it compiles a NEON table.
        expect_neon=any("ONNXVQ_HAVE_NEON" in c["command"] for c in commands),
        kernel_test_cases=args.kernel_test_cases,
    )
    print(f"x86 library: {tools.x86_library}\naarch64 library: {tools.arm_library} "
          f"(NEON table built: {'yes' if tools.expect_neon else 'no'})", flush=True)

    tally = Tally()
    # The kernel tests are the slowest part under qemu: they run in the background while
    # the model cases run their processes (one thread each) on the remaining cores.
    with ThreadPoolExecutor(max_workers=2) as background, \
         ThreadPoolExecutor(max_workers=max(2, os.cpu_count() or 2)) as pool:
        kernel_tests = [background.submit(kernel_test, tools, s) for s in (False, True)]
        for case in CASES:
            try:
                model = compress(case, work)
            except RuntimeError as error:
                tally.report(False, f"{case.name}: compression failed", str(error))
                continue
            for batch in BATCHES:
                model_case(tools, case, batch, work, model, tally, pool)
        for future in kernel_tests:
            tally.report(*future.result())
    print(f"{tally.passed} passed, {tally.failed} failed", flush=True)
    return 1 if tally.failed else 0


if __name__ == "__main__":
    sys.exit(main())
