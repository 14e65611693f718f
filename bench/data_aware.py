"""Data-free vs data-aware fitting and the budget mode on the real models: quality vs whole-file ratio.

For every model and run of bench/data_aware.yaml: run `onnxvq compress` as a user would (a child
process, so its wall time and peak memory are its own: os.wait4), then score the written file
against the original on the model's held-out evaluation set. The calibration set is always
another file than the evaluation set. Prints a markdown table; writes bench/results/data_aware.{json,md}.

    .venv/bin/python bench/data_aware.py                             # every model, every run
    .venv/bin/python bench/data_aware.py --models mobilenet_v2 --runs "budget 8x"
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from onnxvq.evaluate import Evaluator, load_dataset  # noqa: E402
from onnxvq.modelio import file_bytes, load_model  # noqa: E402

ONNXVQ = [sys.executable, "-m", "onnxvq.cli"]
SCORES = ("top1_agreement", "top1", "cosine_mean", "nn_agreement", "output_rel_err")


def compress(model: Path, out: Path, args: list[str]) -> dict:
    """Run the CLI; returns its seconds, peak RSS and JSON report."""
    report = out.with_suffix(".json")
    cmd = [*ONNXVQ, "compress", str(model), "-o", str(out), "--no-check", "-q", "--json", str(report), *args]
    start = time.perf_counter()
    child = subprocess.Popen(cmd, cwd=REPO, stderr=subprocess.PIPE, text=True)
    _, status, usage = os.wait4(child.pid, 0)
    seconds = time.perf_counter() - start
    stderr = child.stderr.read()
    if os.waitstatus_to_exitcode(status) != 0:
        raise SystemExit(f"{' '.join(cmd)} failed:\n{stderr}")
    return {"seconds": round(seconds, 1), "peak_mb": round(usage.ru_maxrss / 1024), "report": json.loads(report.read_text())}


def run_model(name: str, spec: dict, only: list[str] | None, threads: int) -> list[dict]:
    paths = {k: REPO / spec[k] for k in ("model", "eval", "calibration")}
    missing = [p.name for p in paths.values() if not p.exists()]
    if missing:
        print(f"{name}: {', '.join(missing)} missing; run `make models`", file=sys.stderr)
        return []
    original = load_model(paths["model"])
    dataset = load_dataset(original, paths["eval"])
    evaluator = Evaluator.for_model(original, dataset, threads=threads, task=spec.get("task", "auto"))
    before = file_bytes(paths["model"])
    rows = []
    for label, args in spec["runs"].items():
        if only and label not in only:
            continue
        args = [str(a).replace("{calibration}", str(paths["calibration"])) for a in args]
        with tempfile.TemporaryDirectory() as tmp:
            out = Path(tmp) / f"{name}.vq.onnx"
            got = compress(paths["model"], out, args)
            scores = evaluator.evaluate(str(out))
            after = file_bytes(out)
        budget = got["report"].get("budget") or {}
        layers = got["report"]["totals"]
        row = {"model": name, "run": label, "args": args, "file_ratio": round(before / after, 3),
               "original_top1": evaluator.baseline.get("top1"),
               "layers_ratio": round(layers["ratio"], 2) if layers.get("ratio") else None,
               "compressed_bytes": after, "eval_samples": dataset.samples,
               "calibrated": "--calibration" in args, "compress_seconds": got["seconds"], "peak_mb": got["peak_mb"],
               **{k: scores[k] for k in SCORES if scores.get(k) is not None}}
        report = got["report"]
        if report.get("archive_sizes"):  # --archive-sizes, --entropy or --prune: zstd -19 / zip of the file
            row["archive_sizes"] = report["archive_sizes"]
        if report.get("pruning"):
            row["sparsity"] = round(report["pruning"]["sparsity"], 4)
        row["entropy_layers"] = sum(1 for r in report["layers"] if r.get("entropy_coded"))
        if budget:
            row["calibration_quality"] = budget.get("calibration_quality")
            row["floor_held"] = budget.get("floor_held")
        rows.append(row)
        print(json.dumps(row), file=sys.stderr, flush=True)
    return rows


def markdown(rows: list[dict]) -> str:
    def pct(v, digits=1):
        return f"{100 * v:.{digits}f}%" if v is not None else "-"

    lines = ["| model | run | data | file ratio | layers ratio | top-1 agreement | accuracy (original) | cosine "
             "| NN agreement | compress s | peak MB |", "|---|---|---|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for r in rows:
        cos = f"{r['cosine_mean']:.4f}" if r.get("cosine_mean") is not None else "-"
        lines.append(f"| {r['model']} | {r['run']} | {'calibrated' if r['calibrated'] else 'data-free'} | "
                     f"{r['file_ratio']:.2f}x | {r['layers_ratio']}x | {pct(r.get('top1_agreement'))} | "
                     f"{pct(r.get('top1'), 2)} ({pct(r.get('original_top1'), 2)}) | {cos} | {pct(r.get('nn_agreement'))} | "
                     f"{r['compress_seconds']:.0f} | {r['peak_mb']} |")
    if any(r.get("archive_sizes") for r in rows):
        lines += ["", "| model | run | sparsity | entropy layers | file MB | zstd -19 MB | zip MB | file / zstd -19 |",
                  "|---|---|---:|---:|---:|---:|---:|---:|"]
        for r in rows:
            a = r.get("archive_sizes")
            if not a:
                continue
            lines.append(f"| {r['model']} | {r['run']} | {pct(r.get('sparsity'))} | {r.get('entropy_layers', 0)} | "
                         f"{a['file'] / 1e6:.3f} | {a['zstd19'] / 1e6:.3f} | {a['zip'] / 1e6:.3f} | "
                         f"{a['file'] / a['zstd19']:.3f} |")
    return "\n".join(lines)


def main() -> None:
    import yaml

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", default=str(REPO / "bench" / "data_aware.yaml"))
    parser.add_argument("--models", default=None, help="Comma-separated model names (default: all).")
    parser.add_argument("--runs", default=None, help="Run labels, separated by ';' (default: all).")
    parser.add_argument("--threads", type=int, default=0, help="onnxruntime threads for scoring (0 = default).")
    parser.add_argument("--out", default=str(REPO / "bench" / "results" / "data_aware"))
    args = parser.parse_args()
    spec = yaml.safe_load(Path(args.config).read_text())["models"]
    names = args.models.split(",") if args.models else list(spec)
    only = args.runs.split(";") if args.runs else None
    rows = [r for name in names for r in run_model(name, spec[name], only, args.threads)]
    header = (f"CPU: {platform.processor() or platform.machine()}, {os.cpu_count()} cores; "
              f"quality on held-out eval sets, never the calibration sets")
    table = markdown(rows)
    print(header + "\n\n" + table)
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.with_suffix(".json").write_text(json.dumps({"header": header, "rows": rows}, indent=2))
    out.with_suffix(".md").write_text(header + "\n\n" + table + "\n")


if __name__ == "__main__":
    main()
