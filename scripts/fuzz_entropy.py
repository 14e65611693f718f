"""Fuzz the --entropy code stream: mutated tiers tensors in compressed models, run by ONNX Runtime.

The stream is decoded by standard ops that ONNX Runtime folds at session creation (onnxvq/passes/
entropy_decoder.py), so what must hold is that no crafted stream crashes the runtime or reads out
of bounds: every case either runs or fails with an error. Cases run in child processes (a crash is a
signal death there, reported with its seed and case), in batches, for --seconds.

    .venv/bin/python scripts/fuzz_entropy.py --seconds 20      # part of `make fuzz-ci`
"""
from __future__ import annotations

import argparse
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import onnx

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

CHILD = r"""
import sys, onnx, numpy as np, onnxvq
from onnx import numpy_helper
path, seed, cases = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
rng = np.random.default_rng(seed)
model = onnx.load(path)
names = [t.name for t in model.graph.initializer if t.name.startswith("vqe")]
feed = {i.name: rng.normal(size=[d.dim_value or 2 for d in i.type.tensor_type.shape.dim]).astype(np.float32)
        for i in model.graph.input}
for case in range(cases):
    m = onnx.ModelProto(); m.CopyFrom(model)
    for _ in range(1 + rng.integers(3)):  # one to three tensors mutated per case
        target = {t.name: t for t in m.graph.initializer}[names[rng.integers(len(names))]]
        data = numpy_helper.to_array(target).copy()
        flat = data.reshape(-1)
        kind = rng.integers(5)
        if kind == 0 and flat.size:        # flip bits
            for i in rng.integers(flat.size, size=1 + rng.integers(4)):
                flat[i] ^= np.array(1 << rng.integers(8)).astype(flat.dtype)
        elif kind == 1 and flat.size:      # truncate
            flat = flat[: rng.integers(flat.size)]
        elif kind == 2:                    # extend
            flat = np.concatenate([flat, rng.integers(0, 256, 1 + rng.integers(8)).astype(flat.dtype)])
        elif kind == 3 and flat.size:      # random bytes
            flat = rng.integers(0, 256, flat.size).astype(flat.dtype)
        elif flat.size:                    # extreme values
            flat[rng.integers(flat.size)] = np.iinfo(flat.dtype).max if flat.dtype.kind in "iu" else 1e30
        shape = data.shape if flat.size == data.size else flat.shape
        target.CopyFrom(numpy_helper.from_array(flat.reshape(shape), target.name))
    try:
        onnxvq.session(m.SerializeToString()).run(None, feed)
        print("ran", flush=True)
    except Exception as exc:
        print("error", type(exc).__name__, flush=True)
"""


def _models(tmp: Path) -> list[Path]:
    """A small MLP compressed with pruning + entropy for each runtime the stream can feed."""
    from onnxvq.compress import compress_model
    from onnxvq.config import build_plan
    from tests import builders

    paths = []
    for runtime in ("op", "decode"):
        for method in ({"method": "kmeans", "bits": 4}, {"method": "pq", "bits": 3, "dim": 2}):
            plan = build_plan(None, {**method, "prune": 0.7, "entropy": True, "matmul_runtime": runtime})
            result = compress_model(builders.mlp_model(k=256, hidden=384), plan)
            path = tmp / f"{runtime}_{method['method']}.onnx"
            onnx.save(result.model, path)
            if not any(t.name.startswith("vqe") for t in result.model.graph.initializer):
                raise SystemExit(f"fuzz_entropy: {path.name} has no entropy-coded layer to fuzz")
            paths.append(path)
    return paths


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=20.0)
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--batch", type=int, default=40, help="cases per child process")
    args = parser.parse_args()
    deadline, counts, batch = time.monotonic() + args.seconds, {"ran": 0, "error": 0}, 0
    with tempfile.TemporaryDirectory() as tmp:
        models = _models(Path(tmp))
        while time.monotonic() < deadline or batch < len(models):
            path, seed = models[batch % len(models)], args.seed * 100_003 + batch
            child = subprocess.run([sys.executable, "-c", CHILD, str(path), str(seed), str(args.batch)],
                                   capture_output=True, text=True, cwd=REPO)
            if child.returncode != 0:
                done = child.stdout.count("\n")
                raise SystemExit(f"fuzz_entropy: FINDING: {path.name}, seed {seed}, case {done} ended the runtime "
                                 f"(exit {child.returncode}):\n{child.stderr[-2000:]}")
            for line in child.stdout.splitlines():
                counts[line.split()[0]] += 1
            batch += 1
    print(f"fuzz_entropy: {sum(counts.values())} crafted streams in {batch} children: {counts['ran']} ran, "
          f"{counts['error']} failed with an error, none crashed")


if __name__ == "__main__":
    main()
