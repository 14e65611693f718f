"""The README's kernel matrix from bench/kernels.py's JSON: ms per MatMul at one thread and
one cache state, cells at least as fast as fp32 in bold, and how many cells of issue 13's
seven formats are.

    .venv/bin/python bench/speed_tables.py [bench/results/kernels.json] [--cache hot] [--threads 1]
"""
from __future__ import annotations

import argparse
import json
from pathlib import Path

COLUMNS = ["fp32", "int8-dyn", "nbits-b32", "vq-pq4-d4", "vq-pq4-d8", "vq-pq8-d4", "vq-km4", "vq-km5",
           "vq-km3-g16", "vq-bin", "vq-rq2x4", "vq-pq8-d4-out"]
ISSUE_FORMATS = ["vq-pq4-d4", "vq-pq8-d4", "vq-km4", "vq-km5", "vq-km3-g16", "vq-bin", "vq-rq2x4"]


def cell(seconds: float | None, bold: bool) -> str:
    if seconds is None:
        return "–"
    text = f"{seconds * 1e3:.3g}"
    return f"**{text}**" if bold else text


def matrix(rows: list[dict]) -> tuple[str, dict[str, list[int]]]:
    present = [c for c in COLUMNS if any(c in r["seconds"] for r in rows)]
    lines = ["| K x N | rows | " + " | ".join(c.removeprefix("vq-") for c in present) + " |",
             "|---|---:|" + "---:|" * len(present)]
    wins = {c: [0, 0] for c in present if c.startswith("vq-")}
    for r in rows:
        t = r["seconds"]
        cells = []
        for c in present:
            fast = c.startswith("vq-") and c in t and t[c] <= t["fp32"]
            if c in wins and c in t:
                wins[c][0] += fast
                wins[c][1] += 1
            cells.append(cell(t.get(c), fast))
        lines.append(f"| {r['K']}x{r['N']} | {r['batch']} | " + " | ".join(cells) + " |")
    return "\n".join(lines), wins


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("json", type=Path, nargs="?",
                        default=Path(__file__).resolve().parent / "results" / "kernels.json")
    parser.add_argument("--cache", default="hot")
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args(argv)
    data = json.loads(args.json.read_text())
    rows = [r for r in data["results"] if r["cache"] == args.cache and r["threads"] == args.threads]
    if not rows:
        parser.error(f"{args.json}: no cells at cache {args.cache}, {args.threads} thread(s)")
    table, wins = matrix(rows)
    print(f"kernel table {data['kernel_table']}, onnxruntime {data['onnxruntime']}, {args.threads} thread(s), "
          f"{args.cache}, {data['rounds']} rounds\n")
    print(table + "\n")
    issue = [wins[c] for c in ISSUE_FORMATS if c in wins]
    print(f"issue 13's formats: {sum(w for w, _ in issue)} of {sum(n for _, n in issue)} cells at least as fast as "
          f"fp32; every vq column: {sum(w for w, _ in wins.values())} of {sum(n for _, n in wins.values())}")
    print("per format: " + ", ".join(f"{c.removeprefix('vq-')} {w}/{n}" for c, (w, n) in wins.items()))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
