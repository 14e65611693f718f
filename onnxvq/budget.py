"""Budget mode: pick each layer's method and bits to meet a file size or a quality floor.

1. Every layer is fitted (data-aware) with every candidate setting of its kind; each fit gives a
   rate-distortion point: stored bytes and the relative output error on the calibration statistics
   (the per-layer sensitivity of the paper's Figure 4, without running the model).
2. A Lagrangian split chooses one point per layer minimizing sum(error^2) + lambda * bytes; lambda
   is searched until the estimated whole file meets the size target.
3. The model is run end to end on the calibration inputs; while a quality floor fails, lambda is
   halved (more bytes) until it holds. With only a floor, lambda is bisected for the smallest file
   that holds it.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any, Callable

import numpy as np
import onnx

from .config import MethodConfig, make_method_config
from .errors import ConfigError

#: Settings the allocator may give a layer, per op type. Convolutions: per-channel float16
#: codebooks (BN-folded channels differ in range) or one per tensor (cheapest at few bits);
#: dense layers: per-tensor codebooks (the fast-scan kernel's layouts) or per-row ones.
_PER_ROW = {"group_size": 1, "codebook_dtype": "float16"}
CANDIDATES: dict[str, list[dict[str, Any]]] = {
    "Conv": [*({"method": "kmeans", "bits": b, **_PER_ROW} for b in (2, 3, 4, 5, 6)),
             *({"method": "kmeans", "bits": b} for b in (2, 3, 4, 5, 6))],
    "MatMul": [*({"method": "kmeans", "bits": b} for b in (2, 3, 4, 5, 6)),
               *({"method": "kmeans", "bits": b, **_PER_ROW} for b in (2, 3, 4))],
    "Gather": [{"method": "kmeans", "bits": b, **_PER_ROW} for b in (2, 3, 4, 5)],
}
CANDIDATES["ConvTranspose"] = CANDIDATES["Conv"]
CANDIDATES["Gemm"] = CANDIDATES["MatMul"]
BACKOFF_STEPS = 12
#: fill(): how much a layer's decoder may shrink when its setting changes (a byte estimate beyond the
#: codes), and how many built graphs it may measure.
DECODER_SLACK = 4096
FILL_TRIALS = 64
BISECT_STEPS = 8


@dataclass(frozen=True)
class Budget:
    """What the user asked for: a size (``target_bytes``) and/or a floor on the calibration data."""

    target_bytes: int | None = None
    min_agreement: float | None = None    # top-1 agreement with the original
    min_cosine: float | None = None       # mean per-input cosine of the output

    def __post_init__(self):
        if self.target_bytes is None and self.min_agreement is None and self.min_cosine is None:
            raise ConfigError("a budget needs --target-ratio/--target-size or --min-agreement/--min-cosine")
        if self.target_bytes is not None and self.target_bytes <= 0:
            raise ConfigError(f"target size must be > 0 bytes, got {self.target_bytes}")
        for name, v in (("min-agreement", self.min_agreement), ("min-cosine", self.min_cosine)):
            if v is not None and not 0 < v <= 1:
                raise ConfigError(f"--{name} must be in (0, 1], got {v}")

    def floor_holds(self, quality: dict[str, float]) -> bool:
        ok = self.min_agreement is None or quality["top1_agreement"] >= self.min_agreement
        return ok and (self.min_cosine is None or quality["cosine_mean"] >= self.min_cosine)


@dataclass
class Point:
    config: MethodConfig
    encoded: Any
    stored_bytes: int
    rel_err: float                        # relative output error of the layer (calibration statistics)
    bias_shift: np.ndarray | None = None  # bias correction that goes with the encoding


@dataclass
class Allocation:
    choice: list[int]                     # chosen point per job
    file_bytes: int                       # the file this choice writes (measured on the built graph)
    quality: dict[str, float] | None = None
    history: list[dict[str, Any]] = field(default_factory=list)
    gains: list[float] = field(default_factory=list)
    config: dict[str, Any] | None = None


def candidates_for(op_type: str) -> list[MethodConfig]:
    return [make_method_config(c) for c in CANDIDATES[op_type]]


def _fit_layer(weight: np.ndarray, configs: list[MethodConfig], stats, seed: int, correct_bias: bool):
    """Every candidate of one layer as (encoding, rel_err, bias shift); one task, so the layer's
    H factors are computed once."""
    from .compress import release_fit_cache, weight_error
    from .quantizers import quantize
    from .quantizers.base import quantize_data_aware

    out = []
    for config in configs:
        if stats is None:  # inputs not observable (e.g. inside a subgraph): weight error as the proxy
            enc = quantize(weight, config, seed)
            out.append((enc, weight_error(weight, enc), None))
        else:
            got = quantize_data_aware(weight, config, stats, seed, correct_bias)
            out.append((got.encoded, got.output_rel_err, got.bias_shift))
    if stats is not None:
        release_fit_cache(stats)
    return out


def rate_distortion(weight_jobs, fmt: str, n_jobs: int = 1) -> list[list[Point]]:
    """Every candidate of every job as a point; points that would not be smaller than the dense
    weight are dropped."""
    from .compress import corrects_bias

    tasks = [(job.first.weight_array, candidates_for(job.first.op_type), job.stats, job.seed, corrects_bias(job))
             for job in weight_jobs]
    if n_jobs == 1:
        fitted = [_fit_layer(*t) for t in tasks]
    else:
        from joblib import Parallel, delayed

        fitted = Parallel(n_jobs=n_jobs)(delayed(_fit_layer)(*t) for t in tasks)
    table = []
    for job, task, results in zip(weight_jobs, tasks, fitted):
        site = job.first
        points = []
        for config, (enc, rel_err, shift) in zip(task[1], results):
            enc = site.kind.stored_encoding(site, enc, fmt)
            stored = enc.code_bytes + enc.codebook_bytes
            if stored < site.weight_bytes:
                points.append(Point(config, enc, stored, rel_err, shift))
        if not points:
            raise ConfigError(f"no candidate setting makes {site.display_name!r} smaller than dense")
        table.append(points)
    return table


def choose(table: list[list[Point]], lam: float, gains: list[float]) -> list[int]:
    """Per job, the point minimizing (gain * error)^2 + lam * bytes."""
    return [min(range(len(p)), key=lambda i: ((g * p[i].rel_err) ** 2 + lam * p[i].stored_bytes, p[i].stored_bytes))
            for p, g in zip(table, gains)]


def lambda_for_size(table: list[list[Point]], gains: list[float], code_bytes: float) -> float:
    """The smallest lambda (most bytes, least error) whose choice stores at most ``code_bytes``."""
    def size(lam):
        return sum(p[i].stored_bytes for p, i in zip(table, choose(table, lam, gains)))

    lo, hi = 1e-18, 1.0
    while size(hi) > code_bytes and hi < 1e6:
        hi *= 10
    if size(lo) <= code_bytes:
        return lo
    for _ in range(80):  # bisection in log space
        mid = math.sqrt(lo * hi)
        lo, hi = (lo, mid) if size(mid) <= code_bytes else (mid, hi)
    return hi


def fill(table: list[list[Point]], gains: list[float], choice: list[int], target_bytes: int,
         size_of: Callable) -> list[int]:
    """Spend what the Lagrangian choice leaves under the target (its steps are discrete): upgrade
    layers, the largest weighted error cut per byte first, while the file still fits."""
    choice = list(choice)
    spare = target_bytes - size_of(choice)
    refused: set[tuple[int, int]] = set()  # upgrades whose decoders made the file too big
    for _ in range(FILL_TRIALS):
        if spare < 0:
            break
        best = None
        for j, (points, g) in enumerate(zip(table, gains)):
            now = points[choice[j]]
            for i, p in enumerate(points):
                extra = p.stored_bytes - now.stored_bytes
                cut = g * g * (now.rel_err ** 2 - p.rel_err ** 2)
                if (j, i) not in refused and extra <= spare + DECODER_SLACK and cut > 0 \
                        and (best is None or cut / max(extra, 1) > best[0]):
                    best = (cut / max(extra, 1), j, i)
        if best is None:
            break
        trial = list(choice)
        trial[best[1]] = best[2]
        size = size_of(trial)
        if size > target_bytes:
            refused.add((best[1], best[2]))
            continue
        choice, spare = trial, target_bytes - size
        refused.clear()
    return choice


def allocate(table: list[list[Point]], gains: list[float], budget: Budget, size_of: Callable, measure: Callable,
             say: Callable[[str], None] = lambda _m: None) -> Allocation:
    """Choose points for ``budget``. ``size_of(choice)``: bytes of the file the choice writes;
    ``measure(choice) -> {"top1_agreement", "cosine_mean"}`` on the calibration data."""
    history: list[dict[str, Any]] = []

    def trial(lam, choice=None):
        choice = choose(table, lam, gains) if choice is None else choice
        size, quality = size_of(choice), measure(choice)
        history.append({"lambda": lam, "file_bytes": size, **quality})
        say(f"lambda {lam:.3g}: file {size / 1e6:.3f} MB, top-1 agreement {quality['top1_agreement']:.4f}, "
            f"cosine {quality['cosine_mean']:.5f}")
        return choice, size, quality

    def done(choice, size, quality):
        return Allocation(choice, size, quality, history, list(gains))

    has_floor = budget.min_agreement is not None or budget.min_cosine is not None
    if budget.target_bytes is not None:
        lightest = [min(range(len(p)), key=lambda i: p[i].stored_bytes) for p in table]
        smallest = size_of(lightest)
        rest = smallest - sum(p[i].stored_bytes for p, i in zip(table, lightest))
        if budget.target_bytes < smallest:
            raise ConfigError(f"target size {budget.target_bytes} bytes is below the smallest file the candidate "
                              f"settings can write ({smallest} bytes)")
        code_bytes = budget.target_bytes - rest
        lam = lambda_for_size(table, gains, code_bytes)
        for _ in range(8):  # the decoders' own bytes vary a little with the choice: correct and resolve
            over = size_of(choose(table, lam, gains)) - budget.target_bytes
            if over <= 0:
                break
            code_bytes -= over
            lam = lambda_for_size(table, gains, code_bytes)
        while size_of(choose(table, lam, gains)) > budget.target_bytes and lam < 1e12:
            lam *= 2  # the lightest choice fits (checked above): get there
        choice = fill(table, gains, choose(table, lam, gains), budget.target_bytes, size_of)
        got = trial(lam, choice)
        steps = 0
        while has_floor and not budget.floor_holds(got[2]) and steps < BACKOFF_STEPS:
            lam /= 2  # back off: more bytes where they cut the most weighted error
            got = trial(lam)
            steps += 1
        return done(*got)
    # Floor only: bisect lambda for the smallest file that holds it.
    lo = 1e-18
    best = trial(lo)
    if not budget.floor_holds(best[2]):
        return done(*best)  # even the most accurate candidates miss it: say so, keep the best
    hi = lo
    while True:
        hi *= 100
        got = trial(hi)
        if not budget.floor_holds(got[2]):
            break
        best, lo = got, hi
        if hi > 1e3:
            return done(*best)
    for _ in range(BISECT_STEPS):
        mid = math.sqrt(lo * hi)
        got = trial(mid)
        if budget.floor_holds(got[2]):
            best, lo = got, mid
        else:
            hi = mid
    return done(*best)


def output_quality(reference: np.ndarray, candidate: np.ndarray) -> dict[str, float]:
    """Top-1 agreement (argmax over the last axis) and the mean per-input cosine of one output."""
    r = reference.reshape(reference.shape[0], -1).astype(np.float64)
    c = candidate.reshape(candidate.shape[0], -1).astype(np.float64)
    cos = np.sum(r * c, axis=1) / np.maximum(np.linalg.norm(r, axis=1) * np.linalg.norm(c, axis=1), 1e-30)
    last = reference.shape[-1] if reference.ndim > 1 else 1
    agree = float(np.mean(reference.reshape(-1, last).argmax(axis=1) == candidate.reshape(-1, last).argmax(axis=1)))
    return {"top1_agreement": agree, "cosine_mean": float(cos.mean())}


def chosen_config(weight_jobs, table, choice, plan) -> dict[str, Any]:
    """The choice as a config file: the plan's selection keys and one ``nodes`` entry per
    compressed node (reusable with --config; with the same --calibration it writes the same file)."""
    keep = ("include", "exclude", "min_elements", "seed", "format", "enabled_op_types", "protect", "matmul_runtime")
    settings = plan.to_dict()
    out: dict[str, Any] = {k: settings[k] for k in keep}
    out["nodes"] = {site.display_name: points[i].config.options()
                    for job, points, i in zip(weight_jobs, table, choice) for site in job.sites}
    return out


def run_budget(model: onnx.ModelProto, weight_jobs, calibration: dict[str, np.ndarray], budget: Budget, plan, *,
               n_jobs: int = 1, threads: int = 0, say: Callable[[str], None] = lambda _m: None):
    """Fit the candidates, weigh the layers, allocate, verify; returns (allocation, table)."""
    import copy
    import dataclasses
    import time

    from .compress import metadata_stamp, shift_site_bias
    from .evaluate import Dataset
    from .passes.rewrite import rewrite
    from .passes.sites import find_sites
    from .sweep import Layer, SweepRunner, stable_key

    fmt = plan.format
    start = time.perf_counter()
    say(f"fitting {sum(len(CANDIDATES[j.first.op_type]) for j in weight_jobs)} candidate settings "
        f"over {len(weight_jobs)} layers")
    table = rate_distortion(weight_jobs, fmt, n_jobs)
    say(f"fitted in {time.perf_counter() - start:.1f} s")
    layers = [Layer(stable_key(j.first), j.first.display_name, j.first.weight_array, j.seed,
                    j.first.in_features, j.first.out_features) for j in weight_jobs]
    samples = next(iter(calibration.values())).shape[0]

    def runner_on(count):
        feeds = {k: v[:count] for k, v in calibration.items()}
        return SweepRunner(model, layers, Dataset(feeds, None, count), threads=threads)

    full = runner_on(samples)

    def outputs(runner, picks):
        assignment = {layers[j].key: table[j][i].encoded for j, i in picks.items()}
        shifts = {layers[j].key: table[j][i].bias_shift for j, i in picks.items()}
        return runner.outputs(assignment, "dense", shifts)

    start = time.perf_counter()
    gains = layer_gains(table, runner_on(min(samples, PROBE_SAMPLES)), outputs, say)
    say(f"layer gains measured in {time.perf_counter() - start:.1f} s")

    def measure(choice):
        return output_quality(full.full.reference, outputs(full, dict(enumerate(choice))))

    params = {stable_key(s): dict(s.params) for j in weight_jobs for s in j.sites}
    sizes: dict[tuple, int] = {}  # the allocator asks for the same choice several times

    def size_of(choice):
        if tuple(choice) in sizes:
            return sizes[tuple(choice)]
        out = copy.deepcopy(model)
        picked = {layers[n].key: table[n][i] for n, i in enumerate(choice)}
        sites = [s for s in find_sites(out).sites if stable_key(s) in picked]
        for s in sites:  # how each Gemm/MatMul runs, as compress planned it, and its bias correction
            s.params.update(params.get(stable_key(s), {}))
            if picked[stable_key(s)].bias_shift is not None:
                shift_site_bias(s, picked[stable_key(s)].bias_shift)
        rewrite(out, sites, {s.weight_key: picked[stable_key(s)].encoded for s in sites}, fmt)
        # + the metadata stamp compress adds (exactly: the same function writes it)
        nodes = chosen_config(weight_jobs, table, choice, plan)["nodes"]
        stamp = metadata_stamp(dataclasses.replace(plan, nodes={**plan.nodes, **nodes}), nodes, True)
        sizes[tuple(choice)] = out.ByteSize() + len(stamp.encode()) + 16
        return sizes[tuple(choice)]

    return allocate(table, gains, budget, size_of, measure, say), table


#: Calibration inputs the per-layer sensitivity probe runs on (one model run per layer).
PROBE_SAMPLES = 64
#: The probe perturbs a layer by its candidate whose output error is nearest this (small enough to
#: stay in the linear regime, large enough to be measured above float noise).
PROBE_ERROR = 0.05


def layer_gains(table: list[list[Point]], runner, outputs: Callable, say) -> list[float]:
    """How much of a layer's relative output error reaches the model's output: each layer alone is
    replaced by one candidate, the model is run, and the output's relative error over the layer's
    gives its gain (the paper's per-layer sensitivity, Figure 4, as one number per layer)."""
    reference = runner.full.reference.astype(np.float64)
    norm = float(np.linalg.norm(reference)) or 1.0
    gains = []
    for j, points in enumerate(table):
        i = min(range(len(points)), key=lambda i: abs(math.log(max(points[i].rel_err, 1e-9) / PROBE_ERROR)))
        out = outputs(runner, {j: i})
        err = float(np.linalg.norm(out.astype(np.float64) - reference)) / norm
        gains.append(err / max(points[i].rel_err, 1e-9))
    say("layer gains (output error / layer error): " + ", ".join(f"{g:.2f}" for g in gains))
    return gains
