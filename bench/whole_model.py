"""Whole-file compression of the real models in models/cache/: file ratio and quality, side by side.

For every model and setting of bench/whole_model.yaml: compress with onnxvq (in process, the
same code as `onnxvq compress`), write the file, and score it against the original on the model's
held-out evaluation set (never its calibration set): top-1 agreement for classifiers (per CTC
frame for the OCR model), embedding cosine and nearest-neighbour agreement for the sentence
encoder. Prints a markdown table; writes bench/results/whole_model.json.

    .venv/bin/python bench/whole_model.py                       # every model, every setting
    .venv/bin/python bench/whole_model.py --models mobilenet_v2 --settings default
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from onnxvq.compress import compress_model  # noqa: E402
from onnxvq.config import build_plan, load_config_file  # noqa: E402
from onnxvq.evaluate import Evaluator, load_dataset  # noqa: E402
from onnxvq.modelio import file_bytes, load_model, save_model  # noqa: E402


def quality(result: dict) -> dict:
    keys = ("top1_agreement", "top5_agreement", "cosine_mean", "cosine_min", "nn_agreement", "output_rel_err")
    return {k: result[k] for k in keys if result.get(k) is not None}


def run_model(name: str, spec: dict, settings: dict, only: list[str] | None, threads: int) -> list[dict]:
    model_path = REPO / spec["model"]
    data_path = REPO / spec["eval"]
    if not model_path.exists() or not data_path.exists():
        print(f"{name}: {model_path.name} or {data_path.name} missing; run `make models`", file=sys.stderr)
        return []
    original = load_model(model_path)
    dataset = load_dataset(original, data_path)
    evaluator = Evaluator.for_model(original, dataset, threads=threads, task=spec.get("task", "auto"))
    before = file_bytes(model_path)
    rows = []
    for label, options in settings.items():
        if only and label not in only:
            continue
        t0 = time.perf_counter()
        plan = build_plan(options or None)
        result = compress_model(original, plan)
        with tempfile.TemporaryDirectory() as tmp:
            out = Path(tmp) / f"{name}.vq.onnx"
            after = save_model(result.model, out)
            compress_s = time.perf_counter() - t0
            scores = evaluator.evaluate(str(out))
        row = {"model": name, "setting": label, "options": options, "original_bytes": before,
               "compressed_bytes": after, "file_ratio": before / after, "samples": dataset.samples,
               "compress_seconds": round(compress_s, 1), **quality(scores)}
        rows.append(row)
        print(json.dumps(row), file=sys.stderr, flush=True)
    return rows


def markdown(rows: list[dict]) -> str:
    lines = ["| model | setting | file before → after | file ratio | inputs | quality vs original |",
             "|---|---|---:|---:|---:|---|"]
    for r in rows:
        if "cosine_mean" in r:
            q = (f"cosine mean {r['cosine_mean']:.4f} (min {r['cosine_min']:.4f}), "
                 f"NN agreement {100 * r['nn_agreement']:.1f}%")
        else:
            q = f"top-1 agreement {100 * r['top1_agreement']:.2f}%"
        q += f", out rel err {r['output_rel_err']:.3f}"
        lines.append(f"| {r['model']} | {r['setting']} | {r['original_bytes'] / 1e6:.2f} → "
                     f"{r['compressed_bytes'] / 1e6:.2f} MB | {r['file_ratio']:.2f}x | {r['samples']} | {q} |")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", default=str(REPO / "bench" / "whole_model.yaml"), help="models and settings")
    parser.add_argument("--models", default=None, help="comma-separated subset of the config's models")
    parser.add_argument("--settings", default=None, help="comma-separated subset of the settings")
    parser.add_argument("--threads", type=int, default=0, help="onnxruntime threads for scoring (0 = default)")
    parser.add_argument("--out", default=str(REPO / "bench" / "results" / "whole_model.json"))
    args = parser.parse_args()
    config = load_config_file(args.config)
    wanted = args.models.split(",") if args.models else list(config["models"])
    only = args.settings.split(",") if args.settings else None
    rows = []
    for name in wanted:
        spec = config["models"][name]
        rows += run_model(name, spec, spec.get("settings") or {}, only, args.threads)
    os.makedirs(Path(args.out).parent, exist_ok=True)
    Path(args.out).write_text(json.dumps(rows, indent=2))
    print(markdown(rows))


if __name__ == "__main__":
    main()
