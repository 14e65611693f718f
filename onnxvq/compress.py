"""The compression job: plan which sites to compress, fit them (in parallel), rewrite the graph."""
from __future__ import annotations

import copy
import dataclasses
import json
import zlib
from dataclasses import dataclass, field

import numpy as np
import onnx

from . import __version__
from .config import MethodConfig, Plan
from .errors import ConfigError, InvalidWeights, NothingToCompress
from .passes.fold_bn import fold_batchnorm
from .passes.rewrite import rewrite
from .ops.schema import DOMAIN
from .passes.sites import Site, Skipped, find_sites, walk_graphs
from .quantizers import CodedWeight, LowRankWeight, quantize
from .quantizers.base import quantize_data_aware
from .quantizers.pruning import sparsity

METADATA_KEY = "onnxvq"
#: Weights larger than this (in magnitude) overflow float32 in fitting (squared distances) and in
#: the decoded products; no trained model has them.
MAX_WEIGHT_MAGNITUDE = 1e30


@dataclass
class WeightJob:
    """One weight to encode, and every site that reads it."""

    config: MethodConfig
    sites: list[Site]
    seed: int
    weight_rel_err: float | None = None  # ||W - W_hat||_F / ||W||_F, set once encoded
    stats: object | None = None          # calibration.LayerStats when fitted on calibration data
    calib_output_rel_err: float | None = None      # ||X dW|| / ||X W|| on the calibration statistics
    data_free_output_rel_err: float | None = None  # the same for the data-free fit
    sparsity: float | None = None        # share of exact zeros in W_hat (pruned layers only)

    @property
    def first(self) -> Site:
        return self.sites[0]


@dataclass
class CompressionResult:
    model: onnx.ModelProto
    jobs: list[WeightJob]
    encoded: dict[tuple, CodedWeight | LowRankWeight]
    skipped: list[Skipped] = field(default_factory=list)
    plan: Plan | None = None
    folded_batchnorms: list[tuple[str, str]] = field(default_factory=list)  # (conv, bn) node names
    allocation: object | None = None  # budget.Allocation in budget mode


def layer_seed(seed: int, weight_name: str) -> int:
    """Per-weight seed: independent of layer order and of --jobs."""
    return (seed * 1_000_003 + zlib.crc32(weight_name.encode())) % (2**31)


def protection(site: Site, plan: Plan) -> str | None:
    """Why the plan's protections keep ``site`` dense, or None."""
    if site.kind.name != "conv":
        return None
    if "depthwise" in plan.protect and site.params.get("depthwise"):
        return "depthwise conv kept dense by default (few, sensitive weights; `protect: []` compresses it)"
    if "first_conv" in plan.protect and site.params.get("reads_graph_input"):
        return "first conv (reads the model input) kept dense by `protect: [first_conv]`"
    return None


def activation_ranks(model: onnx.ModelProto) -> dict[str, int]:
    """Rank of every tensor shape inference can tell (main graph); empty when it cannot run."""
    try:
        inferred = onnx.shape_inference.infer_shapes(model, strict_mode=False)
    except Exception:  # noqa: BLE001 - too large, or a model inference rejects: ranks stay unknown
        return {}
    ranks = {}
    for v in (*inferred.graph.input, *inferred.graph.value_info, *inferred.graph.output):
        if v.type.HasField("tensor_type") and v.type.tensor_type.HasField("shape"):
            ranks[v.name] = len(v.type.tensor_type.shape.dim)
    return ranks


def matmul_runtime(site: Site, plan: Plan, ranks: dict[str, int]) -> str:
    """`op` (VQMatMul), `decode` (standard-op decoder, folded at load) or `auto` for a Gemm/MatMul site:
    auto is settled once the layout is known (MatMulKind.runs_on_op)."""
    if plan.matmul_runtime != "auto":
        return plan.matmul_runtime
    rank = 2 if site.op_type == "Gemm" else ranks.get(site.activation)
    return "decode" if rank is not None and rank >= 3 else "auto"


def plan_jobs(model: onnx.ModelProto, plan: Plan) -> tuple[list[WeightJob], list[Skipped]]:
    scan = find_sites(model, set(plan.enabled_op_types))
    if plan.format == "custom" and plan.matmul_runtime == "auto" \
            and any(s.kind.name == "matmul" and s.op_type == "MatMul" for s in scan.sites):
        ranks = activation_ranks(model) if model.ByteSize() < 1_800_000_000 else {}
    else:
        ranks = {}
    for site in scan.sites:
        if site.kind.name == "matmul":
            site.params["runtime"] = matmul_runtime(site, plan, ranks)
    skipped = list(scan.skipped)
    jobs: dict[tuple, WeightJob] = {}
    for site in scan.sites:
        def skip(reason: str) -> None:
            skipped.append(Skipped(site.display_name, site.op_type, site.graph_path, reason,
                                   site.weight.name, site.elements, site.weight_bytes))

        protected = protection(site, plan)
        if protected:
            skip(protected)
            continue
        if not plan.selected(site.display_name):
            skip("excluded by --include/--exclude")
            continue
        if site.elements < plan.min_elements:
            skip(f"{site.elements} weights < --min-elements {plan.min_elements}")
            continue
        config = plan.config_for(site.display_name, site.op_type)
        if config is None:
            skip("method 'skip' in the config")
            continue
        job = jobs.get(site.weight_key)
        if job is None:
            jobs[site.weight_key] = WeightJob(config, [site], layer_seed(plan.seed, site.weight.name))
        elif job.config != config:
            raise ConfigError(f"weight {site.weight.name!r} is shared by nodes {job.first.display_name!r} "
                              f"({job.config.options()}) and {site.display_name!r} ({config.options()}) "
                              f"with different configs; give them the same one")
        else:
            job.sites.append(site)
    for job in jobs.values():
        _check_finite(job.first)
    return list(jobs.values()), skipped


def _check_finite(site: Site) -> None:
    w = site.weight_array
    if not np.isfinite(w).all():
        bad = int(np.size(w) - np.isfinite(w).sum())
        raise InvalidWeights(f"weight {site.weight.name!r} of node {site.display_name!r} has {bad} NaN/Inf "
                             f"value(s); fix the model before compressing")
    peak = float(np.abs(w).max()) if w.size else 0.0
    if peak > MAX_WEIGHT_MAGNITUDE:
        raise InvalidWeights(f"weight {site.weight.name!r} of node {site.display_name!r} has values up to {peak:.3g}; "
                             f"beyond {MAX_WEIGHT_MAGNITUDE:.0e} fitting and float32 decoding overflow")
    if site.bias_array is not None and not np.isfinite(site.bias_array).all():
        raise InvalidWeights(f"bias {site.bias.name!r} of node {site.display_name!r} has NaN/Inf values")


def release_fit_cache(stats) -> None:
    """Drop the damped H and its factors a layer's fits shared (several K x K arrays per layer:
    kept for every layer they would dominate peak memory)."""
    stats.__dict__.pop("_fit_cache", None)


def corrects_bias(job: WeightJob) -> bool:
    """Bias correction needs one reader (each would need its own shift) whose kind can take one."""
    return len(job.sites) == 1 and job.first.kind.corrects_bias(job.first)


def apply_bias_shift(job: WeightJob, shift: np.ndarray | None) -> None:
    if shift is not None:
        shift_site_bias(job.first, shift)


def shift_site_bias(site: Site, shift: np.ndarray) -> None:
    """Make the rewrite add ``shift`` [N] to the node's bias (bias correction)."""
    if site.kind.name == "matmul":  # Gemm: the rewrite writes bias_array
        site.bias_array = (shift if site.bias_array is None else site.bias_array + shift).astype(np.float32)
    else:
        site.params["bias_shift"] = shift


def _encode(weight: np.ndarray, config: MethodConfig, seed: int, stats=None, correct_bias: bool = False):
    """Encode one weight; returns (encoding, (relative Frobenius error, sparsity), data-aware fit or None).
    Gets plain arrays, not graph objects, so parallel workers receive only the weight they fit."""
    fit = None
    if stats is None:
        encoded = quantize(weight, config, seed)
    else:
        fit = quantize_data_aware(weight, config, stats, seed, correct_bias)
        encoded = fit.encoded
        release_fit_cache(stats)
    return encoded, decoded_errors(weight, encoded), fit


def weight_error(weight: np.ndarray, encoded) -> float:
    """||W - W_hat||_F / ||W||_F."""
    return decoded_errors(weight, encoded)[0]


def decoded_errors(weight: np.ndarray, encoded) -> tuple[float, float | None]:
    """(||W - W_hat||_F / ||W||_F, share of exact zeros in W_hat for a pruned encoding, else None),
    from one decode."""
    norm = float(np.linalg.norm(weight))
    residual = encoded.decode()
    zeros = sparsity(residual) if getattr(encoded, "zero_codeword", False) else None
    residual -= weight  # in place: one extra copy of the layer, not three
    return (float(np.linalg.norm(residual)) / norm if norm > 0 else 0.0), zeros


def compress_model(model: onnx.ModelProto, plan: Plan, *, jobs: int = 1, progress: bool = False,
                   inplace: bool = False, calibration: dict[str, np.ndarray] | None = None,
                   budget=None, say=None) -> CompressionResult:
    """Compress ``model``: a copy by default; ``inplace=True`` rewrites the given model and saves the
    memory of a second copy (peak = the model plus a few copies of the largest layer).

    ``calibration`` (input name -> array, batch first): fit each layer to its output error on these
    inputs (fit.data_aware) instead of to its weights alone. ``budget`` (a budget.Budget, needs
    ``calibration``): choose each layer's setting to meet it (onnxvq.budget); ``say`` gets its log."""
    if any(node.domain == DOMAIN for graph, _ in walk_graphs(model.graph) for node in graph.node) \
            or any(p.key == METADATA_KEY for p in model.metadata_props):
        raise NothingToCompress("the model is already compressed by onnxvq; compress the original instead")
    if not inplace:
        model = copy.deepcopy(model)
    conv_types = {"Conv", "ConvTranspose"} & set(plan.enabled_op_types)
    folded = fold_batchnorm(model) if conv_types else []
    weight_jobs, skipped = plan_jobs(model, plan)
    if not weight_jobs:
        kinds = "/".join(plan.enabled_op_types)
        reasons = "; ".join(f"{s.display_name}: {s.reason}" for s in skipped[:5]) or f"it has no {kinds} weight"
        raise NothingToCompress(f"no layer to compress ({reasons})")
    if calibration is not None:
        import time

        start = time.perf_counter()
        attach_stats(model, weight_jobs, calibration, progress=progress)
        if say:
            say(f"calibration statistics of {len(weight_jobs)} layers collected in {time.perf_counter() - start:.1f} s")
    allocation = None
    if budget is not None:
        from .budget import chosen_config, run_budget

        if calibration is None:
            raise ConfigError("a size or quality budget needs --calibration data to measure it on")
        allocation, table = run_budget(model, weight_jobs, calibration, budget, plan, n_jobs=jobs,
                                       say=say or (lambda _m: None))
        allocation.config = chosen_config(weight_jobs, table, allocation.choice, plan)
        # Stamp the choice as node settings: `--config` with the saved choice writes the same file.
        plan = dataclasses.replace(plan, nodes={**plan.nodes, **allocation.config["nodes"]})
        results = []
        for job, points, i in zip(weight_jobs, table, allocation.choice):
            job.config = points[i].config
            results.append(_scored(job.first.weight_array, points[i], job.stats))
    else:
        results = _run_jobs(weight_jobs, jobs, progress)
    encoded, kept = {}, []
    for job, (enc, (err, zeros), fit) in zip(weight_jobs, results):
        if fit is not None:
            job.calib_output_rel_err, job.data_free_output_rel_err = fit.output_rel_err, fit.data_free_rel_err
            apply_bias_shift(job, fit.bias_shift)
        enc = job.first.kind.stored_encoding(job.first, enc, plan.format)
        stored, dense = enc.code_bytes + enc.codebook_bytes, job.first.weight_bytes
        if stored >= dense:  # e.g. 256-codeword PQ on a layer with few rows: codebooks outweigh it
            skipped.extend(Skipped(s.display_name, s.op_type, s.graph_path,
                                   f"{job.config.method} would store {stored} bytes, not fewer than the "
                                   f"dense {dense}; kept dense", s.weight.name, s.elements, s.weight_bytes)
                           for s in job.sites)
            continue
        job.sparsity = zeros
        if plan.entropy and isinstance(enc, CodedWeight):
            enc = enc.entropy_coded()  # unchanged where the tiered code would not be smaller
        encoded[job.first.weight_key] = enc
        job.weight_rel_err = err
        kept.append(job)
    weight_jobs = kept
    if not weight_jobs:
        raise NothingToCompress("no layer to compress: every encoding would be larger than its dense weight "
                                "(try fewer bits or a shared codebook)")
    sites = [site for job in weight_jobs for site in job.sites]
    rewrite(model, sites, encoded, plan.format)
    _stamp_metadata(model, plan, weight_jobs, calibrated=calibration is not None)
    return CompressionResult(model, weight_jobs, encoded, skipped, plan, folded, allocation)


def _scored(weight: np.ndarray, point, stats):
    """(encoding, weight error, fit record) for a budget.Point fitted during the allocation."""
    from .fit.data_aware import DataAwareFit

    fit = None if stats is None else DataAwareFit(point.encoded, point.rel_err, None, point.bias_shift)
    return point.encoded, decoded_errors(weight, point.encoded), fit


def attach_stats(model: onnx.ModelProto, weight_jobs: list[WeightJob], calibration: dict[str, np.ndarray], *,
                 progress: bool = False) -> None:
    """Collect each job's input statistics on the calibration inputs (jobs whose inputs cannot be
    observed, e.g. inside a subgraph, keep stats None and are fitted data-free)."""
    from .calibration import collect_stats

    stats = collect_stats(model, weight_jobs, calibration, progress=progress)
    for job in weight_jobs:
        job.stats = stats.get(job.first.weight_key)


def _run_jobs(weight_jobs: list[WeightJob], n_jobs: int, progress: bool):
    from tqdm.auto import tqdm

    total = sum(job.first.elements for job in weight_jobs)
    bar = tqdm(total=total, unit="w", unit_scale=True, desc="fitting",
                # None: tqdm shows the bar only on a terminal, so logs and CI stay clean
                disable=None if progress else True, leave=False)
    results = [None] * len(weight_jobs)
    # Largest first: the long pole starts early and parallel runs finish together.
    order = sorted(range(len(weight_jobs)), key=lambda i: -weight_jobs[i].first.elements)
    # Each weight is materialized only when its task starts (a generator), never all at once.
    tasks = ((weight_jobs[i].first.weight_array, weight_jobs[i].config, weight_jobs[i].seed, weight_jobs[i].stats,
              corrects_bias(weight_jobs[i])) for i in order)
    if n_jobs == 1:
        for i, task in zip(order, tasks):
            bar.set_postfix_str(weight_jobs[i].first.display_name[:40])
            results[i] = _encode(*task)
            bar.update(weight_jobs[i].first.elements)
    else:
        from joblib import Parallel, delayed

        outputs = Parallel(n_jobs=n_jobs, return_as="generator")(delayed(_encode)(*task) for task in tasks)
        for i, out in zip(order, outputs):
            results[i] = out
            bar.update(weight_jobs[i].first.elements)
    bar.close()
    return results


def metadata_stamp(plan: Plan, layers: dict[str, dict], calibrated: bool) -> str:
    """The JSON onnxvq stamps into the file: version, plan and every layer's settings."""
    stamp = {"version": __version__, "plan": plan.to_dict(), "layers": layers}
    if calibrated:  # only then: a data-free file stays byte-identical to earlier versions
        stamp["calibrated"] = True
    return json.dumps(stamp, sort_keys=True)


def _stamp_metadata(model: onnx.ModelProto, plan: Plan, weight_jobs: list[WeightJob], calibrated: bool) -> None:
    layers = {site.display_name: job.config.options() for job in weight_jobs for site in job.sites}
    for prop in list(model.metadata_props):
        if prop.key == METADATA_KEY:
            model.metadata_props.remove(prop)
    entry = model.metadata_props.add()
    entry.key, entry.value = METADATA_KEY, metadata_stamp(plan, layers, calibrated)
