"""Whole real models, original vs every compression and vs ONNX Runtime's own quantizers, side
by side in one run (what `make bench` reports after the kernel matrix).

    python bench/end_to_end.py [--models minilm,mobilenet] [--threads 1] [--rounds 5] [--force]

Needs models/cache/ (`make models`). Variants are built once into bench/results/e2e/ (ignored by
git; --force rebuilds):
  ort-int8      onnxruntime.quantization.quantize_dynamic (int8 weights, dynamic activations)
  ort-nbits4    MatMulNBits 4-bit, block 32, accuracy_level 4 (MatMul weights only)
  vq-default    `onnxvq compress` with its defaults (Gemm/MatMul on the op for 2-D activations,
                on a decoder ORT folds at load for sequences; convolutions folded)
  vq-km4-op, vq-km5-op, vq-pq4-op, vq-rq-op   every Gemm/MatMul on the VQMatMul op
                (`--matmul-runtime op`): the codes stay packed in RAM
Then bench/model_latency.py times each model's group (1 thread by default, rounds alternating
the order) at its batches: the transformer encoder (MiniLM, eval sentences) at 1 and 32,
MobileNetV2 (ImageNet views) at 1 and 8. Tables: bench/results/e2e/latency_<model>.json.
"""
from __future__ import annotations

import argparse
import logging
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
CACHE = ROOT / "models" / "cache"
OUT = ROOT / "bench" / "results" / "e2e"
sys.path.insert(0, str(ROOT))

MODELS = {  # name: (original, inputs, batches)
    "minilm": (CACHE / "minilm.onnx", CACHE / "minilm_eval.npz", "1,32"),
    "mobilenet": (CACHE / "mobilenet_v2.onnx", CACHE / "imagenet_eval.npz", "1,8"),
}
VQ_VARIANTS = {  # name: onnxvq compress options
    "vq-default": [],
    "vq-km4-op": ["--method", "kmeans", "--bits", "4", "--matmul-runtime", "op"],
    "vq-km5-op": ["--method", "kmeans", "--bits", "5", "--matmul-runtime", "op"],
    "vq-pq4-op": ["--method", "pq", "--bits", "4", "--dim", "4", "--matmul-runtime", "op"],
    "vq-rq-op": ["--method", "rq", "--bits", "4", "--dim", "4", "--stages", "2", "--matmul-runtime", "op"],
}


def ort_int8(src: Path, dst: Path) -> None:
    from onnxruntime.quantization import QuantType, quantize_dynamic
    quantize_dynamic(str(src), str(dst), weight_type=QuantType.QInt8)


def ort_nbits4(src: Path, dst: Path) -> None:
    import onnx
    from onnxruntime.quantization.matmul_nbits_quantizer import MatMulNBitsQuantizer
    quantizer = MatMulNBitsQuantizer(onnx.load(str(src)), bits=4, block_size=32, is_symmetric=True,
                                     accuracy_level=4)
    quantizer.process()
    onnx.save(quantizer.model.model, str(dst))


def build(name: str, force: bool) -> dict[str, Path]:
    original, _, _ = MODELS[name]
    if not original.is_file():
        raise SystemExit(f"{original} is missing: run `make models` first")
    out = OUT / name
    out.mkdir(parents=True, exist_ok=True)
    variants = {"original": original}
    for label, make in (("ort-int8", ort_int8), ("ort-nbits4", ort_nbits4)):
        dst = out / f"{label}.onnx"
        if force or not dst.is_file():
            print(f"building {name} {label}", flush=True)
            make(original, dst)
        variants[label] = dst
    for label, options in VQ_VARIANTS.items():
        dst = out / f"{label}.onnx"
        if force or not dst.is_file():
            print(f"building {name} {label}: onnxvq compress {' '.join(options)}", flush=True)
            subprocess.run([sys.executable, "-m", "onnxvq.cli", "compress", str(original), "-o", str(dst),
                            "--json", str(out / f"{label}.report.json"), *options],
                           check=True, stdout=subprocess.DEVNULL)
        variants[label] = dst
    return variants


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--models", default=",".join(MODELS))
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--round-ms", type=float, default=200.0)
    parser.add_argument("--force", action="store_true", help="rebuild the variants")
    args = parser.parse_args(argv)
    logging.disable(logging.WARNING)  # the quantizers' pre-processing advice
    from bench import model_latency
    for name in args.models.split(","):
        variants = build(name, args.force)
        _, data, batches = MODELS[name]
        argv = [f"--model={label}={path}" for label, path in variants.items()]
        argv += ["--pair", "original=" + ",".join(v for v in variants if v != "original"),
                 "--data", str(data), "--batches", batches, "--threads", str(args.threads),
                 "--rounds", str(args.rounds), "--round-ms", str(args.round_ms), "--no-child",
                 "--json", str(OUT / f"latency_{name}.json")]
        print(f"\n## {name}\n", flush=True)
        model_latency.main(argv)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
