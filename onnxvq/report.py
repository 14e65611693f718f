"""Size accounting and the per-layer table.

Bytes are counted from the tensors actually written: packed codes, codebooks in their
stored dtype, and biases. A weight shared by several nodes is counted once, on its first node.
"""
from __future__ import annotations


from .compress import CompressionResult
from .quantizers import CodedWeight, LowRankWeight

FLOAT_BYTES = 4


def _padding_bytes(enc) -> float:
    """Stored bytes that carry no weight: unused bits of the last code byte, and codebook slots for
    zero padding when the split axis is not a multiple of the subvector length."""
    if not isinstance(enc, CodedWeight):
        return 0.0
    lay = enc.layout
    stream = (lay.packed_nbytes * 8 - lay.num_codes * lay.bits) / 8
    padded_slots = lay.padded_length - lay.length
    per_slot = enc.codebooks.itemsize * lay.stages * lay.row_groups * lay.codebook_size
    codebook_pad = padded_slots * per_slot if lay.codebook_per_subspace else 0
    return stream + codebook_pad


def layer_rows(result: CompressionResult) -> list[dict]:
    rows = []
    for job in result.jobs:
        enc = result.encoded[job.first.weight_key]
        err = job.weight_rel_err
        for i, site in enumerate(job.sites):
            first = i == 0
            weight_bytes = site.weight_bytes if first else 0
            bias_bytes = 0 if site.bias_array is None else site.bias_array.size * FLOAT_BYTES
            code_bytes = enc.code_bytes if first else 0
            codebook_bytes = enc.codebook_bytes if first else 0
            compressed = code_bytes + codebook_bytes + bias_bytes
            row = {
                "name": site.display_name, "op_type": site.op_type, "graph": site.graph_path,
                "method": job.config.method, "options": job.config.options(),
                "in_features": site.in_features, "out_features": site.out_features,
                "weight": site.weight.name, "weight_shape": site.weight_shape,
                "original_bytes": weight_bytes + bias_bytes, "weight_bytes": weight_bytes,
                "code_bytes": code_bytes, "codebook_bytes": codebook_bytes, "bias_bytes": bias_bytes,
                "padding_bytes": _padding_bytes(enc) if first else 0.0,
                "compressed_bytes": compressed,
                "ratio": (weight_bytes + bias_bytes) / compressed if first and compressed else None,
                "weight_ratio": weight_bytes / (code_bytes + codebook_bytes) if first else None,
                "bits_per_weight": 8 * (code_bytes + codebook_bytes) / site.elements if first else None,
                "weight_rel_err": err,
                # Output error estimated from the calibration statistics (None without --calibration).
                "calib_output_rel_err": job.calib_output_rel_err,
                "data_free_calib_output_rel_err": job.data_free_output_rel_err,
                "sparsity": job.sparsity,  # share of exact zeros in W_hat; None when not pruned
                "entropy_coded": isinstance(enc, CodedWeight) and enc.entropy is not None,
                "plain_code_bytes": enc.plain_code_bytes if first and isinstance(enc, CodedWeight) else None,
                "skipped_reason": None,
            }
            if isinstance(enc, LowRankWeight):
                row["rank"] = enc.rank
            if not first:
                row["shares_weight_with"] = job.first.display_name
            rows.append(row)
    for s in result.skipped:
        rows.append({"name": s.display_name, "op_type": s.op_type, "graph": s.graph_path, "method": None,
                     "weight": s.weight_name, "original_bytes": s.stored_bytes,
                     "compressed_bytes": s.stored_bytes, "skipped_reason": s.reason})
    return rows


def _fmt_bytes(n: float | None) -> str:
    if n is None:
        return "-"
    for unit in ("B", "KB", "MB", "GB"):
        if abs(n) < 1024 or unit == "GB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return str(n)


def format_table(headers: list[str], rows: list[list[str]]) -> str:
    widths = [max(len(h), *(len(r[i]) for r in rows)) if rows else len(h) for i, h in enumerate(headers)]
    line = lambda cells: "  ".join(c.ljust(w) if i == 0 else c.rjust(w) for i, (c, w) in enumerate(zip(cells, widths)))  # noqa: E731
    return "\n".join([line(headers), line(["-" * w for w in widths]), *(line(r) for r in rows)])


def layers_table(rows: list[dict]) -> str:
    body = []
    for r in rows:
        if r.get("skipped_reason"):
            original = _fmt_bytes(r["original_bytes"]) if r["original_bytes"] else "-"
            body.append([r["name"], "dense", original, "-", "-", "-", "-", "-", "-", "-",
                         "skipped: " + r["skipped_reason"]])
            continue
        note = f"shares {r['shares_weight_with']}" if r.get("shares_weight_with") else ""
        body.append([
            r["name"], _method_label(r), _fmt_bytes(r["original_bytes"]), _fmt_bytes(r["code_bytes"]),
            _fmt_bytes(r["codebook_bytes"]), _fmt_bytes(r["compressed_bytes"]),
            f"{r['ratio']:.1f}x" if r.get("ratio") else "-",
            f"{r['bits_per_weight']:.2f}" if r.get("bits_per_weight") else "-",
            f"{r['weight_rel_err']:.4f}",
            f"{r['output_rel_err']:.4f}" if "output_rel_err" in r else "-",
        ] + ([note] if note else []))
    width = max(len(b) for b in body) if body else 10
    headers = ["layer", "method", "original", "codes", "codebooks", "compressed", "ratio", "bits/w", "weight err",
               "out err", "note"][:width]
    return format_table(headers, [b + [""] * (width - len(b)) for b in body])


def _method_label(row: dict) -> str:
    label = _method_name(row)
    if row["options"].get("prune"):
        label += f" prune {row['options']['prune']:g}"
    return label + (" +ent" if row.get("entropy_coded") else "")


def _method_name(row: dict) -> str:
    o = row["options"]
    m = o["method"]
    if m == "pq":
        return f"pq b{o['bits']} d{o['dim']} {o['axis']}"
    if m == "rq":
        return f"rq b{o['bits']} d{o['dim']} t{o['stages']} {o['axis']}"
    if m == "kmeans":
        return f"kmeans b{o['bits']}" + (f" g{o['group_size']}" if o["group_size"] else "")
    if m == "svd":
        return f"svd r{row.get('rank')}"
    if m == "binary":
        return "binary" + ("" if o["scaled"] else " ±1")
    return m


def totals(rows: list[dict]) -> dict:
    compressed = [r for r in rows if not r.get("skipped_reason")]
    keys = ("original_bytes", "code_bytes", "codebook_bytes", "bias_bytes", "compressed_bytes")
    out = {k: sum(r.get(k, 0) for r in compressed) for k in keys}
    out["skipped_bytes"] = sum(r["original_bytes"] for r in rows if r.get("skipped_reason"))
    out["ratio"] = out["original_bytes"] / out["compressed_bytes"] if out["compressed_bytes"] else None
    return out


def op_type_totals(rows: list[dict]) -> dict[str, dict]:
    """Compressed layers summed per op type (Conv, Gather, MatMul, ...): what each kind contributes."""
    out: dict[str, dict] = {}
    for r in rows:
        if r.get("skipped_reason"):
            continue
        k = out.setdefault(r["op_type"], {"layers": 0, "original_bytes": 0, "compressed_bytes": 0})
        k["layers"] += 1
        k["original_bytes"] += r["original_bytes"]
        k["compressed_bytes"] += r["compressed_bytes"]
    for k in out.values():
        k["ratio"] = k["original_bytes"] / k["compressed_bytes"] if k["compressed_bytes"] else 0.0
    return out
