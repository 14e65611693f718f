"""Two builds of the op library side by side in one process: the same models, interleaved rounds
(1 thread, hot), ms per MatMul and the ratio new / old (< 1: the new build is faster).

    python bench/ab.py OLD.so NEW.so [--shapes 1536x384] [--rows 1,8] [--variants vq-pq8-d4]

For a change to a kernel: copy the installed library (onnxvq.library_path()) aside, rebuild, and
compare; ratios from one run, not from two runs minutes apart on a shared host.
"""
from __future__ import annotations

import argparse
import shutil
import sys
import tempfile
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from bench.kernels import VQ_VARIANTS, fp32_model, time_side_by_side, vq_model  # noqa: E402
from bench.thresholds import runner  # noqa: E402


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("old", type=Path)
    parser.add_argument("new", type=Path)
    parser.add_argument("--shapes", default="4096x4096,384x1536,1536x384,1280x1000")
    parser.add_argument("--rows", default="1,8")
    parser.add_argument("--variants", default="vq-pq8-d4,vq-pq4-d4,vq-rq2x4")
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--budget", type=float, default=0.3, help="seconds per library and cell")
    args = parser.parse_args(argv)
    for path in (args.old, args.new):
        if not path.is_file():
            parser.error(f"{path}: no such library")
    names = args.variants.split(",")
    unknown = [nm for nm in names if nm not in VQ_VARIANTS]
    if unknown:
        parser.error(f"unknown variants {unknown}; known: {', '.join(VQ_VARIANTS)}")
    with tempfile.TemporaryDirectory() as tmp:
        libs = {}
        for label, path in (("old", args.old), ("new", args.new)):  # own copies: own static state
            libs[label] = str(Path(tmp) / f"{label}.so")
            shutil.copy(path, libs[label])
        print("| variant | K x N | rows | fp32 ms | old ms | new ms | new / old |")
        print("|---|---|---:|---:|---:|---:|---:|")
        for shape in args.shapes.split(","):
            k, n = map(int, shape.split("x"))
            rng = np.random.default_rng(0)
            fp32 = fp32_model(k, n, 1, rng)
            models = {nm: vq_model(k, n, 1, rng, VQ_VARIANTS[nm]) for nm in names}
            for rows in map(int, args.rows.split(",")):
                x = rng.standard_normal((rows, k)).astype(np.float32)
                runners = {("fp32", "old"): runner(fp32, libs["old"], x, n)}
                runners.update({(nm, label): runner(models[nm], libs[label], x, n) for nm in names for label in libs})
                t = time_side_by_side(runners, args.budget, args.rounds)
                for nm in names:
                    old, new = t[(nm, "old")], t[(nm, "new")]
                    print(f"| {nm} | {shape} | {rows} | {t[('fp32', 'old')] * 1e3:.3f} | {old * 1e3:.3f} | "
                          f"{new * 1e3:.3f} | {new / old:.2f} |", flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
