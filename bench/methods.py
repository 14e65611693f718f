"""Every method of Gong et al. 2014 on one matrix: the table their Figure 3 is made from.

For a real dense layer (default: the MNIST CNN's 3136x128 hidden layer, with its real input
activations on 1,000 digits) and for a Gaussian matrix (with Gaussian inputs), print per setting:
method, settings, bits per weight including codebooks, compression rate, relative weight error
||W_hat - W||_F / ||W||_F and relative output error ||X W_hat - X W||_F / ||X W||_F.

    .venv/bin/python bench/methods.py                      # both matrices, full grid
    .venv/bin/python bench/methods.py --quick              # fewer settings
    .venv/bin/python bench/methods.py --model models/cache/mobilenet_v2.onnx --data models/cache/imagenet_samples.npz

Writes bench/results/methods.md and bench/results/methods.json. A script, not a test.
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from onnxvq.config import make_method_config  # noqa: E402
from onnxvq.quantizers import quantize  # noqa: E402
from onnxvq.sweep import expand, label  # noqa: E402

GRID = [
    {"method": "binary", "scaled": [False, True]},
    {"method": "kmeans", "bits": [1, 2, 3, 4, 5]},
    {"method": "pq", "bits": 3, "dim": [1, 2, 3, 4], "axis": ["in", "out"]},
    {"method": "pq", "bits": 4, "dim": [4, 8], "axis": ["in", "out"]},
    {"method": "pq", "bits": 8, "dim": [4, 8, 16], "axis": ["in", "out"]},
    {"method": "rq", "bits": 3, "dim": 4, "stages": [2, 3], "axis": ["in", "out"]},
    {"method": "rq", "bits": 4, "dim": 8, "stages": 2, "axis": "out"},
    {"method": "svd", "ratio": [2, 4, 8, 16, 32]},
]
QUICK = [
    {"method": "binary"},
    {"method": "kmeans", "bits": [1, 2, 4]},
    {"method": "pq", "bits": 3, "dim": [2, 4], "axis": ["in", "out"]},
    {"method": "pq", "bits": 8, "dim": 4, "axis": ["in", "out"]},
    {"method": "rq", "bits": 3, "dim": 4, "stages": 2, "axis": "out"},
    {"method": "svd", "ratio": [4, 16]},
]


def real_layer(model_path: Path, data_path: Path, layer: str | None, samples: int):
    """(name, W[K, N], X[samples, K]) for the largest (or the named) dense layer, with its real inputs."""
    import onnx

    from onnxvq.evaluate import load_dataset, predict
    from onnxvq.passes.sites import find_sites

    model = onnx.load(model_path)
    sites = find_sites(model).sites
    if layer:
        sites = [s for s in sites if s.display_name == layer]
        if not sites:
            raise SystemExit(f"no dense layer named {layer!r} in {model_path}")
    site = max(sites, key=lambda s: s.elements)
    dataset = load_dataset(model, data_path, samples=samples)
    extra = onnx.helper.make_empty_tensor_value_info(site.activation)
    model.graph.output.insert(0, extra)  # predict() returns the first output
    x = predict(model, dataset.feeds, batch_size=256)
    return site.display_name, site.weight_array, x.reshape(-1, x.shape[-1]).astype(np.float32)


def bench(name: str, w: np.ndarray, x: np.ndarray, grid, seed: int = 0) -> list[dict]:
    y = x.astype(np.float64) @ w.astype(np.float64)
    w_norm, y_norm = np.linalg.norm(w.astype(np.float64)), np.linalg.norm(y)
    rows = []
    for config in expand(grid):
        start = time.perf_counter()
        enc = quantize(w, config, seed)
        seconds = time.perf_counter() - start
        w_hat = enc.decode().astype(np.float64)
        stored = enc.code_bytes + enc.codebook_bytes
        bpw = 8 * stored / w.size
        row = {"matrix": name, "shape": list(w.shape), "method": config.method, "setting": label(config),
               "options": config.options(), "bits_per_weight": bpw, "code_bytes": enc.code_bytes,
               "codebook_bytes": enc.codebook_bytes, "compression_rate": 32 / bpw,
               "weight_rel_err": float(np.linalg.norm(w_hat - w) / w_norm),
               "output_rel_err": float(np.linalg.norm(x @ w_hat - y) / y_norm), "fit_seconds": seconds}
        rows.append(row)
        print(f"  {row['setting']:<20} {bpw:7.3f} b/w {row['compression_rate']:7.1f}x  "
              f"w err {row['weight_rel_err']:.4f}  out err {row['output_rel_err']:.4f}  ({seconds:.2f} s)",
              flush=True)
    return rows


def markdown(rows: list[dict], title: str) -> str:
    lines = [f"### {title}", "", "| method | settings | bits/weight (incl. codebooks) | compression rate | "
             "rel. weight error | rel. output error |", "|---|---|---:|---:|---:|---:|"]
    for r in sorted(rows, key=lambda r: (r["method"], -r["compression_rate"])):
        lines.append(f"| {r['method']} | {r['setting']} | {r['bits_per_weight']:.3f} | {r['compression_rate']:.1f}x | "
                     f"{r['weight_rel_err']:.4f} | {r['output_rel_err']:.4f} |")
    return "\n".join(lines)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--model", type=Path, default=ROOT / "models/cache/mnist_cnn.onnx")
    ap.add_argument("--data", type=Path, default=ROOT / "models/cache/mnist_test.npz")
    ap.add_argument("--layer", default=None, help="dense layer (node) name; default: the largest")
    ap.add_argument("--samples", type=int, default=1000, help="input samples for the output error")
    ap.add_argument("--gaussian", default="1024x256", help="KxN of the Gaussian matrix ('' to skip)")
    ap.add_argument("--quick", action="store_true", help="fewer settings")
    ap.add_argument("--out", type=Path, default=ROOT / "bench/results")
    args = ap.parse_args(argv)
    grid = QUICK if args.quick else GRID
    for entry in grid:  # validate before any fitting
        make_method_config({k: (v[0] if isinstance(v, list) else v) for k, v in entry.items()})
    results, sections = {}, []
    if args.model.is_file() and args.data.is_file():
        name, w, x = real_layer(args.model, args.data, args.layer, args.samples)
        title = f"{args.model.name} `{name}` W[{w.shape[0]}x{w.shape[1]}], real inputs ({x.shape[0]} rows)"
        print(title)
        results["real"] = {"model": str(args.model), "layer": name, "rows": bench(name, w, x, grid)}
        sections.append(markdown(results["real"]["rows"], title))
    else:
        print(f"skipping the real layer: {args.model} or {args.data} is missing (build them with models/)")
    if args.gaussian:
        k, n = (int(v) for v in args.gaussian.lower().split("x"))
        rng = np.random.default_rng(0)
        w = (rng.standard_normal((k, n)) / np.sqrt(k)).astype(np.float32)
        x = rng.standard_normal((args.samples, k)).astype(np.float32)
        title = f"Gaussian W[{k}x{n}], Gaussian inputs ({args.samples} rows)"
        print(title)
        results["gaussian"] = {"shape": [k, n], "rows": bench("gaussian", w, x, grid)}
        sections.append(markdown(results["gaussian"]["rows"], title))
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "methods.json").write_text(json.dumps(results, indent=1))
    (args.out / "methods.md").write_text("\n\n".join(sections) + "\n")
    print(f"wrote {args.out / 'methods.md'} and {args.out / 'methods.json'}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
