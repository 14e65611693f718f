"""The paper's evaluation as one command: every method over a grid of settings, on a real model.

For each setting, all selected dense layers are compressed with it and the model is evaluated
(accuracy when the data has labels, top-1 agreement with the original always): Figure 3 of
Gong et al. 2014. Then each layer is compressed alone with each setting: Figure 4.

Fitting is done once per (layer, config) and cached; models are assembled from the cached
encodings with :func:`onnxvq.passes.rewrite.rewrite`. Evaluation runs only the part of the graph
that the compressed layers can change: the activations that feed it are computed once with the
original model ("truncation"), which makes a sweep over a conv net cost little more than its
dense head.
"""
from __future__ import annotations

import copy
import csv
import itertools
import json
import math
import os
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable

import numpy as np
import onnx
from onnx import helper, numpy_helper

from .config import DEFAULT_METHOD, SUPPORTED_OP_TYPES, MethodConfig, Plan, load_config_file, make_method_config
from .errors import ConfigError, OutputError
from .evaluate import Dataset, Evaluator
from .passes.rewrite import rewrite
from .passes.sites import Site, find_sites, walk_graphs

FLOAT_BYTES = 4

# The paper's grid (Gong et al. 2014, Figure 3): KM 1-5 bits, PQ with 8 centres (3 bits) and
# subvector length 1-4 on both axes, RQ, binarization, SVD at several ranks. "extra" adds the
# settings we consider for defaults (more centres, longer subvectors, float16 codebooks).
PAPER_GRID: list[dict[str, Any]] = [
    {"method": "kmeans", "bits": [1, 2, 3, 4, 5]},
    {"method": "pq", "bits": 3, "dim": [1, 2, 3, 4], "axis": ["in", "out"]},
    {"method": "rq", "bits": 3, "dim": 4, "stages": [2, 3], "axis": ["in", "out"]},
    {"method": "binary", "scaled": [True, False]},
    {"method": "svd", "ratio": [2, 4, 8, 16, 32]},
]
EXTRA_GRID: list[dict[str, Any]] = [
    {"method": "pq", "bits": 8, "dim": 4, "axis": ["in", "out"]},          # the current default
    {"method": "pq", "bits": 4, "dim": [4, 8], "axis": ["in", "out"]},
    {"method": "pq", "bits": [6, 8], "dim": [8, 16], "axis": "out"},
    {"method": "pq", "bits": 4, "dim": 4, "axis": "out", "codebook_dtype": "float16"},
    {"method": "kmeans", "bits": [2, 3], "group_size": 0, "codebook_dtype": "float16"},
]
GRID_KEYS = {"settings", "extra", "per_layer", "min_elements", "include", "exclude", "seed", "op_types"}


def expand(entries: Iterable[dict[str, Any]]) -> list[MethodConfig]:
    """Grid entries (option -> value or list of values) -> the distinct configs, in order."""
    configs: list[MethodConfig] = []
    for entry in entries:
        if not isinstance(entry, dict) or "method" not in entry:
            raise ConfigError(f"grid entry {entry!r} must be a mapping with a 'method'")
        keys = list(entry)
        values = [v if isinstance(v, list) else [v] for v in entry.values()]
        for combo in itertools.product(*values):
            options = dict(zip(keys, combo))
            if options["method"] == "skip":
                continue
            try:
                config = make_method_config(options)
            except ConfigError as exc:
                raise ConfigError(f"grid entry {options}: {exc}") from None
            if config not in configs:
                configs.append(config)
    if not configs:
        raise ConfigError("the grid holds no setting")
    return configs


@dataclass
class Grid:
    configs: list[MethodConfig]
    per_layer: bool | list[str] = True
    min_elements: int = 1024
    include: tuple[str, ...] = ()
    exclude: tuple[str, ...] = ()
    seed: int = 0
    op_types: tuple[str, ...] = SUPPORTED_OP_TYPES   # which site kinds the sweep compresses

    def per_layer_configs(self) -> list[MethodConfig]:
        if self.per_layer is True:
            return list(self.configs)
        if not self.per_layer:
            return []
        wanted = set(self.per_layer)
        return [c for c in self.configs if c.method in wanted or label(c) in wanted or family(c) in wanted]


def load_grid(path: str | Path | None = None) -> Grid:
    """The default grid (paper + extra), or one from a YAML/JSON file.

    File keys: ``settings`` (replaces the default list), ``extra`` (appended to it),
    ``per_layer`` (true, false, or a list of methods / families / labels), ``min_elements``,
    ``include``, ``exclude``, ``seed``.
    """
    data: dict[str, Any] = load_config_file(path) if path else {}
    unknown = sorted(set(data) - GRID_KEYS)
    if unknown:
        raise ConfigError(f"grid file {path}: unknown key(s) {unknown}; use {sorted(GRID_KEYS)}")
    entries = data.get("settings", PAPER_GRID + EXTRA_GRID)
    if not isinstance(entries, list):
        raise ConfigError(f"grid file {path}: 'settings' must be a list of mappings")
    extra = data.get("extra") or []
    if not isinstance(extra, list):
        raise ConfigError(f"grid file {path}: 'extra' must be a list of mappings")
    per_layer = data.get("per_layer", True)
    if not isinstance(per_layer, (bool, list)):
        raise ConfigError(f"grid file {path}: 'per_layer' must be true, false or a list")
    as_tuple = lambda v: (v,) if isinstance(v, str) else tuple(v or ())  # noqa: E731
    grid = Grid(expand(list(entries) + list(extra)), per_layer, int(data.get("min_elements", 1024)),
                as_tuple(data.get("include")), as_tuple(data.get("exclude")), int(data.get("seed", 0)),
                tuple(data.get("op_types") or SUPPORTED_OP_TYPES))
    return grid


def family(config: MethodConfig) -> str:
    """Curve a setting belongs to in the plots (one per method, per axis for PQ/RQ)."""
    o = config.options()
    if o["method"] in ("pq", "rq"):
        return f"{o['method']} {o['axis']}" + (f" b{o['bits']}" if o["method"] == "pq" else "")
    if o["method"] == "binary":
        return "binary"
    return o["method"]


def label(config: MethodConfig) -> str:
    o = config.options()
    m = o["method"]
    f16 = " f16" if o.get("codebook_dtype") == "float16" else ""
    if m == "pq":
        return f"pq b{o['bits']} d{o['dim']} {o['axis']}{f16}"
    if m == "rq":
        return f"rq b{o['bits']} d{o['dim']} t{o['stages']} {o['axis']}{f16}"
    if m == "kmeans":
        return f"kmeans b{o['bits']}" + (f" g{o['group_size']}" if o["group_size"] else "") + f16
    if m == "svd":
        return f"svd r{o['rank']}" if o["rank"] else f"svd x{o['ratio']:g}"
    if m == "binary":
        return "binary" + ("" if o["scaled"] else " ±1") + f16
    return m


# --------------------------------------------------------------------------------------------
# Layers and the encoding cache


def stable_key(site: Site) -> tuple:
    """Identifies a weight across copies of the model (Site.weight_key uses object ids)."""
    return (site.graph_path, site.weight.name, site.kind.name, site.kind.view_key(site))


@dataclass
class Layer:
    key: tuple
    name: str
    weight: np.ndarray
    seed: int
    in_features: int
    out_features: int
    stats: Any = None  # calibration.LayerStats: fit data-aware

    @property
    def elements(self) -> int:
        return int(self.weight.size)


def select_layers(model: onnx.ModelProto, grid: Grid, calibration: dict[str, np.ndarray] | None = None,
                  progress: bool = False) -> list[Layer]:
    from .compress import attach_stats, plan_jobs

    plan = Plan(global_options=dict(DEFAULT_METHOD), include=grid.include, exclude=grid.exclude,
                min_elements=grid.min_elements, seed=grid.seed, enabled_op_types=grid.op_types)
    jobs, _ = plan_jobs(model, plan)
    if calibration is not None and jobs:
        attach_stats(model, jobs, calibration, progress=progress)
    return [Layer(stable_key(j.first), j.first.display_name, j.first.weight_array, j.seed,
                  j.first.in_features, j.first.out_features, j.stats) for j in jobs]


def _fit(weight: np.ndarray, config: MethodConfig, seed: int, stats=None):
    from .quantizers import quantize
    from .quantizers.base import quantize_data_aware

    start = time.perf_counter()
    enc = quantize(weight, config, seed) if stats is None else quantize_data_aware(weight, config, stats, seed).encoded
    return enc, time.perf_counter() - start


class EncodingCache:
    """Encodings per (layer, config), fitted once; optionally in parallel (joblib)."""

    def __init__(self, layers: list[Layer], jobs: int = 1):
        self.layers = {layer.key: layer for layer in layers}
        self.jobs = jobs
        self.store: dict[tuple, Any] = {}
        self.seconds: dict[tuple, float] = {}
        self.errors: dict[tuple, float] = {}

    def fill(self, pairs: Iterable[tuple[tuple, MethodConfig]], progress=None) -> None:
        todo = [(k, c) for k, c in dict.fromkeys(pairs) if (k, c) not in self.store]
        todo.sort(key=lambda kc: -self.layers[kc[0]].elements)
        if self.jobs == 1 or len(todo) <= 1:
            outputs = (_fit(self.layers[k].weight, c, self.layers[k].seed, self.layers[k].stats) for k, c in todo)
        else:
            from joblib import Parallel, delayed

            outputs = Parallel(n_jobs=self.jobs, return_as="generator")(
                delayed(_fit)(self.layers[k].weight, c, self.layers[k].seed, self.layers[k].stats) for k, c in todo)
        for (k, c), (enc, seconds) in zip(todo, outputs):
            self.store[(k, c)] = enc
            self.seconds[(k, c)] = seconds
            w = self.layers[k].weight.astype(np.float64)
            self.errors[(k, c)] = float(np.sum((enc.decode().astype(np.float64) - w) ** 2))
            if progress:
                progress(f"fitted {label(c)} on {self.layers[k].name} in {seconds:.2f} s")

    def get(self, key: tuple, config: MethodConfig):
        if (key, config) not in self.store:
            self.fill([(key, config)])
        return self.store[(key, config)]


def build_model(model: onnx.ModelProto, assignment: dict[tuple, Any]) -> onnx.ModelProto:
    """A copy of ``model`` whose weights in ``assignment`` (stable key -> encoding) are replaced:
    exactly what ``onnxvq compress`` writes (VQMatMul nodes, or two MatMuls for SVD)."""
    out = copy.deepcopy(model)
    sites = [s for s in find_sites(out).sites if stable_key(s) in assignment]
    encoded = {s.weight_key: assignment[stable_key(s)] for s in sites}
    rewrite(out, sites, encoded, "custom")
    return out


def build_decoded_model(model: onnx.ModelProto, assignment: dict[tuple, Any],
                        bias_shifts: dict[tuple, np.ndarray] | None = None) -> onnx.ModelProto:
    """The dense twin: same graph, each weight in ``assignment`` replaced by its decoded W_hat.

    Computes what the compressed model computes (the op decodes the same W_hat; see ``check``),
    with onnxruntime's dense GEMM instead of the custom kernel: a fast way to score many settings.
    ``bias_shifts`` (stable key -> [N]): bias corrections, added to the (Conv or Gemm) node's bias.
    """
    out = copy.deepcopy(model)
    done: set[tuple] = set()
    for site in find_sites(out).sites:
        key = stable_key(site)
        if key not in assignment or key in done:
            continue
        done.add(key)
        stored = site.stored_weight(assignment[key].decode())   # the tensor's own shape, float32
        dtype = onnx.helper.tensor_dtype_to_np_dtype(site.weight.tensor.data_type)
        site.weight.tensor.CopyFrom(numpy_helper.from_array(stored.astype(dtype), site.weight.tensor.name))
        if bias_shifts and bias_shifts.get(key) is not None:
            _shift_bias(site, bias_shifts[key])
    return out


def _shift_bias(site: Site, shift: np.ndarray) -> None:
    """Point the node's bias input at (its bias + shift), a new initializer."""
    from .passes.sites import attr

    n_out = shift.shape[0]
    scale = float(attr(site.node, "beta", 1.0)) if site.op_type == "Gemm" else 1.0
    base = np.zeros(n_out, np.float32) if site.bias is None else \
        np.broadcast_to(site.bias.float32().reshape(-1), (n_out,))
    name = f"{site.weight.name}.shifted_bias"
    site.graph.initializer.append(numpy_helper.from_array((base + shift / scale).astype(np.float32), name))
    while len(site.node.input) < 3:
        site.node.input.append("")
    site.node.input[2] = name


# --------------------------------------------------------------------------------------------
# Truncation: evaluate only what the compressed layers can change


def _subgraph_names(node: onnx.NodeProto) -> set[str]:
    names: set[str] = set()
    for a in node.attribute:
        for g in ([a.g] if a.type == onnx.AttributeProto.GRAPH else list(a.graphs)):
            for sub, _ in walk_graphs(g):
                for n in sub.node:
                    names.update(n.input)
    return names


def _reads(node: onnx.NodeProto) -> set[str]:
    return {i for i in node.input if i} | _subgraph_names(node)


@dataclass
class Truncation:
    """The frozen part of a model (not downstream of any compressed layer), computed once."""

    frozen: set[str]                      # tensors produced by frozen nodes
    values: dict[str, np.ndarray]         # frozen tensors (and graph inputs) that live nodes read
    outputs: list[str]                    # graph outputs that live nodes produce

    def cut(self, model: onnx.ModelProto) -> bytes:
        """``model`` (a rewritten copy) without its frozen nodes; frozen tensors become inputs."""
        g = model.graph
        kept = [n for n in g.node if not (n.output and all(o in self.frozen for o in n.output))]
        produced = {o for n in kept for o in n.output}
        read = set().union(*(_reads(n) for n in kept)) if kept else set()
        inits = [t for t in g.initializer if t.name in read and t.name not in produced]
        init_names = {t.name for t in inits}
        feeds = [name for name in self.values if name in read and name not in produced and name not in init_names]
        inputs = [helper.make_tensor_value_info(
            name, helper.np_dtype_to_tensor_dtype(self.values[name].dtype), [None] * self.values[name].ndim)
            for name in feeds]
        outputs = [o for o in g.output if o.name in self.outputs]
        graph = helper.make_graph(kept, g.name, inputs, outputs, inits)
        graph.sparse_initializer.extend(s for s in g.sparse_initializer if s.values.name in read)
        small = helper.make_model(graph, opset_imports=list(model.opset_import))
        small.ir_version = model.ir_version
        small.functions.extend(model.functions)
        return small.SerializeToString()


def plan_truncation(model: onnx.ModelProto, layers: list[Layer]) -> tuple[set[str], list[str], list[str]] | None:
    """(frozen tensors, tensors to precompute, live graph outputs); None when it does not apply."""
    keys = {layer.key for layer in layers}
    sites = [s for s in find_sites(model).sites if stable_key(s) in keys]
    if not sites or any(s.graph is not model.graph for s in sites):
        return None  # layers inside subgraphs: evaluate the whole model
    site_nodes = {id(s.node) for s in sites}
    live: set[str] = set()
    frozen: set[str] = set()
    for node in model.graph.node:
        if id(node) in site_nodes or (_reads(node) & live):
            live.update(node.output)
        else:
            frozen.update(node.output)
    inputs = {i.name for i in model.graph.input}
    inits = {t.name for t in model.graph.initializer}
    needed: set[str] = set()
    for node in model.graph.node:
        if node.output and all(o in frozen for o in node.output):
            continue
        needed |= {n for n in _reads(node) if (n in frozen or n in inputs) and n not in inits}
    live_outputs = [o.name for o in model.graph.output if o.name in live]
    return frozen, sorted(needed), live_outputs


class SweepRunner:
    """Evaluates models built from cached encodings, on the truncated graph when possible."""

    def __init__(self, model: onnx.ModelProto, layers: list[Layer], dataset: Dataset, *, output: str | None = None,
                 batch_size: int = 256, threads: int = 0, truncate: bool = True, runtime: str = "dense"):
        from .evaluate import _fixed_batch

        if runtime not in ("dense", "custom"):
            raise ConfigError(f"runtime must be 'dense' or 'custom', got {runtime!r}")
        self.runtime = runtime
        self.model = model
        self.layers = layers
        self.reference_model = model
        start = time.perf_counter()
        self.full = Evaluator.for_model(model, dataset, output=output, batch_size=batch_size, threads=threads)
        self.baseline = dict(self.full.baseline)
        self.output_name = output or [o.name for o in model.graph.output][0]
        self.truncation = None
        self.evaluator = self.full
        plan = plan_truncation(model, layers) if truncate else None
        if plan is not None and self.output_name in plan[2]:
            frozen, needed, live_outputs = plan
            values = self._precompute(model, dataset, needed, batch_size, threads, _fixed_batch(model))
            if values is not None:
                self.truncation = Truncation(frozen, values, live_outputs)
                small = Dataset(dict(values), dataset.labels, dataset.samples)
                self.evaluator = Evaluator(small, self.full.reference, self.output_name, batch_size, threads, None)
        self.setup_seconds = time.perf_counter() - start

    @staticmethod
    def _precompute(model, dataset, needed, batch_size, threads, fixed_batch) -> dict[str, np.ndarray]:
        from .evaluate import make_session

        values = {n: dataset.feeds[n] for n in needed if n in dataset.feeds}
        extra = [n for n in needed if n not in dataset.feeds]
        if not extra:
            return values
        m = copy.deepcopy(model)
        existing = {o.name for o in m.graph.output}
        for name in extra:
            if name not in existing:
                m.graph.output.append(helper.make_empty_tensor_value_info(name))
        sess = make_session(m, "original", threads)
        step = fixed_batch or batch_size
        parts: dict[str, list[np.ndarray]] = {n: [] for n in extra}
        for start in range(0, dataset.samples, step):
            got = sess.run(extra, {k: v[start:start + step] for k, v in dataset.feeds.items()})
            rows = min(step, dataset.samples - start)
            for n, arr in zip(extra, got):
                if arr.ndim == 0 or arr.shape[0] != rows:
                    return None  # e.g. a shape computed from the input: not batch-major, cannot be cut
                parts[n].append(arr)
        values.update({n: np.concatenate(p, axis=0) for n, p in parts.items()})
        return values

    def evaluate(self, assignment: dict[tuple, Any], runtime: str | None = None) -> dict[str, Any]:
        """Scores of the model with ``assignment`` applied (on the dense twin unless runtime='custom')."""
        runtime = runtime or self.runtime
        build = build_model if runtime == "custom" or self._low_rank_only(assignment) is None else build_decoded_model
        model = build(self.model, assignment)
        if self.truncation is not None:
            return self.evaluator.evaluate(self.truncation.cut(model))
        return self.full.evaluate(model)

    def outputs(self, assignment: dict[tuple, Any], runtime: str,
                bias_shifts: dict[tuple, np.ndarray] | None = None) -> np.ndarray:
        if runtime == "custom":
            model = build_model(self.model, assignment)
        else:
            model = build_decoded_model(self.model, assignment, bias_shifts)
        if self.truncation is not None:
            return self.evaluator.predict(self.truncation.cut(model))
        return self.full.predict(model)

    @staticmethod
    def _low_rank_only(assignment: dict[tuple, Any]):
        """SVD results run as two standard MatMuls either way: evaluate the real graph (None)."""
        from .quantizers import LowRankWeight

        return None if all(isinstance(e, LowRankWeight) for e in assignment.values()) else True


# --------------------------------------------------------------------------------------------
# The sweep


def _ratio(num: float, den: float) -> float | None:
    return num / den if den else None


def _sizes(layers: list[Layer], encs: list[Any], biases: dict[tuple, int]) -> dict[str, Any]:
    original = sum(layer.elements * FLOAT_BYTES for layer in layers)
    codes = sum(e.code_bytes for e in encs)
    books = sum(e.codebook_bytes for e in encs)
    bias = sum(biases.get(layer.key, 0) for layer in layers)
    return {"dense_original_bytes": original, "code_bytes": codes, "codebook_bytes": books,
            "dense_ratio": _ratio(original, codes + books),
            "dense_ratio_with_bias": _ratio(original + bias, codes + books + bias),
            "bits_per_weight": 8 * (codes + books) / max(1, sum(layer.elements for layer in layers))}


@dataclass
class SweepResult:
    model: str
    data: str
    baseline: dict[str, Any]
    layers: list[dict[str, Any]]
    rows: list[dict[str, Any]] = field(default_factory=list)
    per_layer: list[dict[str, Any]] = field(default_factory=list)
    plots: list[str] = field(default_factory=list)
    plots_skipped: str | None = None
    op_check: dict[str, Any] | None = None
    seconds: dict[str, float] = field(default_factory=dict)
    calibrated: bool = False  # fitted data-aware (--calibration)

    @property
    def metric(self) -> str:
        return "top1" if self.baseline.get("top1") is not None else "top1_agreement"

    def to_dict(self) -> dict[str, Any]:
        return {"model": self.model, "data": self.data, "metric": self.metric, "baseline": self.baseline,
                "layers": self.layers, "rows": self.rows, "per_layer": self.per_layer, "plots": self.plots,
                "plots_skipped": self.plots_skipped, "op_check": self.op_check, "seconds": self.seconds,
                "calibrated": self.calibrated,
                "pareto": pareto(self.rows, self.metric)}


def pareto(rows: list[dict[str, Any]], metric: str) -> list[str]:
    """Labels of the settings no other setting beats on both dense ratio and ``metric``."""
    pts = [(r["dense_ratio"] or 0, r.get(metric) if r.get(metric) is not None else -1, r["label"]) for r in rows]
    best = []
    for ratio, score, name in pts:
        if not any((o_r >= ratio and o_s >= score) and (o_r > ratio or o_s > score) for o_r, o_s, _ in pts):
            best.append(name)
    return best


def run_sweep(model: onnx.ModelProto, dataset: Dataset, grid: Grid, *, model_name: str = "model",
              data_name: str = "data", jobs: int = 1, output: str | None = None, batch_size: int = 256,
              truncate: bool = True, runtime: str = "dense", op_check: bool = True, progress=None,
              calibration: dict[str, np.ndarray] | None = None) -> SweepResult:
    say = progress or (lambda _msg: None)
    t0 = time.perf_counter()
    if {"Conv", "ConvTranspose"} & set(grid.op_types):
        from .passes.fold_bn import fold_batchnorm

        model = copy.deepcopy(model)
        if fold_batchnorm(model):  # as compress does: quantize the weights the model really uses
            say("folded BatchNormalization nodes into their convolutions")
    layers = select_layers(model, grid, calibration)
    if calibration is not None:
        say(f"fitting data-aware on {next(iter(calibration.values())).shape[0]} calibration inputs")
    if not layers:
        from .errors import NothingToCompress

        raise NothingToCompress(f"no dense layer with >= {grid.min_elements} weights to sweep")
    biases = {}
    for s in find_sites(model).sites:
        if s.bias_array is not None:
            biases.setdefault(stable_key(s), s.bias_array.size * FLOAT_BYTES)
    original_file = len(model.SerializeToString())
    all_weights = sum(t.ByteSize() for g, _ in walk_graphs(model.graph) for t in g.initializer)
    runner = SweepRunner(model, layers, dataset, output=output, batch_size=batch_size,
                         threads=max(1, jobs) if jobs > 0 else 0, truncate=truncate, runtime=runtime)
    say(f"original evaluated in {runner.baseline['eval_seconds']:.2f} s"
        + (" (sweep runs the truncated graph)" if runner.truncation else ""))
    dense_bytes = sum(layer.elements * FLOAT_BYTES for layer in layers)
    baseline = {**runner.baseline, "file_bytes": original_file, "dense_bytes": dense_bytes,
                "initializer_bytes": all_weights, "dense_share": dense_bytes / all_weights if all_weights else None,
                "max_file_ratio": (original_file / (original_file - dense_bytes)) if original_file > dense_bytes else None}
    layer_info = [{"name": layer.name, "weight": layer.key[1], "in_features": layer.in_features,
                   "out_features": layer.out_features, "elements": layer.elements} for layer in layers]
    result = SweepResult(model_name, data_name, baseline, layer_info, calibrated=calibration is not None)

    cache = EncodingCache(layers, jobs)
    per_layer_configs = grid.per_layer_configs()
    t_fit = time.perf_counter()
    cache.fill([(layer.key, c) for c in grid.configs for layer in layers], progress=say)
    result.seconds["fit"] = time.perf_counter() - t_fit

    t_eval = time.perf_counter()
    w_norm = sum(float(np.sum(layer.weight.astype(np.float64) ** 2)) for layer in layers)
    for config in grid.configs:
        encs = [cache.get(layer.key, config) for layer in layers]
        assignment = {layer.key: enc for layer, enc in zip(layers, encs)}
        scores = runner.evaluate(assignment)
        built = build_model(model, assignment)
        sq_err = sum(cache.errors[(layer.key, config)] for layer in layers)
        row = {"kind": "model", "layer": "(all)", "label": label(config), "family": family(config),
               "method": config.method, "settings": config.options(),
               **_sizes(layers, encs, biases),
               "file_bytes": len(built.SerializeToString()),
               "weight_rel_err": math.sqrt(sq_err / w_norm) if w_norm else 0.0,
               "fit_seconds": sum(cache.seconds[(layer.key, config)] for layer in layers), **scores}
        row["file_ratio"] = _ratio(original_file, row["file_bytes"])
        result.rows.append(row)
        say(_row_line(row))
    if len(layers) > 1 and per_layer_configs:
        for layer in layers:
            for config in per_layer_configs:
                enc = cache.get(layer.key, config)
                scores = runner.evaluate({layer.key: enc})
                w2 = float(np.sum(layer.weight.astype(np.float64) ** 2))
                row = {"kind": "layer", "layer": layer.name, "label": label(config), "family": family(config),
                       "method": config.method, "settings": config.options(), **_sizes([layer], [enc], biases),
                       "weight_rel_err": math.sqrt(cache.errors[(layer.key, config)] / w2) if w2 else 0.0,
                       "fit_seconds": cache.seconds[(layer.key, config)], **scores}
                result.per_layer.append(row)
            say(f"per-layer runs done for {layer.name}")
    result.seconds["eval"] = time.perf_counter() - t_eval
    if op_check and runtime == "dense":
        result.op_check = _op_check(runner, layers, cache, grid.configs, say)
    result.seconds["total"] = time.perf_counter() - t0
    return result


def _op_check(runner: SweepRunner, layers: list[Layer], cache: EncodingCache, configs: list[MethodConfig],
              say) -> dict[str, Any] | None:
    """The sweep scores dense twins; run one coded setting through the real VQMatMul op to show they agree."""
    from .quantizers import CodedWeight

    coded = [c for c in configs if isinstance(cache.get(layers[0].key, c), CodedWeight)]
    if not coded:
        return None
    default = make_method_config(DEFAULT_METHOD)
    config = default if default in coded else coded[0]
    assignment = {layer.key: cache.get(layer.key, config) for layer in layers}
    start = time.perf_counter()
    twin = runner.outputs(assignment, "dense")
    real = runner.outputs(assignment, "custom")
    diff = np.abs(real.astype(np.float64) - twin)
    from .evaluate import agreement

    check = {"setting": label(config), "max_abs_diff": float(diff.max()),
             "max_abs_output": float(np.abs(twin).max()),
             "top1_agreement": agreement(twin, real)["top1_agreement"],
             "custom_op_seconds": time.perf_counter() - start}
    say(f"custom op vs dense twin ({check['setting']}): max |diff| {check['max_abs_diff']:.3g}, "
        f"top-1 agreement {check['top1_agreement']:.4f}")
    return check


def _fmt(v, spec=".4f") -> str:
    return "-" if v is None else format(v, spec)


def _row_line(row: dict[str, Any]) -> str:
    return (f"{row['label']:<22} dense {_fmt(row['dense_ratio'], '.1f')}x file {_fmt(row.get('file_ratio'), '.2f')}x "
            f"top1 {_fmt(row.get('top1'))} agree {_fmt(row.get('top1_agreement'))}")


# --------------------------------------------------------------------------------------------
# Writing: CSV, JSON, plots

CSV_COLUMNS = ["kind", "layer", "label", "family", "method", "bits", "dim", "axis", "stages", "rank", "ratio",
               "scaled", "group_size", "codebook_dtype", "dense_ratio", "dense_ratio_with_bias", "bits_per_weight",
               "code_bytes", "codebook_bytes", "dense_original_bytes", "file_bytes", "file_ratio", "weight_rel_err",
               "output_rel_err", "top1", "top5", "correct", "labeled", "samples", "top1_agreement",
               "top5_agreement", "fit_seconds", "eval_seconds"]


def _atomic_write(path: Path, write) -> None:
    try:
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
        with os.fdopen(fd, "w", newline="") as f:
            write(f)
        os.chmod(tmp, 0o644)
        os.replace(tmp, path)
    except OSError as exc:
        raise OutputError(f"{path}: cannot write: {exc.strerror or exc}") from None


def _json_default(value):
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, tuple):
        return list(value)
    raise TypeError(f"not JSON serializable: {type(value).__name__}")


def write_outputs(result: SweepResult, out_dir: str | Path, *, plots: bool = True) -> dict[str, str]:
    out = Path(out_dir)
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise OutputError(f"{out}: cannot create the output folder: {exc.strerror or exc}") from None
    files = {}
    if plots:
        try:
            result.plots = make_plots(result, out)
        except ImportError:
            result.plots_skipped = "matplotlib is not installed (pip install matplotlib); CSV and JSON written"
    else:
        result.plots_skipped = "plots disabled"

    def write_csv(f):
        w = csv.DictWriter(f, fieldnames=CSV_COLUMNS, extrasaction="ignore")
        w.writeheader()
        base = {"kind": "baseline", "layer": "(none)", "label": "original", "family": "original",
                "method": "none", "dense_ratio": 1.0, "file_ratio": 1.0, "file_bytes": result.baseline["file_bytes"],
                **{k: result.baseline.get(k) for k in ("top1", "top5", "correct", "labeled", "samples")},
                "top1_agreement": 1.0}
        w.writerow(base)
        for row in result.rows + result.per_layer:
            flat = {**row, **{k: v for k, v in row["settings"].items() if k != "method"}}
            w.writerow({k: (f"{v:.6g}" if isinstance(v, float) else v) for k, v in flat.items()})

    _atomic_write(out / "sweep.csv", write_csv)
    _atomic_write(out / "sweep.json", lambda f: json.dump(result.to_dict(), f, indent=1, default=_json_default))
    files["csv"] = str(out / "sweep.csv")
    files["json"] = str(out / "sweep.json")
    return files


_STYLE = {"kmeans": ("o", "-"), "binary": ("s", ""), "svd": ("^", "-"), "rq in": ("v", "--"), "rq out": ("v", "-")}


def _plot_family_lines(ax, rows: list[dict[str, Any]], metric: str, colors: dict[str, Any]) -> None:
    fams: dict[str, list[dict[str, Any]]] = {}
    for r in rows:
        if r.get(metric) is not None and r.get("dense_ratio"):
            fams.setdefault(r["family"], []).append(r)
    for fam, rs in sorted(fams.items()):
        rs = sorted(rs, key=lambda r: r["dense_ratio"])
        marker, line = _STYLE.get(fam, ("D" if "out" in fam else "x", "--" if " in" in fam else "-"))
        ax.plot([r["dense_ratio"] for r in rs], [100 * r[metric] for r in rs], marker=marker, color=colors[fam],
                linestyle=line or "none", label=fam, markersize=4, linewidth=1)


def _colors(rows: list[dict[str, Any]]) -> dict[str, Any]:
    import matplotlib

    fams = sorted({r["family"] for r in rows})
    cmap = matplotlib.colormaps["tab20"]
    return {f: cmap(i % 20) for i, f in enumerate(fams)}


def make_plots(result: SweepResult, out: Path) -> list[str]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    written = []
    metric = result.metric
    name = "top-1 accuracy (%)" if metric == "top1" else "top-1 agreement with original (%)"
    base = 100 * (result.baseline.get("top1") if metric == "top1" else 1.0)
    colors = _colors(result.rows + result.per_layer)
    # Second panel: a zoom near the original, or agreement when there are too few labels to zoom.
    few_labels = metric == "top1" and (result.baseline.get("labeled") or 0) < 200
    panels = [(metric, name, base, False),
              ("top1_agreement", "top-1 agreement with original (%)", 100.0, False) if few_labels
              else (metric, name, base, True)]
    fig, axes = plt.subplots(1, 2, figsize=(12.4, 4.4), squeeze=False)
    stem = Path(result.model).stem
    for ax, (m, ylabel, ref, zoom) in zip(axes[0], panels):
        _plot_family_lines(ax, result.rows, m, colors)
        ax.axhline(ref, color="gray", linestyle=":", linewidth=1, label="original")
        ax.set_xscale("log", base=2)
        ax.set_xlabel("dense-layer compression rate (codebooks counted)")
        ax.set_ylabel(ylabel)
        ax.grid(True, alpha=0.3)
        if zoom:
            top = max([100 * r[m] for r in result.rows if r.get(m) is not None] + [ref])
            ax.set_ylim(ref - 5, min(100.5, top + 0.5))
            ax.set_title(f"{stem}: zoom to original - 5 pp")
        else:
            ax.set_title(f"{stem}: all dense layers compressed" + (f" ({result.baseline.get('labeled')} labeled)"
                                                                  if m == "top1" else ""))
    axes[0][0].legend(fontsize=7, loc="lower left", ncol=2)
    fig.tight_layout()
    path = out / "accuracy_vs_rate.png"
    fig.savefig(path, dpi=80)
    plt.close(fig)
    written.append(str(path))

    if result.per_layer:
        names = [layer["name"] for layer in result.layers]
        cols = min(3, len(names))
        nrows = -(-len(names) // cols)
        fig, axes = plt.subplots(nrows, cols, figsize=(5.2 * cols, 3.8 * nrows), squeeze=False)
        for i, lname in enumerate(names):
            ax = axes[i // cols][i % cols]
            _plot_family_lines(ax, [r for r in result.per_layer if r["layer"] == lname], metric, colors)
            ax.axhline(base, color="gray", linestyle=":", linewidth=1)
            ax.set_xscale("log", base=2)
            short = lname if len(lname) < 40 else "…" + lname[-38:]
            ax.set_title(f"only {short}", fontsize=9)
            ax.set_xlabel("layer compression rate")
            ax.set_ylabel(name, fontsize=8)
            ax.grid(True, alpha=0.3)
        for j in range(len(names), nrows * cols):
            axes[j // cols][j % cols].axis("off")
        axes[0][0].legend(fontsize=6, loc="lower left", ncol=2)
        fig.tight_layout()
        path = out / "per_layer.png"
        fig.savefig(path, dpi=70)
        plt.close(fig)
        written.append(str(path))
    return written


def replot(json_path: str | Path, out_dir: str | Path | None = None) -> list[str]:
    """Redraw the plots of a finished sweep from its sweep.json."""
    d = json.loads(Path(json_path).read_text())
    result = SweepResult(d["model"], d["data"], d["baseline"], d["layers"], d["rows"], d["per_layer"])
    return make_plots(result, Path(out_dir or Path(json_path).parent))


def summary_table(result: SweepResult) -> str:
    from .report import format_table

    metric = result.metric
    rows = [["original", "1.0x", "1.00x", _fmt(result.baseline.get("top1")), "1.0000", "-"]]
    best = set(pareto(result.rows, metric))
    for r in sorted(result.rows, key=lambda r: r["dense_ratio"] or 0):
        rows.append([r["label"] + (" *" if r["label"] in best else ""), f"{r['dense_ratio']:.1f}x",
                     f"{r['file_ratio']:.2f}x", _fmt(r.get("top1")), _fmt(r.get("top1_agreement")),
                     f"{r['weight_rel_err']:.3f}"])
    return format_table(["setting (* = pareto)", "dense", "file", "top1", "agree", "w err"], rows)
