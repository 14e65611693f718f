"""Codebook fitting benchmark: our batched k-means vs scikit-learn and faiss, and our 1-D k-means vs the optimum.

One run, side by side on the same seeded matrices (compare ratios, not absolute times: the machine may be
shared). PQ of a weight W [K, N] (ONNX MatMul orientation): each output column's K weights are cut into K/d
subvectors; subspace s has its own k-entry codebook fitted on W[s*d:(s+1)*d, :].T.

Times: wall and CPU seconds (all threads; on a shared machine CPU time is the steadier measure).
Baselines that would take too long are timed on the first subspaces only and their time extrapolated; such
rows say so, and give their error next to ours on the same subspaces.

    .venv/bin/python bench/fit.py                 # 4096x4096 and 25088x4096 Gaussian matrices
    .venv/bin/python bench/fit.py --quick         # small sizes, a smoke run
    .venv/bin/python bench/fit.py --real W.npy    # add a real [K, N] layer
    .venv/bin/python bench/fit.py --faiss-python /tmp/faissvenv/bin/python   # faiss from another venv

Prints a markdown table and writes bench/results/fit.json.
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

import numpy as np

CONFIGS = [(4, 256), (4, 16), (8, 256)]  # (subvector length d, codewords k)
SCALAR_K = 16


def pq_data(weight: np.ndarray, d: int) -> np.ndarray:
    """W [K, N] -> the batched k-means input [S, N, d] (a view): subspace s holds W[s*d:(s+1)*d, :].T."""
    k_in, n_out = weight.shape
    return weight.T.reshape(n_out, k_in // d, d).transpose(1, 0, 2)


def relative_error(original: np.ndarray, decoded: np.ndarray) -> float:
    """||W - W_hat||_F / ||W||_F, accumulated in float64 without a full-size float64 copy."""
    diff = norm = 0.0
    for start in range(0, original.shape[0], 256):
        block = original[start:start + 256].astype(np.float64)
        diff += float(((block - decoded[start:start + 256]) ** 2).sum())
        norm += float((block ** 2).sum())
    return (diff / norm) ** 0.5


def decode_pq(centroids: np.ndarray, codes: np.ndarray) -> np.ndarray:
    """centroids [S, k, d], codes [S, N] -> W_hat [S*d, N]."""
    s, n = codes.shape
    rows = np.take_along_axis(centroids, codes.astype(np.int64)[..., None], axis=1)  # [S, N, d]
    return rows.transpose(0, 2, 1).reshape(s * centroids.shape[2], n)


# ----------------------------------------------------------------------------------------------------------
# Methods: each returns (wall seconds, CPU seconds of all its threads) and W_hat for the first subspaces


class Clock:
    """Wall and CPU time (all threads of this process) of a `with` block."""

    def __enter__(self):
        self.wall, self.cpu = time.perf_counter(), time.process_time()
        return self

    def __exit__(self, *exc):
        self.wall, self.cpu = time.perf_counter() - self.wall, time.process_time() - self.cpu


def fit_ours(weight: np.ndarray, d: int, k: int, iters: int):
    from onnxvq.fit import fit_kmeans_batched

    with Clock() as clock:
        centroids, codes = fit_kmeans_batched(pq_data(weight, d), k, iters=iters, seed=0)
    return (clock.wall, clock.cpu), decode_pq(centroids, codes)


def fit_sklearn(weight: np.ndarray, d: int, k: int, subspaces: int):
    from sklearn.cluster import KMeans

    data = pq_data(weight, d)
    centroids, codes = [], []
    with Clock() as clock:
        for s in range(subspaces):
            model = KMeans(n_clusters=k, n_init=1, random_state=s).fit(data[s])
            centroids.append(model.cluster_centers_.astype(np.float32))
            codes.append(model.labels_)
    return (clock.wall, clock.cpu), decode_pq(np.stack(centroids), np.stack(codes))


def fit_faiss(weight: np.ndarray, d: int, k: int, subspaces: int):
    """faiss.ProductQuantizer on the first `subspaces` subspaces (its subspaces are trained independently)."""
    import faiss

    vectors = np.ascontiguousarray(weight[:subspaces * d].T)  # [N, subspaces * d]
    with Clock() as clock:
        pq = faiss.ProductQuantizer(vectors.shape[1], subspaces, int(np.log2(k)))
        pq.train(vectors)
        codes = pq.compute_codes(vectors)
    return (clock.wall, clock.cpu), pq.decode(codes).T


def faiss_in_subprocess(python: str, weight_path: str, d: int, k: int, subspaces: int):
    """Run fit_faiss under another interpreter (one that has faiss); returns seconds and W_hat."""
    with tempfile.TemporaryDirectory() as tmp:
        out = os.path.join(tmp, "decoded.npy")
        cmd = [python, __file__, "--faiss-worker", weight_path, str(d), str(k), str(subspaces), out]
        result = subprocess.run(cmd, capture_output=True, text=True, check=True)
        wall, cpu = map(float, result.stdout.strip().splitlines()[-1].split())
        return (wall, cpu), np.load(out)


def faiss_worker(argv: list[str]) -> None:
    weight_path, d, k, subspaces, out = argv
    (wall, cpu), decoded = fit_faiss(np.load(weight_path, mmap_mode="r"), int(d), int(k), int(subspaces))
    np.save(out, decoded.astype(np.float32))
    print(wall, cpu)


def faiss_available(python: str | None) -> tuple[bool, str]:
    if python:
        probe = subprocess.run([python, "-c", "import faiss; print(faiss.__version__)"], capture_output=True,
                               text=True)
        return probe.returncode == 0, probe.stdout.strip()
    try:
        import faiss
    except ImportError:
        return False, ""
    return True, faiss.__version__


# ----------------------------------------------------------------------------------------------------------
# The runs


def time_limited(run, total: int, budget: float, probe: int):
    """Run on all `total` subspaces if the probe predicts it fits the budget, else on as many as fit.

    Returns ((wall, CPU) seconds for all subspaces, measured or extrapolated), W_hat rows, subspaces run.
    """
    probe = min(probe, total)
    (wall, cpu), decoded = run(probe)
    if probe < total:
        fits = int(budget / max(wall / probe, 1e-9))
        if fits > probe:
            probe = min(total, fits)
            (wall, cpu), decoded = run(probe)
    return (wall * total / probe, cpu * total / probe), decoded, probe


def bench_pq(name: str, weight: np.ndarray, args, faiss_ok: bool, weight_path: str | None) -> list[dict]:
    rows = []
    for d, k in CONFIGS:
        if weight.shape[0] % d:
            continue
        total = weight.shape[0] // d
        config = f"d={d}, k={k}"
        (wall, cpu), ours = fit_ours(weight, d, k, args.iters)
        rows.append(dict(matrix=name, config=config, method=f"ours (iters={args.iters})", seconds=wall,
                         cpu_seconds=cpu, error=relative_error(weight, ours), subspaces=total, total=total))
        print(f"  {name} {config}: ours {wall:.2f}s", file=sys.stderr, flush=True)
        baselines = [("scikit-learn KMeans per subspace", lambda n: fit_sklearn(weight, d, k, n), args.sklearn_budget)]
        if faiss_ok:
            run_faiss = ((lambda n: faiss_in_subprocess(args.faiss_python, weight_path, d, k, n))
                         if args.faiss_python else (lambda n: fit_faiss(weight, d, k, n)))
            baselines.append(("faiss ProductQuantizer", run_faiss, args.faiss_budget))
        for method, run, budget in baselines:
            (wall, cpu), decoded, count = time_limited(run, total, budget, probe=8)
            rows_used = count * d
            row = dict(matrix=name, config=config, method=method, seconds=wall, cpu_seconds=cpu,
                       error=relative_error(weight[:rows_used], decoded), subspaces=count, total=total)
            if count < total:
                row["ours_error_same_subspaces"] = relative_error(weight[:rows_used], ours[:rows_used])
            rows.append(row)
            print(f"  {name} {config}: {method} {wall:.2f}s ({count}/{total} subspaces)", file=sys.stderr,
                  flush=True)
    return rows


def bench_scalar(name: str, weight: np.ndarray, fine_bins: int) -> dict:
    """Our 1-D k-means on all weights, against a certified lower bound on the exact optimum."""
    from onnxvq.fit import fit_kmeans_1d, kmeans1d

    values = weight.reshape(-1)
    with Clock() as clock:
        centers, codes = fit_kmeans_1d(values, SCALAR_K)
    chunk = 1 << 20
    ours = sum(float(((values[i:i + chunk].astype(np.float64) - centers[codes[i:i + chunk]]) ** 2).sum())
               for i in range(0, values.size, chunk))
    # Lower bound: the optimum over a much finer histogram, minus its certified bin error.
    start = time.perf_counter()
    groups = kmeans1d.summarize_values(values, bins=fine_bins, k=SCALAR_K)
    starts = kmeans1d.optimal_partition(groups.count, groups.sum, groups.squares, SCALAR_K)
    lower_bound = kmeans1d.partition_error(groups, starts) - kmeans1d.bin_error_bound(groups)
    reference_seconds = time.perf_counter() - start
    norm = float((values.astype(np.float64) ** 2).sum())
    return dict(matrix=name, config=f"scalar, k={SCALAR_K}", method="ours fit_kmeans_1d", seconds=clock.wall,
                cpu_seconds=clock.cpu,
                error=(ours / norm) ** 0.5, values=values.size,
                excess_over_optimum_at_most=(ours - lower_bound) / lower_bound,
                reference=f"optimum >= DP on {groups.count.size} of {fine_bins} bins - certified bin error "
                          f"({reference_seconds:.1f}s)")


def table(rows: list[dict]) -> str:
    lines = ["| matrix | config | method | fit wall s | fit CPU s | rel. error ‖W−Ŵ‖/‖W‖ | notes |",
             "|---|---|---|---:|---:|---:|---|"]
    for r in rows:
        notes = []
        if r.get("subspaces", r.get("total")) != r.get("total"):
            notes.append(f"time extrapolated from {r['subspaces']}/{r['total']} subspaces; error on those "
                         f"(ours there: {r['ours_error_same_subspaces']:.5f})")
        if "excess_over_optimum_at_most" in r:
            notes.append(f"{r['values']:,} values; error within {100 * r['excess_over_optimum_at_most']:.4f}% "
                         f"of the optimum (squared); {r['reference']}")
        lines.append(f"| {r['matrix']} | {r['config']} | {r['method']} | {r['seconds']:.2f} | "
                     f"{r['cpu_seconds']:.2f} | {r['error']:.5f} | "
                     f"{'; '.join(notes)} |")
    return "\n".join(lines)


def main(argv=None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["--faiss-worker"]:
        faiss_worker(argv[1:])
        return 0
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="small matrices (a smoke run)")
    parser.add_argument("--real", type=Path, help="a real layer's weight, [K, N] float .npy")
    parser.add_argument("--iters", type=int, default=20, help="our Lloyd iterations (default 20)")
    parser.add_argument("--sklearn-budget", type=float, default=30.0, help="seconds per config for scikit-learn")
    parser.add_argument("--faiss-budget", type=float, default=60.0, help="seconds per config for faiss")
    parser.add_argument("--faiss-python", help="interpreter that can import faiss, if this one cannot")
    parser.add_argument("--fine-bins", type=int, default=1 << 20, help="histogram bins of the optimum's bound")
    parser.add_argument("--out", type=Path, default=Path(__file__).parent / "results" / "fit.json")
    args = parser.parse_args(argv)
    if args.quick:
        args.sklearn_budget, args.faiss_budget = min(args.sklearn_budget, 3.0), min(args.faiss_budget, 5.0)

    rng = np.random.default_rng(0)
    shapes = [(1024, 512), (2048, 512)] if args.quick else [(4096, 4096), (25088, 4096)]
    matrices = [(f"Gaussian {m}x{n}", rng.standard_normal((m, n), dtype=np.float32)) for m, n in shapes]
    if args.real:
        matrices.append((f"real {args.real.name}", np.asarray(np.load(args.real), dtype=np.float32)))
    faiss_ok, faiss_version = faiss_available(args.faiss_python)

    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for name, weight in matrices:
            weight_path = None
            if faiss_ok and args.faiss_python:
                weight_path = os.path.join(tmp, "weight.npy")
                np.save(weight_path, weight)
            rows += bench_pq(name, weight, args, faiss_ok, weight_path)
        scalar_source = matrices[0] if args.quick else next(m for m in matrices if m[1].size == 4096 * 4096)
        rows.append(bench_scalar(*scalar_source, args.fine_bins))
        if args.real:
            rows.append(bench_scalar(*matrices[-1], args.fine_bins))

    import scipy
    import sklearn

    environment = dict(python=platform.python_version(), numpy=np.__version__, sklearn=sklearn.__version__,
                       scipy=scipy.__version__, faiss=faiss_version or None, cpus=os.cpu_count(),
                       machine=platform.machine(), argv=argv)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(dict(environment=environment, rows=rows), indent=2))
    print(table(rows))
    print(f"\n(faiss: {faiss_version or 'not available'}; results in {args.out})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
