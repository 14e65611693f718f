"""Data-aware fitting: codes and codebooks that minimize a layer's output error on calibration inputs.

For a weight W[K, N] whose inputs x have the second moment H = E[x x^T] (onnxvq.calibration), the
output error of W_hat is

    E ||x^T (W_hat - W) F^1/2||^2 = sum_g tr(dW_g^T H_g dW_g F_g),   dW = W_hat - W,

with g the convolution groups (blocks of output columns, each reading its own inputs) and F the
per-column weights (a Gather table's row frequencies; 1 elsewhere). Any code layout is fitted in
the same three steps:

1. least-squares codebook refit with the codes fixed: W_hat is linear in the codebooks, so the
   normal equations are solved by (Jacobi-preconditioned) conjugate gradient;
2. GPTQ-style assignment with the codebooks fixed: the codes of one block of K (a subspace) are
   chosen under the metric H^-1 gives that block, and the block's error is pushed onto the inputs
   not yet quantized through the Cholesky factor of H^-1 (Frantar et al. 2022; van Baalen et al.
   2024 for vectors);
3. refit again. Every candidate is scored by the objective and the lowest wins, the data-free
   encoding among them: the data-aware fit is never worse than data-free on the statistics.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from ..ops.schema import AXIS_IN
from ..quantizers.base import CodedWeight, codebook_indices, decode_matrix
from ..quantizers.pruning import ZERO_CODE, lowest_share

#: Damping added to H's diagonal, as a share of its mean diagonal (GPTQ's percdamp): with fewer
#: calibration rows than inputs H is singular, and the error feedback must stay bounded.
DAMPING = 0.01
#: Columns of K processed before the error of the block is pushed onto the rest in one GEMM.
BLOCK = 128
#: Floating-point work the codebook refit may spend on one layer (CG iterations are capped by it).
REFIT_FLOP_BUDGET = 4e10


@dataclass
class Objective:
    """The layer's output error as a function of W_hat (all float64)."""

    weight: np.ndarray              # W [K, N]
    hessians: np.ndarray            # [G, K, K], damped
    column_groups: list[slice]      # the columns of W that hessians[g] applies to
    column_weights: np.ndarray      # [N]
    factors: dict                   # Cholesky factors by (group, padded size), shared by every fit of the layer

    @classmethod
    def from_stats(cls, weight: np.ndarray, stats, centered: bool = False) -> "Objective":
        """``centered``: the output error left once a bias absorbs its mean (bias correction):
        H becomes the covariance E[x x^T] - mu mu^T."""
        k_in, n_out = weight.shape
        caches = stats.__dict__.setdefault("_fit_cache", {})  # one layer's candidates reuse H and its factors
        centered = centered and stats.mean is not None
        cache = caches.setdefault(centered, {})
        if "hessians" not in cache:
            if stats.hessian is None:  # an embedding table: its "input" is one-hot, H = I
                hessians = np.eye(k_in)[None]
            else:
                hessians = np.array(stats.hessian, dtype=np.float64)
                if centered:
                    mean = np.asarray(stats.mean, dtype=np.float64)
                    hessians -= mean[:, :, None] * mean[:, None, :]
            size = hessians.shape[1]
            # Few rows for many inputs (a classifier head sees one row per image) make H a noisy,
            # singular estimate that a fit would overfit: shrink it toward its diagonal (the input
            # energies, well estimated from few rows) by K / (rows + K) (Ledoit-Wolf-like).
            shrink = size / (max(int(stats.rows), 1) + size)
            for h in hessians:
                diag = np.diag(h).copy()
                h *= 1.0 - shrink
                h[np.diag_indices(size)] += shrink * diag
                mean_diag = float(np.mean(diag))
                h[np.diag_indices(size)] += DAMPING * mean_diag if mean_diag > 0 else 1.0
            cache["hessians"], cache["factors"] = hessians, {}
        hessians = cache["hessians"]
        groups = hessians.shape[0]
        if hessians.shape[1:] != (k_in, k_in) or n_out % groups:
            raise ValueError(f"statistics of shape {hessians.shape} do not fit a weight [{k_in}, {n_out}]")
        step = n_out // groups
        weights = np.ones(n_out)
        if stats.row_weights is not None:
            # Half uniform, half by frequency: rows unseen in calibration are still read later.
            weights = 0.5 + 0.5 * n_out * np.asarray(stats.row_weights, dtype=np.float64)
        return cls(np.asarray(weight, dtype=np.float64), hessians,
                   [slice(g * step, (g + 1) * step) for g in range(groups)], weights, cache["factors"])

    def inverse_factor(self, key, h: np.ndarray) -> np.ndarray:
        if key not in self.factors:
            self.factors[key] = _inverse_cholesky(h)
        return self.factors[key]

    def apply(self, delta: np.ndarray) -> np.ndarray:
        """H dW F (the gradient of the objective, halved)."""
        out = np.empty_like(delta)
        for h, cols in zip(self.hessians, self.column_groups):
            out[:, cols] = h @ delta[:, cols]
        return out * self.column_weights

    def value(self, w_hat: np.ndarray) -> float:
        delta = np.asarray(w_hat, dtype=np.float64) - self.weight
        return float(np.sum(delta * self.apply(delta)))

    def energy(self) -> float:
        """The objective of W_hat = 0: the layer's output energy, to make errors relative."""
        return self.value(np.zeros_like(self.weight))

    def mean_hessian(self) -> np.ndarray:
        return self.hessians.mean(axis=0)


@dataclass(frozen=True)
class DataAwareFit:
    encoded: object                 # CodedWeight | LowRankWeight
    output_rel_err: float           # sqrt(objective / energy) of the chosen encoding
    data_free_rel_err: float | None  # the same for the data-free encoding
    bias_shift: np.ndarray | None = None  # [N] to add to the layer's bias (bias correction), if fitted for one


def bias_shift(weight: np.ndarray, w_hat: np.ndarray, stats) -> np.ndarray:
    """mu^T (W - W_hat) per conv group: what keeps the mean output unchanged (Nagel et al. 2019)."""
    mean = np.asarray(stats.mean, dtype=np.float64)
    groups, n_out = mean.shape[0], weight.shape[1]
    step = n_out // groups
    delta = np.asarray(weight, np.float64) - w_hat
    return np.concatenate([mean[g] @ delta[:, g * step:(g + 1) * step] for g in range(groups)]).astype(np.float32)


def with_bias_correction(fit: DataAwareFit, weight: np.ndarray, stats) -> DataAwareFit:
    return DataAwareFit(fit.encoded, fit.output_rel_err, fit.data_free_rel_err,
                        bias_shift(weight, fit.encoded.decode(), stats))


def refine_codes(encoded: CodedWeight, weight: np.ndarray, stats, *, codebook_dtype: str,
                 refit: bool = True, rounds: int = 1, centered: bool = False, prune: float = 0.0) -> DataAwareFit:
    """The best of: the data-free encoding, its refit, and ``rounds`` of GPTQ assignment + refit.

    ``prune`` (with a zero codeword): the GPTQ assignment also chooses which units to prune, by
    their output error (OBS / SparseGPT), and every refit keeps codeword 0 at exactly 0."""
    objective = Objective.from_stats(weight, stats, centered)
    layout, codes = encoded.layout, encoded.codes
    codebooks = encoded.codebooks.astype(np.float64)
    fixed_zero = encoded.zero_codeword
    prune = prune if fixed_zero else 0.0
    energy = objective.energy()
    first = objective.value(encoded.decode())
    best = (first, codes, codebooks)

    def consider(codes, codebooks):
        nonlocal best
        score = objective.value(decode_matrix(layout, codes, codebooks))
        if score < best[0]:
            best = (score, codes, codebooks)

    def refitted(codes, codebooks):
        return _stored(refit_codebooks(objective, layout, codes, codebooks, fixed_zero=fixed_zero), codebook_dtype)

    for _ in range(rounds):
        if refit:
            codebooks = refitted(codes, codebooks)
            consider(codes, codebooks)
        codes = gptq_codes(objective, layout, codebooks, prune=prune)
        consider(codes, codebooks)
    if refit:
        codebooks = refitted(codes, codebooks)
        consider(codes, codebooks)
    score, codes, codebooks = best
    store = np.float16 if codebook_dtype == "float16" else np.float32
    chosen = CodedWeight(layout, np.ascontiguousarray(codes, dtype=np.uint8), codebooks.astype(store),
                         zero_codeword=fixed_zero)
    return DataAwareFit(chosen, relative_error(score, energy), relative_error(first, energy))


def relative_error(score: float, energy: float) -> float:
    return float(np.sqrt(max(score, 0.0) / energy)) if energy > 0 else 0.0


def _stored(codebooks: np.ndarray, dtype: str) -> np.ndarray:
    """Codebooks as the file will hold them (float16 rounding), back in float64."""
    return codebooks.astype(np.float16 if dtype == "float16" else np.float32).astype(np.float64)


# --- step 1: least-squares codebooks -------------------------------------------------------------

def scatter_to_codebooks(layout, codes: np.ndarray, grad: np.ndarray) -> np.ndarray:
    """Adjoint of decode_matrix: sum each entry of ``grad`` [K, N] into the codeword entry it came from."""
    rows_view = grad.T if layout.axis == AXIS_IN else grad                       # [R, L]
    d, s = layout.subvector_len, layout.num_subspaces
    padded = np.zeros((layout.rows, s * d))
    padded[:, : layout.length] = rows_view
    padded = padded.reshape(layout.rows, s, d)
    stages, s_groups, r_groups, k, _ = layout.codebooks_shape
    s_index, g_index = codebook_indices(layout)
    base = (s_index[None, :] * r_groups + g_index[:, None]) * k                  # [R, S]
    out = np.zeros((stages, s_groups * r_groups * k, d))
    for t in range(stages):
        flat = (base + codes[t]).ravel()
        for i in range(d):
            out[t, :, i] = np.bincount(flat, weights=padded[..., i].ravel(), minlength=s_groups * r_groups * k)
    return out.reshape(layout.codebooks_shape)


def refit_codebooks(objective: Objective, layout, codes: np.ndarray, codebooks: np.ndarray,
                    max_iters: int = 12, tol: float = 1e-6, fixed_zero: bool = False) -> np.ndarray:
    """Codebooks minimizing the objective with ``codes`` fixed, by conjugate gradient from ``codebooks``.
    ``fixed_zero``: codeword 0 (a pruned layer's zero codeword) is not a variable and stays 0."""
    def normal(cb):
        return scatter_to_codebooks(layout, codes, objective.apply(decode_matrix(layout, codes, cb)))

    k_in, n_out = objective.weight.shape
    iters = int(np.clip(REFIT_FLOP_BUDGET / (2.0 * k_in * k_in * n_out + 1), 3, max_iters))
    diag = np.stack([np.diag(h) for h in objective.hessians])                    # [G, K]
    per_entry = np.empty_like(objective.weight)
    for g, cols in enumerate(objective.column_groups):
        per_entry[:, cols] = diag[g][:, None]
    jacobi = scatter_to_codebooks(layout, codes, per_entry * objective.column_weights)
    used = jacobi > 0  # codewords no code selects keep their values
    if fixed_zero:
        used[:, :, :, 0] = False
    inverse = np.where(used, 1.0 / np.where(used, jacobi, 1.0), 0.0)
    x = codebooks.copy()
    r = scatter_to_codebooks(layout, codes, objective.apply(objective.weight)) - normal(x)
    r[~used] = 0.0
    b_norm = np.linalg.norm(r) + 1e-300
    z = r * inverse
    p, rz = z, float(np.sum(r * z))
    for _ in range(iters):
        if np.linalg.norm(r) <= tol * b_norm or rz <= 0:
            break
        ap = normal(p)
        curvature = float(np.sum(p * ap))
        if curvature <= 0:
            break
        alpha = rz / curvature
        x += alpha * p
        r -= alpha * ap
        z = r * inverse
        rz_next = float(np.sum(r * z))
        p, rz = z + (rz_next / rz) * p, rz_next
    return x


# --- step 2: GPTQ assignment ---------------------------------------------------------------------

def _inverse_cholesky(h: np.ndarray) -> np.ndarray:
    """Upper U with U^T U = H^-1 (GPTQ's factor: row j holds how column j's error spreads)."""
    inverse = np.linalg.inv(h)
    inverse = (inverse + inverse.T) / 2
    return np.linalg.cholesky(inverse).T


def gptq_codes(objective: Objective, layout, codebooks: np.ndarray, prune: float = 0.0) -> np.ndarray:
    """Codes by GPTQ. ``prune``: that share of the units (one code each) is coded ZERO_CODE, chosen
    by OBS saliency ||w_unit||^2 / [H^-1]_jj as the error feedback goes (SparseGPT)."""
    codes = np.empty(layout.codes_shape, dtype=np.uint8)
    if layout.axis == AXIS_IN:
        for g, (h, cols) in enumerate(zip(objective.hessians, objective.column_groups)):
            _gptq_along_subspaces(objective, g, layout, codebooks, codes, cols, prune)
    else:
        _gptq_along_rows(objective, layout, codebooks, codes, prune)
    return codes


def _feedback(w: np.ndarray, u: np.ndarray, steps, quantize_step, on_block=None) -> None:
    """Run GPTQ over the rows of ``w`` [K', n] (in place): ``steps`` are consecutive row ranges
    quantized together by ``quantize_step(step index, rows [len, n], U block) -> Q rows``.
    ``on_block(first step, last step, block rows, U block)`` sees each block before it is quantized
    (with every earlier block's error already applied): where SparseGPT picks its mask."""
    steps = list(steps)
    index = 0
    while index < len(steps):
        start = steps[index].start
        last = index  # the block ends with the last step that starts within BLOCK rows: never splits one
        while last + 1 < len(steps) and steps[last + 1].start < start + BLOCK:
            last += 1
        stop = steps[last].stop
        block = w[start:stop].copy()
        errors = np.zeros_like(block)
        u_block = u[start:stop, start:stop]
        if on_block is not None:
            on_block(index, last, block, u_block)
        while index <= last:
            step = steps[index]
            local = slice(step.start - start, step.stop - start)
            q = quantize_step(index, block[local], u_block[local, local])
            for j in range(local.start, local.stop):
                e = (block[j] - q[j - local.start]) / u_block[j, j]
                block[j + 1:] -= np.outer(u_block[j, j + 1:], e)
                errors[j] = e
            index += 1
        w[stop:] -= u[start:stop, stop:].T @ errors


def _padded_factor(objective: Objective, g: int, padded: int) -> np.ndarray:
    h = objective.hessians[g]
    k_in = h.shape[0]
    hp = np.zeros((padded, padded))
    hp[:k_in, :k_in] = h
    # Padding coordinates are dropped at decode: a tiny curvature makes their error nearly free.
    hp[np.arange(k_in, padded), np.arange(k_in, padded)] = 1e-6 * float(np.mean(np.diag(h)))
    return objective.inverse_factor(("in", g, padded), hp)


def _gptq_along_subspaces(objective: Objective, g: int, layout, codebooks, codes, cols: slice,
                          prune: float = 0.0) -> None:
    """axis in: M's rows are W's columns; subspace s is the d rows [s*d, s*d + d) of W.
    Pruning picks, per column (output), the ``prune`` share of each block's subspaces."""
    w = objective.weight[:, cols]
    d, s_count = layout.subvector_len, layout.num_subspaces
    k_in, n = w.shape
    padded = s_count * d
    work = np.zeros((padded, n))
    work[:k_in] = w
    u = _padded_factor(objective, g, padded)
    s_index, g_index = codebook_indices(layout)
    groups = g_index[cols]
    pruned: dict[int, np.ndarray] = {}  # subspace -> mask over the columns

    def choose_pruned(first, last, block, u_blk):
        saliency = (block / np.diag(u_blk)[:, None]) ** 2                      # [rows of the block, n]
        per_step = saliency[: (last - first + 1) * d].reshape(last - first + 1, d, n).sum(axis=1)
        for i, mask in enumerate(lowest_share(per_step, prune, axis=0)):
            pruned[first + i] = mask

    def quantize_step(s, rows, u_blk):
        # Nearest codeword under the block's metric ||L^-1 (v - c)||^2, L = U_blk^T (lower).
        book = codebooks[:, s_index[s]]                                         # [T, Gr, k, d]
        if d == 1:
            to_metric = np.ones((1, 1))
        else:
            to_metric = np.linalg.inv(u_blk.T).T                                # row vectors: v @ L^-T
        residual = rows.T @ to_metric                                           # [n, d]
        q = np.zeros((n, d))
        for t in range(layout.stages):
            chosen = _nearest(residual, book[t] @ to_metric, groups)
            codes[t, cols, s] = chosen
            q += book[t][groups, chosen]
            residual = residual - (book[t] @ to_metric)[groups, chosen]
        if s in pruned:
            codes[:, cols.start + np.flatnonzero(pruned[s]), s] = ZERO_CODE
            q[pruned[s]] = 0.0
        return q.T

    _feedback(work, u, [slice(s * d, (s + 1) * d) for s in range(s_count)], quantize_step,
              choose_pruned if prune else None)


def _gptq_along_rows(objective: Objective, layout, codebooks, codes, prune: float = 0.0) -> None:
    """axis out: M's rows are W's rows (inputs); each input's subvectors are quantized at once
    (one H for every conv group: their mean). Pruning drops, per subspace (a group of outputs), the
    ``prune`` share of each block's rows by OBS saliency ||v||^2 / U_jj^2."""
    k_in, n_out = objective.weight.shape
    d, s_count = layout.subvector_len, layout.num_subspaces
    work = objective.weight.copy()
    u = objective.inverse_factor(("out",), objective.mean_hessian())
    s_index, g_index = codebook_indices(layout)
    subspaces = np.arange(s_count)
    pruned: dict[int, np.ndarray] = {}  # row -> mask over its subspaces

    def choose_pruned(first, last, block, u_blk):
        count = last - first + 1
        padded = np.zeros((count, s_count * d))
        padded[:, :n_out] = block[:count] / np.diag(u_blk)[:count, None]
        saliency = (padded.reshape(count, s_count, d) ** 2).sum(axis=2)        # [rows of the block, S]
        for i, mask in enumerate(lowest_share(saliency, prune, axis=0)):
            pruned[first + i] = mask

    def quantize_step(j, rows, _u_blk):
        vec = np.zeros(s_count * d)
        vec[:n_out] = rows[0]
        residual = vec.reshape(s_count, d)
        q = np.zeros((s_count, d))
        for t in range(layout.stages):
            book = codebooks[t][s_index, g_index[j]]                              # [S, k, d]
            chosen = _nearest(residual, book, subspaces)
            codes[t, j] = chosen
            picked = book[subspaces, chosen]
            q += picked
            residual = residual - picked
        if j in pruned:
            codes[:, j, pruned[j]] = ZERO_CODE
            q[pruned[j]] = 0.0
        return q.reshape(1, -1)[:, :n_out]

    _feedback(work, u, [slice(j, j + 1) for j in range(k_in)], quantize_step, choose_pruned if prune else None)


def _nearest(vectors: np.ndarray, books: np.ndarray, owner: np.ndarray) -> np.ndarray:
    """Index of the nearest codeword of ``books[owner[i]]`` [k, d] for each vector i [n, d]."""
    if books.shape[0] == 1:
        book = books[0]
        dist = (book * book).sum(axis=1)[None, :] - 2.0 * vectors @ book.T
    else:
        diff = vectors[:, None, :] - books[owner]                                # [n, k, d]
        dist = np.einsum("nkd,nkd->nk", diff, diff)
    return np.argmin(dist, axis=1).astype(np.uint8)

