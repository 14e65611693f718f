"""Whole-model latency: original vs compressed ONNX files, side by side in one process.

    python bench/model_latency.py --pair models/cache/minilm.onnx=minilm.vq.onnx \\
        --data models/cache/minilm_eval.npz --batches 1,8 --threads 1 --rounds 7

    # several candidates per original, with short names
    python bench/model_latency.py --model mini=models/cache/minilm.onnx \\
        --model km4=minilm.km4.onnx --model pq4=minilm.pq4.onnx --pair mini=km4 --pair mini=pq4

--pair ORIGINAL=CANDIDATE (repeatable): each side is a path or a NAME given by --model
NAME=PATH. Pairs with the same original form one group; its models are timed together.

Inputs: --data PATH.npz (keys = input names, or `x` for a single input; used for every group),
or --data NAME=PATH.npz for one group's original. The first `batch` rows are taken (rows are
repeated when the file has fewer). Without data, inputs are generated from the model's input
shapes: float inputs standard normal, integer inputs whose name contains "mask" all ones, other
integer inputs random in [0, --max-id) (e.g. token ids), a batch axis of size `batch` and other
symbolic axes from --dim NAME=N (default 64).

Timing: every session is created with intra_op_num_threads = --threads (inter-op 1, sequential)
through onnxvq.session(), which registers the custom-op library, so VQMatMul/VQGather models and
plain ONNX both run. Each round runs every model of a group once (enough calls to fill about
--round-ms), in alternating order (A B C, then C B A, ...); a cell is the median over rounds.
Session-creation time and the peak RSS growth of creating a session and running it once at the
largest batch are measured in a fresh child process per model (so models do not share a heap).

Prints markdown tables and writes bench/results/model_latency.json (or --json PATH). The CPU's
name and SIMD flags (avx2/fma/avx512*) from /proc/cpuinfo are printed and stored.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

DEFAULT_JSON = ROOT / "bench" / "results" / "model_latency.json"
ISA_FLAGS = ("sse4_2", "avx", "avx2", "fma", "f16c", "avx512f", "avx512bw", "avx512vl", "avx512_vnni",
             "avx512vbmi", "avx512_bf16", "amx_tile", "asimd", "sve")

_NP_TYPES = {1: np.float32, 10: np.float16, 11: np.float64, 6: np.int32, 7: np.int64, 9: np.bool_,
             2: np.uint8, 3: np.int8}


# ---------------------------------------------------------------- machine

def cpu_info() -> dict:
    """CPU model name and the SIMD flags that matter for the kernels (x86 or Arm)."""
    info = {"machine": platform.machine(), "cpus": os.cpu_count(), "model": platform.processor() or "?",
            "isa": []}
    try:
        text = Path("/proc/cpuinfo").read_text()
    except OSError:
        return info
    flags: set[str] = set()
    for line in text.splitlines():
        key, _, value = line.partition(":")
        key = key.strip().lower()
        if key in ("model name", "hardware", "cpu model") and info["model"] in ("?", ""):
            info["model"] = value.strip()
        elif key in ("flags", "features") and not flags:
            flags = set(value.split())
    if info["model"] in ("?", "") or info["model"] == platform.machine():
        info["model"] = next((line.split(":", 1)[1].strip() for line in text.splitlines()
                              if line.lower().startswith("model name")), info["model"])
    info["isa"] = [f for f in ISA_FLAGS if f in flags]
    return info


def isa_summary(info: dict) -> str:
    isa = set(info["isa"])
    if "avx512f" in isa:
        best = "avx512"
    elif {"avx2", "fma"} <= isa:
        best = "avx2+fma"
    elif "asimd" in isa:
        best = "neon"
    else:
        best = "scalar"
    return f"{best} ({' '.join(info['isa']) or 'no SIMD flags found'})"


# ---------------------------------------------------------------- inputs

def parse_named(items, what: str) -> dict[str, str]:
    out = {}
    for item in items or ():
        name, sep, value = item.partition("=")
        if not sep or not name or not value:
            raise SystemExit(f"error: {what} {item!r} is not NAME=VALUE")
        out[name] = value
    return out


def input_specs(path: str) -> list[tuple[str, type, list]]:
    """(name, numpy dtype, dims) of the graph's real inputs; dims are ints or symbolic names."""
    import onnx

    model = onnx.load(path, load_external_data=False)
    inits = {t.name for t in model.graph.initializer}
    specs = []
    for value in model.graph.input:
        if value.name in inits:
            continue
        tensor = value.type.tensor_type
        dims = [d.dim_value if d.HasField("dim_value") else (d.dim_param or "?") for d in tensor.shape.dim]
        specs.append((value.name, _NP_TYPES.get(tensor.elem_type, np.float32), dims))
    return specs


def generated_inputs(path: str, batch: int, dims: dict[str, int], max_id: int, seed: int = 0) -> dict:
    rng = np.random.default_rng(seed)
    feeds = {}
    for name, dtype, shape in input_specs(path):
        concrete = []
        for i, d in enumerate(shape):
            if isinstance(d, int) and d > 0:
                concrete.append(d)
            elif i == 0:
                concrete.append(batch)
            else:
                concrete.append(int(dims.get(str(d), dims.get("*", 64))))
        if np.issubdtype(dtype, np.floating):
            feeds[name] = rng.standard_normal(concrete).astype(dtype)
        elif "mask" in name.lower():
            feeds[name] = np.ones(concrete, dtype=dtype)
        else:
            feeds[name] = rng.integers(0, max_id, size=concrete).astype(dtype)
    return feeds


def npz_inputs(path: str, model_path: str, batch: int) -> dict:
    specs = input_specs(model_path)
    with np.load(path, allow_pickle=False) as data:
        arrays = {k: data[k] for k in data.files}
    feeds = {}
    for name, dtype, _ in specs:
        key = name if name in arrays else ("x" if len(specs) == 1 and "x" in arrays else None)
        if key is None:
            raise SystemExit(f"error: {path} has no array for input {name!r} (has {sorted(arrays)})")
        a = arrays[key]
        if len(a) < batch:  # too few rows: repeat them
            a = np.concatenate([a] * (-(-batch // len(a))))
        feeds[name] = np.ascontiguousarray(a[:batch]).astype(dtype, copy=False)
    return feeds


# ---------------------------------------------------------------- sessions

def make_session(path: str, threads: int):
    import onnxruntime as ort

    import onnxvq

    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    options.inter_op_num_threads = 1
    options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    options.log_severity_level = 3
    return onnxvq.session(path, options)


def peak_rss_bytes() -> int:
    """This process's peak RSS. VmHWM belongs to the address space, which exec replaces; getrusage's
    ru_maxrss would instead start at the parent's size at fork time."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) * 1024
    except OSError:
        pass
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


def child_measure(path: str, threads: int, feeds_file: str) -> dict:
    """Run in a fresh process: session-creation time and peak RSS growth (create + one run)."""
    with np.load(feeds_file) as data:
        feeds = {k: data[k] for k in data.files}
    import onnxruntime  # noqa: F401 - imported before the baseline, so its own pages do not count

    import onnxvq  # noqa: F401

    before = peak_rss_bytes()
    start = time.perf_counter()
    session = make_session(path, threads)
    created = time.perf_counter() - start
    start = time.perf_counter()
    session.run(None, feeds)
    first = time.perf_counter() - start
    after = peak_rss_bytes()
    return {"session_ms": created * 1e3, "first_run_ms": first * 1e3,
            "peak_rss_growth_mb": (after - before) / 1e6}


def measure_in_child(path: str, threads: int, feeds: dict, tmpdir: Path) -> dict:
    feeds_file = tmpdir / f"feeds-{abs(hash(path))}.npz"
    np.savez(feeds_file, **feeds)
    command = [sys.executable, __file__, "--_child", path, "--threads", str(threads), "--_feeds", str(feeds_file)]
    result = subprocess.run(command, capture_output=True, text=True)
    feeds_file.unlink(missing_ok=True)
    if result.returncode != 0:
        tail = (result.stderr.strip().splitlines() or ["?"])[-1]
        return {"error": tail}
    return json.loads(result.stdout.strip().splitlines()[-1])


# ---------------------------------------------------------------- timing

class Timed:
    def __init__(self, label: str, path: str, threads: int):
        self.label, self.path = label, path
        self.session = make_session(path, threads)
        self.feeds: dict = {}
        self.calls = 1

    def run(self, calls: int) -> float:
        start = time.perf_counter()
        for _ in range(calls):
            self.session.run(None, self.feeds)
        return (time.perf_counter() - start) / calls


def time_group(models: list[Timed], rounds: int, round_ms: float) -> list[float]:
    """Median seconds per call of each model, interleaved: order flips every round."""
    for m in models:  # warm up, then size each model's share of a round
        m.run(1)
        once = max(m.run(1), 1e-6)
        m.calls = int(np.clip(round_ms / 1e3 / once, 1, 1000))
    samples: list[list[float]] = [[] for _ in models]
    order = list(range(len(models)))
    for r in range(rounds):
        for i in (order if r % 2 == 0 else order[::-1]):
            samples[i].append(models[i].run(models[i].calls))
    return [float(np.median(s)) for s in samples]


# ---------------------------------------------------------------- main

def resolve(side: str, names: dict[str, str]) -> tuple[str, str]:
    """(label, path) of one side of a pair."""
    if side in names:
        return side, names[side]
    return Path(side).name, side


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter, epilog=__doc__)
    parser.add_argument("--pair", action="append", default=[], metavar="ORIGINAL=CANDIDATE")
    parser.add_argument("--model", action="append", default=[], metavar="NAME=PATH",
                        help="name a model, to use NAME in --pair")
    parser.add_argument("--data", action="append", default=[], metavar="[NAME=]PATH.npz")
    parser.add_argument("--dim", action="append", default=[], metavar="AXIS=N",
                        help="size of a symbolic non-batch axis for generated inputs (default 64)")
    parser.add_argument("--max-id", type=int, default=100, help="generated integer inputs are < this")
    parser.add_argument("--batches", default="1,8")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--round-ms", type=float, default=100.0, help="time per model per round (approx.)")
    parser.add_argument("--no-child", action="store_true", help="skip session-creation/RSS measurements")
    parser.add_argument("--json", type=Path, default=DEFAULT_JSON)
    parser.add_argument("--_child", help=argparse.SUPPRESS)
    parser.add_argument("--_feeds", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)

    if args._child:
        print(json.dumps(child_measure(args._child, args.threads, args._feeds)))
        return 0
    if not args.pair:
        parser.error("give at least one --pair ORIGINAL=CANDIDATE")

    names = parse_named(args.model, "--model")
    dims = {k: int(v) for k, v in parse_named(args.dim, "--dim").items()}
    batches = [int(b) for b in args.batches.split(",") if b.strip()]
    groups: dict[tuple[str, str], list[tuple[str, str]]] = {}
    for pair in args.pair:
        a, sep, b = pair.partition("=")
        if not sep or not a or not b:
            parser.error(f"--pair {pair!r} is not ORIGINAL=CANDIDATE")
        original = resolve(a, names)
        groups.setdefault(original, [])
        for candidate in b.split(","):
            groups[original].append(resolve(candidate, names))
    for (_, path), cands in groups.items():
        for _, p in [(None, path), *cands]:
            if not Path(p).is_file():
                parser.error(f"model file not found: {p}")
    shared_data = [d for d in args.data if "=" not in d]
    group_data = parse_named([d for d in args.data if "=" in d], "--data")

    info = cpu_info()
    print(f"CPU: {info['model']} ({info['machine']}, {info['cpus']} logical CPUs); ISA: {isa_summary(info)}")
    env = {k: os.environ[k] for k in ("ONNXVQ_FORCE_SCALAR", "ONNXVQ_EXACT_LUT", "OMP_NUM_THREADS") if k in os.environ}
    import onnxruntime as ort
    print(f"onnxruntime {ort.__version__}, {args.threads} intra-op thread(s), {args.rounds} rounds"
          + (f", env {env}" if env else ""))

    rows, per_model = [], {}
    tmpdir = Path(os.environ.get("TMPDIR", "/tmp"))
    for (orig_label, orig_path), cands in groups.items():
        data_file = group_data.get(orig_label) or group_data.get(orig_path) or (shared_data[0] if shared_data else None)
        models = [Timed(orig_label, orig_path, args.threads)] + [Timed(l, p, args.threads) for l, p in cands]
        for batch in batches:
            feeds = (npz_inputs(data_file, orig_path, batch) if data_file
                     else generated_inputs(orig_path, batch, dims, args.max_id))
            for m in models:
                m.feeds = feeds
            seconds = time_group(models, args.rounds, args.round_ms)
            shape = {k: list(v.shape) for k, v in feeds.items()}
            for m, s in zip(models[1:], seconds[1:]):
                rows.append({"original": orig_label, "candidate": m.label, "batch": batch,
                             "ms_original": seconds[0] * 1e3, "ms_candidate": s * 1e3,
                             "speedup": seconds[0] / s, "inputs": shape,
                             "data": data_file or "generated"})
        if not args.no_child:
            feeds = (npz_inputs(data_file, orig_path, max(batches)) if data_file
                     else generated_inputs(orig_path, max(batches), dims, args.max_id))
            for m in models:
                if m.path not in per_model:
                    per_model[m.path] = {"label": m.label, "file_mb": Path(m.path).stat().st_size / 1e6,
                                         **measure_in_child(m.path, args.threads, feeds, tmpdir)}
        del models

    print("\n| model | candidate | batch | ms original | ms compressed | ratio (orig/comp, >1 = faster) |")
    print("|---|---|---:|---:|---:|---:|")
    for r in rows:
        print(f"| {r['original']} | {r['candidate']} | {r['batch']} | {r['ms_original']:.3f} | "
              f"{r['ms_candidate']:.3f} | {r['speedup']:.2f}x |")
    if per_model:
        print(f"\n| model | file MB | session create ms | first run ms (batch {max(batches)}) | peak RSS growth MB |")
        print("|---|---:|---:|---:|---:|")
        for path, m in per_model.items():
            if "error" in m:
                print(f"| {m['label']} | {m['file_mb']:.2f} | error: {m['error']} | | |")
            else:
                print(f"| {m['label']} | {m['file_mb']:.2f} | {m['session_ms']:.1f} | {m['first_run_ms']:.1f} | "
                      f"{m['peak_rss_growth_mb']:.1f} |")
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps({"cpu": info, "isa": isa_summary(info), "onnxruntime": ort.__version__,
                                     "threads": args.threads, "rounds": args.rounds, "env": env,
                                     "rows": rows, "models": per_model}, indent=2))
    print(f"\nwrote {args.json}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
