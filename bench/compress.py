"""Time and peak memory of the whole `onnxvq compress` command on one large dense layer.

A script, not a test. For each shape it writes a model holding one Gemm (Gaussian weight, or a real
layer with --real), then runs the CLI in a child process (load, fit, encode, save, default check) and
reads the child's peak RSS. Prints a markdown table; writes bench/results/compress.json.

    .venv/bin/python bench/compress.py                 # 4096x4096 and 25088x4096, PQ d=4 256 codewords
    .venv/bin/python bench/compress.py --quick         # 1024x1024 only
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

ROOT = Path(__file__).resolve().parents[1]
SETTINGS = {
    "pq-d4-k256": ["--method", "pq", "--bits", "8", "--dim", "4"],
    "pq-d4-k16": ["--method", "pq", "--bits", "4", "--dim", "4"],
    "kmeans-k16": ["--method", "kmeans", "--bits", "4"],
}


def write_model(path: Path, k: int, n: int, seed: int = 0) -> int:
    w = (np.random.default_rng(seed).standard_normal((n, k)) * 0.02).astype(np.float32)
    node = helper.make_node("Gemm", ["X", "W", "b"], ["Y"], name="fc", transB=1)
    graph = helper.make_graph([node], "one_layer", [helper.make_tensor_value_info("X", TensorProto.FLOAT, ["batch", k])],
                              [helper.make_tensor_value_info("Y", TensorProto.FLOAT, ["batch", n])],
                              [numpy_helper.from_array(w, "W"), numpy_helper.from_array(np.zeros(n, np.float32), "b")])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    onnx.save(model, path)
    return w.nbytes


def run_compress(model: Path, out: Path, args: list[str], jobs: int) -> dict:
    report = out.with_suffix(".json")
    cmd = [sys.executable, "-m", "onnxvq.cli", "compress", str(model), "-o", str(out), "--quiet",
           "--json", str(report), "--jobs", str(jobs), *args]
    start = time.perf_counter()
    with tempfile.TemporaryFile() as err:
        proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=err, cwd=ROOT)
        _, status, usage = os.wait4(proc.pid, 0)  # this child's own peak RSS, in KB on Linux
        proc.returncode = os.waitstatus_to_exitcode(status)
        seconds = time.perf_counter() - start
        if proc.returncode != 0:
            err.seek(0)
            raise SystemExit(f"compress failed: {err.read().decode().strip()}")
    peak_kb = usage.ru_maxrss
    data = json.loads(report.read_text())
    layer = next(row for row in data["layers"] if not row.get("skipped_reason"))
    return {"seconds": seconds, "peak_rss_mb": peak_kb / 1024,
            "weight_rel_err": layer["weight_rel_err"], "ratio": layer["weight_ratio"],
            "cosine": data["parity"]["cosine"]}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="1024x1024 only")
    parser.add_argument("--jobs", type=int, default=1)
    parser.add_argument("--settings", nargs="*", default=["pq-d4-k256"], choices=sorted(SETTINGS))
    args = parser.parse_args()
    shapes = [(1024, 1024)] if args.quick else [(4096, 4096), (25088, 4096)]
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for k, n in shapes:
            model = Path(tmp) / f"fc_{k}x{n}.onnx"
            weight_bytes = write_model(model, k, n)
            for name in args.settings:
                result = run_compress(model, Path(tmp) / f"out_{k}x{n}_{name}.onnx", SETTINGS[name], args.jobs)
                rows.append({"shape": f"{k}x{n}", "setting": name, "weight_mb": weight_bytes / 1e6, **result})
                r = rows[-1]
                print(f"{r['shape']} {name}: {r['seconds']:.1f} s, peak RSS {r['peak_rss_mb']:.0f} MB", flush=True)
    print("\n| K x N | setting | weight MB | whole command s | peak RSS MB | RSS / weight | ratio | weight err | cosine |")
    print("|---|---|---|---|---|---|---|---|---|")
    for r in rows:
        print(f"| {r['shape']} | {r['setting']} | {r['weight_mb']:.0f} | {r['seconds']:.1f} | {r['peak_rss_mb']:.0f} | "
              f"{r['peak_rss_mb'] / r['weight_mb']:.1f}x | {r['ratio']:.1f}x | {r['weight_rel_err']:.4f} | {r['cosine']:.4f} |")
    out = ROOT / "bench" / "results"
    out.mkdir(parents=True, exist_ok=True)
    (out / "compress.json").write_text(json.dumps({"jobs": args.jobs, "cpus": os.cpu_count(), "rows": rows}, indent=2))


if __name__ == "__main__":
    main()
