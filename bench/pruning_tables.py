"""Tables for docs/RESULTS.md from bench/results/pruning.json (bench/data_aware.py --config bench/pruning.yaml).

    .venv/bin/python bench/pruning_tables.py [bench/results/pruning.json]

1. quality vs whole-file ratio of every run (the sweep curves of the plain methods and the pipelines);
2. each plain file beside its --entropy twin, both after zstd -19 and zip -9: the entropy-coded file
   against a general-purpose compressor applied to the plain one (the issue's 10% bar).
"""
from __future__ import annotations

import json
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def _pct(v, digits=1):
    return f"{100 * v:.{digits}f}%" if v is not None else "-"


def _quality(r) -> str:
    if r.get("cosine_mean") is not None:
        return f"cos {r['cosine_mean']:.4f}, NN {_pct(r.get('nn_agreement'))}"
    if r.get("top1") and r.get("original_top1"):
        return f"top-1 {_pct(r['top1'], 2)} ({_pct(r['original_top1'], 2)}), agreement {_pct(r.get('top1_agreement'))}"
    return f"agreement {_pct(r.get('top1_agreement'))}"


def curves(rows) -> str:
    lines = ["| model | run | file ratio | compressed layers ratio | sparsity | quality (held-out) |",
             "|---|---|---:|---:|---:|---|"]
    for r in rows:
        lines.append(f"| {r['model']} | {r['run']} | {r['file_ratio']:.2f}x | {r['layers_ratio']}x | "
                     f"{_pct(r.get('sparsity'))} | {_quality(r)} |")
    return "\n".join(lines)


def entropy_vs_archivers(rows) -> str:
    by_key = {(r["model"], r["run"]): r for r in rows}
    lines = ["| model | setting | plain file | plain, zstd -19 | plain, zip -9 | --entropy file | --entropy, zstd -19 "
             "| --entropy file vs plain file | --entropy file vs plain zstd -19 |", "|---|---|---:|---:|---:|---:|---:|---:|---:|"]
    for (model, run), plain in by_key.items():
        twin = by_key.get((model, run + ", entropy")) or by_key.get((model, run + " + entropy"))
        if twin is None or not plain.get("archive_sizes") or not twin.get("archive_sizes"):
            continue
        p, e = plain["archive_sizes"], twin["archive_sizes"]
        mb = lambda n: f"{n / 1e6:.3f} MB"  # noqa: E731
        lines.append(f"| {model} | {run} | {mb(p['file'])} | {mb(p['zstd19'])} | {mb(p['zip'])} | {mb(e['file'])} | "
                     f"{mb(e['zstd19'])} | {100 * (e['file'] / p['file'] - 1):+.1f}% | "
                     f"{100 * (e['file'] / p['zstd19'] - 1):+.1f}% |")
    return "\n".join(lines)


def main() -> None:
    path = Path(sys.argv[1]) if len(sys.argv) > 1 else REPO / "bench" / "results" / "pruning.json"
    data = json.loads(path.read_text())
    print(data["header"] + "\n\n" + curves(data["rows"]) + "\n\n" + entropy_vs_archivers(data["rows"]))


if __name__ == "__main__":
    main()
