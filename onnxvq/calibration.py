"""Calibration statistics: what each compressed weight's input looks like on real data.

A data-aware fit (GPTQ-style) minimises ||X (W - W_hat)||^2 = tr(dW^T H dW) with H = X^T X over the
rows X the weight multiplies: a MatMul/Gemm's activation rows, a convolution's im2col patches. This
module runs the original model on calibration samples and accumulates, per weight and in its matrix
view W[K, N] (passes/kinds/), the mean of x x^T and the mean row over a bounded random subset of rows.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import onnx
from numpy.lib.stride_tricks import sliding_window_view
from onnx import numpy_helper

from .check import _with_outputs, graph_inputs, open_session, run
from .errors import ConfigError, InvalidModel
from .evaluate import _fixed_batch
from .passes.sites import attr


#: Layers with more inputs than this get no statistics (and a data-free fit): their H and the
#: fit's factors would take K^2 * 8 bytes each.
MAX_HESSIAN_INPUTS = 8192


@dataclass
class LayerStats:
    """Input statistics of one weight, in its matrix view W[K, N]."""

    hessian: np.ndarray | None   # [G, K, K] float64: mean of x x^T over calibration rows (None for Gather)
    mean: np.ndarray | None      # [G, K] float64: mean input row (None for Gather)
    rows: int                    # calibration rows accumulated (per group)
    row_weights: np.ndarray | None = None  # [N] float64, Gather only: share of lookups that read each table row
    diagonal: bool = False       # True when only the diagonal is estimated (ConvTranspose): off-diagonal entries are 0


def collect_stats(model: onnx.ModelProto, jobs: list, feeds: dict[str, np.ndarray], *, batch_size: int = 8,
                  max_rows: int = 32768, seed: int = 0, progress: bool = False) -> dict[tuple, LayerStats]:
    """Run ``model`` (ONNX Runtime, CPU) on ``feeds`` in batches and return {job.first.weight_key: LayerStats}.

    ``feeds`` hold the samples along axis 0 (0-d arrays go to every batch unchanged); a model whose
    inputs fix the batch dimension to B runs in batches of B, leaving out a trailing partial batch.
    Each layer keeps at most ``max_rows`` rows over the whole set (shared by the sites of a shared
    weight): every batch gets a quota in proportion to its samples and draws its rows uniformly at
    random without replacement (deterministic for ``seed``). Gather counts every lookup.

    Jobs with a site whose input is computed inside a subgraph (If/Loop/Scan bodies), or is no input,
    initializer or node output of the main graph, and layers of more than MAX_HESSIAN_INPUTS inputs
    get no entry: the caller fits those data-free.
    """
    if not (isinstance(batch_size, (int, np.integer)) and batch_size >= 1
            and isinstance(max_rows, (int, np.integer)) and max_rows >= 1):
        raise ConfigError(f"calibration needs batch_size >= 1 and max_rows >= 1, got {batch_size} and {max_rows}")
    inputs = {v.name for v in graph_inputs(model)}
    missing = sorted(inputs - set(feeds))
    if missing:
        raise InvalidModel(f"the calibration data has no array for model input(s) {missing}")
    feeds = {k: v for k, v in feeds.items() if k in inputs}
    samples = _sample_count(feeds)
    fixed = _fixed_batch(model)
    step = fixed or batch_size
    used = samples - samples % fixed if fixed else samples
    if used == 0:
        raise InvalidModel(f"the model's inputs fix the batch to {fixed}; calibration needs at least {fixed} "
                           f"samples, got {samples}")
    initializers = {t.name: t for t in model.graph.initializer if t.name not in inputs}
    available = inputs | set(initializers) | {name for node in model.graph.node for name in node.output}
    sources: dict[tuple, _Source] = {}
    plans = []
    for job in jobs:
        if not all(s.graph_path == "main" and s.activation in available for s in job.sites):
            continue
        if job.first.kind.name != "gather" and job.first.shape[0] > MAX_HESSIAN_INPUTS:
            continue  # H alone would be K^2 * 8 bytes (5 GB for a 25088-input layer): fitted data-free
        budget = max(1, max_rows // len(job.sites))
        keys = []
        for site in job.sites:
            key = _Source.key(site, budget)
            if key not in sources:  # e.g. Q/K/V projections of one activation: its rows are drawn once
                sources[key] = _Source(site, budget, used, np.random.default_rng([seed, len(sources)]))
            keys.append(key)
        plans.append((job, keys))
    if not plans:
        return {}

    needed = {s.activation for s in sources.values()}
    # A constant input (e.g. position ids) is the same in every batch: read it once.
    constants = {name: numpy_helper.to_array(initializers[name]) for name in needed & set(initializers)}
    fetch = sorted(needed - inputs - set(constants))
    session = open_session(_with_outputs(model, fetch), "original") if fetch else None
    from tqdm.auto import tqdm

    for start in tqdm(range(0, used, step), desc="calibrating", unit="batch",
                      disable=None if progress else True, leave=False):
        stop = min(start + step, used)
        batch = {k: v[start:stop] if np.ndim(v) else v for k, v in feeds.items()}
        values = {**constants, **batch}
        if session is not None:
            values.update(run(session, batch, "original"))
        for source in sources.values():
            source.add(values[source.activation], start, stop)
    stats = {}
    for job, keys in plans:
        result = _combine(job.first, [sources[k] for k in keys])
        if result is not None:
            stats[job.first.weight_key] = result
    return stats


def _sample_count(feeds: dict[str, np.ndarray]) -> int:
    counts = {k: np.shape(v)[0] for k, v in feeds.items() if np.ndim(v)}
    if len(set(counts.values())) > 1:
        raise InvalidModel(f"calibration inputs hold different numbers of samples along axis 0: {counts}")
    samples = next(iter(counts.values()), 0)
    if samples == 0:
        raise InvalidModel("the calibration data holds no samples")
    return samples


class _Source:
    """The rows one site reads: its activation, turned into rows of the weight's view, subsampled."""

    def __init__(self, site, budget: int, samples: int, rng: np.random.Generator):
        self.site, self.budget, self.samples, self.rng = site, budget, samples, rng
        self.kind, self.activation = site.kind.name, site.activation
        self.geometry = _geometry(site) if self.kind == "conv" else ()
        self.transposed = self.kind == "conv" and site.params["transposed"]
        self.rows = 0
        k, n = site.shape
        if self.kind == "gather":
            self.counts = np.zeros(n, np.int64)
        elif self.transposed:  # diagonal only: per input channel sums
            self.s2 = np.zeros(site.params["channels_in"])
            self.s1 = np.zeros(site.params["channels_in"])
        else:
            groups = site.params["group"] if self.kind == "conv" else 1
            self.s2, self.s1 = np.zeros((groups, k, k)), np.zeros((groups, k))

    @staticmethod
    def key(site, budget: int) -> tuple:
        return site.activation, budget, site.kind.name, _geometry(site) if site.kind.name == "conv" else ()

    def _pick(self, rows: int, quota: int) -> np.ndarray:
        if rows <= quota:
            return np.arange(rows)
        return np.sort(self.rng.choice(rows, quota, replace=False))  # sorted: gathers walk memory forwards

    def add(self, value: np.ndarray, start: int, stop: int) -> None:
        """Accumulate the batch of samples [start, stop); its share of the budget is proportional to its size."""
        quota = self.budget * stop // self.samples - self.budget * start // self.samples
        if self.kind == "gather":
            ids = np.asarray(value, np.int64).ravel()
            vocab = self.counts.size
            ids = np.where(ids < 0, ids + vocab, ids)  # negative ids count from the end, as in ONNX Gather
            if ids.size and (ids.min() < 0 or ids.max() >= vocab):
                raise InvalidModel(f"node {self.site.display_name!r}: calibration ids fall outside [-{vocab}, {vocab})")
            self.counts += np.bincount(ids, minlength=vocab)
            self.rows += ids.size
            return
        if quota <= 0:
            return
        x = np.asarray(value, np.float32)
        if self.kind == "matmul":
            if x.ndim == 0 or x.shape[-1] != self.s1.shape[1]:
                raise InvalidModel(f"node {self.site.display_name!r}: activation of shape {list(x.shape)} does "
                                   f"not end in K = {self.s1.shape[1]}")
            x = x.reshape(-1, x.shape[-1])
            rows = x[self._pick(x.shape[0], quota)][None]
        else:
            channels, kernel = self.site.params["channels_in"], self.site.params["kernel"]
            if x.ndim != 2 + len(kernel) or x.shape[1] != channels:
                raise InvalidModel(f"node {self.site.display_name!r}: input of shape {list(x.shape)} is not "
                                   f"[batch, {channels}, {len(kernel)} spatial dims]")
            if self.transposed:
                rows = _positions(x, x.ndim - 2, self._pick, quota)   # [q, Cin]: one row per input pixel
                self.s2 += np.square(rows, dtype=np.float64).sum(axis=0)
                self.s1 += rows.sum(axis=0, dtype=np.float64)
                self.rows += rows.shape[0]
                return
            rows = _conv_rows(x, self.geometry, self._pick, quota)
        rows = np.ascontiguousarray(rows)              # [G, q, K]
        self.s2 += np.matmul(rows.transpose(0, 2, 1), rows)   # float32 BLAS per batch, summed in float64
        self.s1 += rows.sum(axis=1, dtype=np.float64)
        self.rows += rows.shape[1]


def _geometry(site) -> tuple:
    """(group, kernel, strides, dilations, pads, auto_pad, transposed) of a conv site, ONNX defaults filled in."""
    node, kernel = site.node, tuple(site.params["kernel"])
    auto_pad = attr(node, "auto_pad", "NOTSET")
    auto_pad = auto_pad.decode() if isinstance(auto_pad, bytes) else str(auto_pad)
    return (site.params["group"], kernel, tuple(attr(node, "strides", [1] * len(kernel))),
            tuple(attr(node, "dilations", [1] * len(kernel))), tuple(attr(node, "pads", [0] * 2 * len(kernel))),
            auto_pad, site.params["transposed"])


def _pads(size, kernel, strides, dilations, pads, auto_pad) -> tuple[list[int], list[int]]:
    """Zero padding before and after each spatial axis, per the ONNX Conv spec."""
    rank = len(kernel)
    if auto_pad in ("SAME_UPPER", "SAME_LOWER"):
        begin, end = [], []
        for n, k, s, d in zip(size, kernel, strides, dilations):
            total = max(0, (-(-n // s) - 1) * s + (k - 1) * d + 1 - n)
            # An odd total puts the extra zero at the end (SAME_UPPER) or at the start (SAME_LOWER).
            begin.append(total // 2 if auto_pad == "SAME_UPPER" else total - total // 2)
            end.append(total - begin[-1])
        return begin, end
    if auto_pad == "VALID":
        return [0] * rank, [0] * rank
    return list(pads[:rank]), list(pads[rank:])


def _positions(x: np.ndarray, rank: int, pick, quota: int) -> np.ndarray:
    """x[b, :, *position] of the picked (sample, position) pairs of x [B, C, *positions (rank axes), ...]."""
    positions = (x.shape[0], *x.shape[2:2 + rank])
    index = np.unravel_index(pick(int(np.prod(positions)), quota), positions)
    # Advanced indices split by a slice: the picked axis goes first, then C, then the rest.
    return x[(index[0], slice(None), *index[1:])]


def _conv_rows(x: np.ndarray, geometry: tuple, pick, quota: int) -> np.ndarray:
    """im2col rows [G, q, Cin/G * prod(kernel)] of q picked output positions (c-major, then kernel offsets)."""
    group, kernel, strides, dilations, pads, auto_pad, _ = geometry
    rank = len(kernel)
    begin, end = _pads(x.shape[2:], kernel, strides, dilations, pads, auto_pad)
    x = np.pad(x, [(0, 0), (0, 0), *zip(begin, end)])
    extent = [(k - 1) * d + 1 for k, d in zip(kernel, dilations)]
    # A view [B, C, *positions, *extent]; strides and dilations are slices of it, nothing is copied
    # until the picked patches are gathered.
    windows = sliding_window_view(x, extent, axis=tuple(range(2, 2 + rank)))
    windows = windows[(slice(None), slice(None), *(slice(None, None, s) for s in strides),
                       *(slice(None, None, d) for d in dilations))]
    patches = _positions(windows, rank, pick, quota)  # [q, Cin, *kernel]
    return patches.reshape(patches.shape[0], group, -1).transpose(1, 0, 2)


def _combine(site, sources: list[_Source]) -> LayerStats | None:
    """One weight's statistics: the sum over the sites that read it, normalized by their rows."""
    rows = sum(s.rows for s in sources)
    if rows == 0:
        return None
    if site.kind.name == "gather":
        return LayerStats(None, None, rows, row_weights=sum(s.counts for s in sources) / rows)
    s2, s1 = sum(s.s2 for s in sources) / rows, sum(s.s1 for s in sources) / rows
    if not (np.isfinite(s2).all() and np.isfinite(s1).all()):
        raise InvalidModel(f"the input of node {site.display_name!r} holds NaN/Inf values on the calibration data")
    if sources[0].transposed:
        repeats = site.shape[0] // s1.size  # K = Cin * prod(kernel), channel-major (conv.py's view)
        return LayerStats(np.diag(np.repeat(s2, repeats))[None], np.repeat(s1, repeats)[None], rows, diagonal=True)
    return LayerStats(s2, s1, rows)
