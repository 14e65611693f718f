"""RAM of a compressed embedding table at run time: original vs --format portable vs --format custom.

    .venv/bin/python bench/embedding_memory.py                       # models/cache/minilm.onnx, kmeans 5 bits
    .venv/bin/python bench/embedding_memory.py --model m.onnx --method pq --bits 4 --dim 4

The model is compressed twice with the CLI (``--format portable`` and ``--format custom``, the same
method; ``--no-check --quiet``). Each of the three files is then opened in its own fresh child
process: the original and the portable file in plain ONNX Runtime (no onnxvq library), the custom
file through ``onnxvq.session``. A child reports

* session creation time (ORT folds the portable decoders here);
* RSS right after creation (VmRSS: what stays resident, e.g. the folded uint8 codes vs a float table);
* peak RSS (``resource.getrusage(RUSAGE_SELF).ru_maxrss``; VmHWM as a cross-check), which includes
  the transient tensors of constant folding;
* the first run of one batch of ``--batch`` x ``--seq`` token ids, and the median of ``--runs`` more.

RSS before creating the session (interpreter + numpy + onnxruntime + onnxvq imported) is printed
so growth can be read off. Outputs are compared with the original's (cosine). The table is
markdown; the CPU's name and SIMD flags come from /proc/cpuinfo. Nothing is built when the model
file is absent.
"""
from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "bench"))
from model_latency import cpu_info, generated_inputs, isa_summary  # noqa: E402  (same CPU/input rules)

DEFAULT_MODEL = ROOT / "models" / "cache" / "minilm.onnx"


def _status_kb(key: str) -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(key + ":"):
            return int(line.split()[1])
    return 0


def child(path: str, custom: bool, feeds_file: str, out_file: str, threads: int, runs: int, arena: bool) -> dict:
    """Fresh process: create one session, run it; everything measured here."""
    with np.load(feeds_file) as data:
        feeds = {k: data[k] for k in data.files}
    import onnxruntime as ort

    import onnxvq  # imported by every child, so the baselines are the same

    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    options.inter_op_num_threads = 1
    options.log_severity_level = 3
    options.enable_cpu_mem_arena = arena
    before_kb = _status_kb("VmRSS")
    start = time.perf_counter()
    session = onnxvq.session(path, options) if custom else ort.InferenceSession(
        path, options, providers=["CPUExecutionProvider"])
    created = time.perf_counter() - start
    resident_kb = _status_kb("VmRSS")
    start = time.perf_counter()
    outputs = session.run(None, feeds)
    first = time.perf_counter() - start
    warm = []
    for _ in range(runs):
        start = time.perf_counter()
        session.run(None, feeds)
        warm.append(time.perf_counter() - start)
    np.save(out_file, outputs[0])
    return {"session_s": created, "rss_before_mb": before_kb / 1024, "rss_after_create_mb": resident_kb / 1024,
            "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
            "vm_hwm_mb": _status_kb("VmHWM") / 1024, "first_run_ms": first * 1e3,
            "warm_run_ms": float(np.median(warm)) * 1e3 if warm else float("nan")}


def measure(path: Path, custom: bool, feeds_file: Path, out_file: Path, args, arena: bool = True) -> dict:
    command = [sys.executable, __file__, "--_child", str(path), "--_feeds", str(feeds_file), "--_out", str(out_file),
               "--threads", str(args.threads), "--runs", str(args.runs)] + (["--_custom"] if custom else []) \
        + ([] if arena else ["--_no_arena"])
    proc = subprocess.run(command, capture_output=True, text=True)
    if proc.returncode != 0:
        raise SystemExit(f"error: measuring {path} failed: {(proc.stderr.strip().splitlines() or ['?'])[-1]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def compress(model: Path, out: Path, fmt: str, args) -> float:
    cli = Path(sys.executable).parent / "onnxvq"
    command = [str(cli), "compress", str(model), "-o", str(out), "--format", fmt, "--method", args.method,
               "--bits", str(args.bits), "--no-check", "--quiet", *args.extra]
    start = time.perf_counter()
    proc = subprocess.run(command, capture_output=True, text=True)
    if proc.returncode != 0:
        raise SystemExit(f"error: {' '.join(command)} exited {proc.returncode}: {proc.stderr.strip()[-500:]}")
    return time.perf_counter() - start


def cosine(a: np.ndarray, b: np.ndarray) -> float:
    a, b = a.reshape(len(a), -1).astype(np.float64), b.reshape(len(b), -1).astype(np.float64)
    return float(np.min(np.sum(a * b, 1) / (np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1) + 1e-30)))


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--model", type=Path, default=DEFAULT_MODEL)
    p.add_argument("--method", default="kmeans")
    p.add_argument("--bits", type=int, default=5)
    p.add_argument("--batch", type=int, default=8)
    p.add_argument("--seq", type=int, default=32)
    p.add_argument("--max-id", type=int, default=30522, help="token ids are drawn from [0, max-id)")
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--runs", type=int, default=5, help="warm runs after the first (median reported)")
    p.add_argument("--workdir", type=Path, default=None, help="where the compressed files go (default: a temp dir)")
    p.add_argument("--reuse", action="store_true", help="with --workdir: measure files already there, do not compress")
    p.add_argument("--no-arena-row", action="store_true",
                   help="one more row: the portable file with enable_cpu_mem_arena off (what stays resident "
                        "once the folding's transient tensors are freed)")
    p.add_argument("extra", nargs="*", help="more flags for `onnxvq compress`, after --")
    p.add_argument("--_child", help=argparse.SUPPRESS)
    p.add_argument("--_feeds", help=argparse.SUPPRESS)
    p.add_argument("--_out", help=argparse.SUPPRESS)
    p.add_argument("--_custom", action="store_true", help=argparse.SUPPRESS)
    p.add_argument("--_make_feeds", help=argparse.SUPPRESS)
    p.add_argument("--_no_arena", action="store_true", help=argparse.SUPPRESS)
    args = p.parse_args(argv)

    if args._make_feeds:
        np.savez(args._make_feeds, **generated_inputs(str(args.model), args.batch, {"*": args.seq}, args.max_id))
        return 0
    if args._child:
        print(json.dumps(child(args._child, args._custom, args._feeds, args._out, args.threads, args.runs,
                               not args._no_arena)))
        return 0
    if not args.model.exists():
        print(f"{args.model} is absent; nothing measured (this script does not build it).")
        return 0

    with tempfile.TemporaryDirectory() as tmp:
        work = args.workdir or Path(tmp)
        work.mkdir(parents=True, exist_ok=True)
        variants = [("original", args.model, False, None)]
        for fmt in ("portable", "custom"):
            out = work / f"{args.model.stem}.{fmt}.onnx"
            reused = args.reuse and args.workdir is not None and out.exists()
            variants.append((fmt, out, fmt == "custom", None if reused else compress(args.model, out, fmt, args)))
        if args.no_arena_row:
            variants.append(("portable, no CPU arena", variants[1][1], False, None))
        # Inputs are made in a child: loading the model here would raise this process's peak RSS, which
        # every child's ru_maxrss starts from (exec keeps the high-water mark of the forked image).
        feeds_file = Path(tmp) / "feeds.npz"
        subprocess.run([sys.executable, __file__, "--_make_feeds", str(feeds_file), "--model", str(args.model),
                        "--batch", str(args.batch), "--seq", str(args.seq), "--max-id", str(args.max_id)], check=True)
        with np.load(feeds_file) as data:
            feeds = {k: data[k] for k in data.files}
        rows, outputs = [], {}
        for label, path, custom, seconds in variants:
            out_file = Path(tmp) / f"{label}.npy"
            m = measure(path, custom, feeds_file, out_file, args, arena="no CPU arena" not in label)
            rows.append((label, path.stat().st_size / 1e6, custom, seconds, m))
            outputs[label] = np.load(out_file)

    info = cpu_info()
    print(f"CPU: {info['model']}, {info['cpus']} logical CPUs; ISA: {isa_summary(info)}")
    print(f"model: {args.model} ({args.model.stat().st_size / 1e6:.1f} MB), --method {args.method} "
          f"--bits {args.bits} {' '.join(args.extra)}".rstrip())
    print(f"inputs: {', '.join(f'{k} {list(v.shape)} {v.dtype}' for k, v in feeds.items())}; "
          f"{args.threads} thread(s); RSS before the session (imports only): "
          f"{rows[0][4]['rss_before_mb']:.0f} MB\n")
    print("| file | runs in | file MB | session s | RSS after create MB | peak RSS MB | first run ms "
          f"| median of {args.runs} runs ms | min cosine vs original |")
    print("|---|---|---:|---:|---:|---:|---:|---:|---:|")
    for label, size_mb, custom, _seconds, m in rows:
        runtime = "onnxvq.session" if custom else "plain ORT"
        print(f"| {label} | {runtime} | {size_mb:.1f} "
              f"| {m['session_s']:.2f} | {m['rss_after_create_mb']:.0f} | {m['peak_rss_mb']:.0f} "
              f"| {m['first_run_ms']:.2f} | {m['warm_run_ms']:.2f} | {cosine(outputs[label], outputs['original']):.5f} |")
    print(f"\npeak RSS is getrusage ru_maxrss of each child (VmHWM: "
          + ", ".join(f"{label} {m['vm_hwm_mb']:.0f}" for label, _, _, _, m in rows) + " MB); compress took "
          + (", ".join(f"{label} {s:.0f} s" for label, _, _, s, _ in rows if s is not None) or "reused files") + ".")
    return 0


if __name__ == "__main__":
    sys.exit(main())
