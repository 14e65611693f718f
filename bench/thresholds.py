"""Measure the kernel chooser's thresholds: from how many rows M the tile GEMM beats each
format's small-batch path (kTileGemmThresholds in custom_ops/kernels/vq_kernel.cc).

    python bench/thresholds.py [--shapes 4096x4096,384x1536] [--rows 1,2,4,8,16,32,64]

Two copies of the op library are loaded into one process, one with ONNXVQ_TILE_GEMM_MIN_ROWS=1
(always the tile GEMM) and one with a huge value (never), so both paths are timed side by side
in interleaved rounds (1 thread, hot) on every layer of the issue's matrix. For each format
the suggested threshold is the smallest M from which the tile path is faster at every larger
M and on every layer; "never" when it does not win at the largest M.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import sys
import tempfile
from pathlib import Path

import numpy as np
import onnxruntime as ort

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import onnxvq  # noqa: E402
from bench.kernels import VQ_VARIANTS, Runner, time_side_by_side, vq_model, weight_bytes  # noqa: E402

SHAPES = [(4096, 4096), (384, 1536), (1536, 384), (1280, 1000)]
ROWS = [1, 2, 4, 8, 16, 32, 64]
NEVER = str(1 << 62)


def runner(model, library: str, x: np.ndarray, n: int) -> Runner:
    options = ort.SessionOptions()
    options.intra_op_num_threads = 1
    options.inter_op_num_threads = 1
    options.register_custom_ops_library(library)
    session = ort.InferenceSession(model.SerializeToString(), options, providers=["CPUExecutionProvider"])
    binding = session.io_binding()
    binding.bind_ortvalue_input("X", ort.OrtValue.ortvalue_from_numpy(x))
    binding.bind_ortvalue_output("Y0", ort.OrtValue.ortvalue_from_numpy(np.empty((x.shape[0], n), np.float32)))
    session.run_with_iobinding(binding)  # the library reads its environment on the first run
    return Runner(session, binding, 1, weight_bytes(model, 1))


def suggest(cells: dict[int, list[float]]) -> int | None:
    """cells: M -> [tile / small time ratio per layer]; smallest M winning from there on."""
    best = None
    for m in sorted(cells, reverse=True):
        if max(cells[m]) >= 1.0:
            break
        best = m
    return best


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--shapes", help="e.g. 4096x4096,384x1536")
    parser.add_argument("--rows", help="e.g. 1,2,4,8")
    parser.add_argument("--variants", help="subset of the vq-* formats of bench/kernels.py")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--budget", type=float, default=0.3, help="seconds per variant and cell")
    parser.add_argument("--json", type=Path, default=ROOT / "bench" / "results" / "thresholds.json")
    args = parser.parse_args(argv)
    shapes = [tuple(int(v) for v in s.split("x")) for s in args.shapes.split(",")] if args.shapes else SHAPES
    rows = [int(v) for v in args.rows.split(",")] if args.rows else ROWS
    names = args.variants.split(",") if args.variants else list(VQ_VARIANTS)

    import ctypes
    handle = ctypes.CDLL(onnxvq.library_path())
    handle.onnxvq_kernel_name.restype = ctypes.c_char_p
    print(f"# tile GEMM thresholds — kernel table {handle.onnxvq_kernel_name().decode()}, "
          f"onnxruntime {ort.__version__}, {platform.processor() or platform.machine()}, 1 thread, hot")
    print("# cells: tile GEMM ms / small path ms (< 1: the tile path wins)\n")
    rng = np.random.default_rng(0)
    results, suggested = [], {}
    with tempfile.TemporaryDirectory() as tmp:
        libs = {}
        for mode in ("tile", "small"):  # one copy per mode: each has its own static state
            libs[mode] = str(Path(tmp) / f"libonnxvq_{mode}.so")
            shutil.copy(onnxvq.library_path(), libs[mode])
        print("| format | K x N | " + " | ".join(f"M={m}" for m in rows) + " |")
        print("|---|---|" + "---:|" * len(rows))
        for name in names:
            ratios: dict[int, list[float]] = {m: [] for m in rows}
            for k, n in shapes:
                model = vq_model(k, n, 1, rng, VQ_VARIANTS[name])
                line = []
                for m in rows:
                    x = rng.standard_normal((m, k)).astype(np.float32)
                    runners = {}
                    for mode, value in (("tile", "1"), ("small", NEVER)):
                        os.environ["ONNXVQ_TILE_GEMM_MIN_ROWS"] = value
                        runners[mode] = runner(model, libs[mode], x, n)
                    times = time_side_by_side(runners, args.budget, args.rounds)
                    ratio = times["tile"] / times["small"]
                    ratios[m].append(ratio)
                    results.append({"format": name, "K": k, "N": n, "M": m, "seconds": times})
                    line.append(f"{ratio:.2f}")
                    del runners
                print(f"| {name} | {k}x{n} | " + " | ".join(line) + " |", flush=True)
            suggested[name] = suggest(ratios)
    os.environ.pop("ONNXVQ_TILE_GEMM_MIN_ROWS", None)
    print("\nsuggested thresholds (smallest M from which the tile GEMM wins on every layer): " +
          ", ".join(f"{nm} {'never' if v is None else v}" for nm, v in suggested.items()))
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps({"kernel_table": handle.onnxvq_kernel_name().decode(),
                                     "onnxruntime": ort.__version__, "results": results,
                                     "suggested": suggested}, indent=1))
    print(f"wrote {args.json}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
