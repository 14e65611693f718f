"""Fit variance: the same settings fitted with several seeds, evaluated on the same data.

    .venv/bin/python bench/seeds.py models/cache/mobilenet_v2.onnx models/cache/imagenet_samples.npz 5

With 26 images one disagreement is 3.8 points of agreement, so single fits can mislead.
Writes bench/results/seeds_<model>.json.
"""
import json
import sys
from pathlib import Path

import onnx

from onnxvq.evaluate import load_dataset
from onnxvq.sweep import Grid, expand, run_sweep

SETTINGS = [
    {"method": "kmeans", "bits": 2, "group_size": [0, 16]},
    {"method": "pq", "bits": 3, "dim": 2, "axis": "out", "codebook_dtype": "float16"},
    {"method": "pq", "bits": 4, "dim": 3, "axis": "out", "codebook_dtype": "float16"},
    {"method": "pq", "bits": 5, "dim": 4, "axis": "out", "codebook_dtype": "float16"},
    {"method": "rq", "bits": 3, "dim": 4, "stages": 2, "axis": "out", "codebook_dtype": "float16"},
]


def main(model_path, data_path, seeds=5):
    model = onnx.load(model_path)
    dataset = load_dataset(model, data_path)
    out = {}
    for seed in range(int(seeds)):
        result = run_sweep(model, dataset, Grid(expand(SETTINGS), per_layer=False, seed=seed), jobs=2,
                           op_check=False)
        for r in result.rows:
            out.setdefault(r["label"], []).append({k: r[k] for k in ("dense_ratio", "top1", "correct",
                                                                     "top1_agreement", "weight_rel_err")})
        print(f"seed {seed} done", flush=True)
    for name, runs in out.items():
        ag = [r["top1_agreement"] for r in runs]
        acc = [r["correct"] for r in runs if r["correct"] is not None]
        print(f"{name:<20} {runs[0]['dense_ratio']:.2f}x agreement {min(ag):.4f}..{max(ag):.4f} "
              f"(mean {sum(ag) / len(ag):.4f}) correct {acc}")
    path = Path(__file__).parent / "results" / f"seeds_{Path(model_path).stem}.json"
    path.parent.mkdir(exist_ok=True)
    path.write_text(json.dumps(out, indent=1))


if __name__ == "__main__":
    main(*sys.argv[1:])
