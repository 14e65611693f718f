"""Thread scaling: every variant at 1 and at N threads, side by side in one run.

    python bench/threads.py [--shape 4096x4096] [--batches 8,64,512] [--threads 2]

bench/kernels.py times each thread count in its own cells, minutes apart on a shared host, so
their ratio mixes in whatever the machine did in between. Here the 1-thread and N-thread
sessions of every variant are timed in the same interleaved rounds (bench/kernels.py's
time_side_by_side, hot cache), and each ratio is t(1 thread) / t(N threads): the issue's
target is >= 1.7x at 2 threads from 8 rows on 4096x4096. fp32 (ORT's MatMul) is the
reference for what this host's cores give. Tables: bench/results/threads.json.
"""
from __future__ import annotations

import argparse
import ctypes
import json
import sys
from pathlib import Path

import numpy as np
import onnxruntime as ort

import onnxvq
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from bench.kernels import VQ_VARIANTS, fp32_model, make_runner, time_side_by_side, vq_model  # noqa: E402
from bench.model_latency import cpu_info  # noqa: E402

DEFAULT_VARIANTS = "fp32,vq-pq4-d4,vq-pq8-d4,vq-km4,vq-km5,vq-km3-g16,vq-bin,vq-rq2x4"


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--shape", default="4096x4096", help="K x N")
    parser.add_argument("--batches", default="8,64,512")
    parser.add_argument("--threads", type=int, default=2, help="the thread count compared with 1")
    parser.add_argument("--variants", default=DEFAULT_VARIANTS)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--budget", type=float, default=0.5, help="seconds per session and cell")
    parser.add_argument("--json", type=Path, default=Path(__file__).parent / "results" / "threads.json")
    args = parser.parse_args(argv)
    k, n = map(int, args.shape.split("x"))
    names = args.variants.split(",")
    unknown = [nm for nm in names if nm != "fp32" and nm not in VQ_VARIANTS]
    if unknown:
        parser.error(f"unknown variants {unknown}; known: fp32, {', '.join(VQ_VARIANTS)}")
    rng = np.random.default_rng(0)
    models = {nm: fp32_model(k, n, 1, rng) if nm == "fp32" else vq_model(k, n, 1, rng, VQ_VARIANTS[nm])
              for nm in names}
    handle = ctypes.CDLL(onnxvq.library_path())
    handle.onnxvq_kernel_name.restype = ctypes.c_char_p
    kernel, cpu = handle.onnxvq_kernel_name().decode(), cpu_info()["model"]
    print(f"# thread scaling on {k}x{n}, 1 vs {args.threads} threads, hot — kernel table {kernel}, {cpu}, "
          f"onnxruntime {ort.__version__}; cells: ms at 1 / at {args.threads} threads (speed-up)\n")
    print("| batch | " + " | ".join(names) + " |")
    print("|---:|" + "---|" * len(names))
    results = []
    for batch in map(int, args.batches.split(",")):
        x = rng.standard_normal((batch, k)).astype(np.float32)
        runners = {(nm, t): make_runner(models[nm], 1, t, x, n) for nm in names for t in (1, args.threads)}
        times = time_side_by_side(runners, args.budget, args.rounds)
        row = {nm: {"seconds_1": times[(nm, 1)], f"seconds_{args.threads}": times[(nm, args.threads)],
                    "speedup": times[(nm, 1)] / times[(nm, args.threads)]} for nm in names}
        results.append({"batch": batch, "variants": row})
        print(f"| {batch} | " + " | ".join(
            f"{row[nm]['seconds_1'] * 1e3:.3g} / {row[nm][f'seconds_{args.threads}'] * 1e3:.3g} "
            f"({row[nm]['speedup']:.2f}x)" for nm in names) + " |", flush=True)
        del runners
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps({"K": k, "N": n, "threads": args.threads, "kernel_table": kernel, "cpu": cpu,
                                     "onnxruntime": ort.__version__,
                                     "rounds": args.rounds, "results": results}, indent=1))
    print(f"\nwrote {args.json}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
