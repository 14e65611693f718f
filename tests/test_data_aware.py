"""Data-aware fitting (fit/data_aware.py) against plain numpy references of its objective."""
from __future__ import annotations

import numpy as np
import pytest

from onnxvq.calibration import LayerStats
from onnxvq.config import BinaryConfig, KMeansConfig, PQConfig, RQConfig, SVDConfig
from onnxvq.fit import data_aware
from onnxvq.fit.data_aware import Objective, gptq_codes, refit_codebooks, scatter_to_codebooks
from onnxvq.quantizers import quantize
from onnxvq.quantizers.base import decode_matrix, quantize_data_aware


def correlated_inputs(rng, rows, k_in):
    """Inputs with a strongly non-uniform, correlated second moment (as real activations have)."""
    mix = rng.normal(size=(k_in, k_in)) * np.exp(-np.arange(k_in) / 12.0)[None, :]
    return rng.normal(size=(rows, k_in)) @ mix.T + 0.2 * rng.normal(size=(rows, k_in))


def stats_from(x):
    return LayerStats(hessian=(x.T @ x / len(x))[None], mean=x.mean(axis=0)[None], rows=len(x))


def output_error(x, weight, w_hat):
    """The plain reference: ||X (W - W_hat)||_F^2."""
    return float(np.sum((x @ (weight.astype(np.float64) - w_hat)) ** 2))


METHODS = [
    KMeansConfig(bits=3), KMeansConfig(bits=3, group_size=1, codebook_dtype="float16"),
    KMeansConfig(bits=4, group_size=7), PQConfig(bits=4, dim=4), PQConfig(bits=4, dim=3, axis="out"),
    PQConfig(bits=3, dim=5, codebook_dtype="float16"), RQConfig(bits=3, dim=4, stages=2),
    RQConfig(bits=2, dim=2, stages=3, axis="out"), BinaryConfig(), BinaryConfig(scaled=False),
    SVDConfig(rank=6),
]


@pytest.mark.parametrize("config", METHODS, ids=lambda c: "-".join(f"{v}" for v in c.options().values()))
def test_data_aware_fit_has_lower_output_error_than_data_free(config):
    rng = np.random.default_rng(1)
    k_in, n_out = 43, 37  # odd sizes: padded subspaces, a short last group
    weight = rng.normal(size=(k_in, n_out)).astype(np.float32)
    rows = correlated_inputs(rng, 3000, k_in)  # one distribution, split: calibration and held-out
    calib, held_out = rows[:1500], rows[1500:]
    free = quantize(weight, config, 0)
    fit = quantize_data_aware(weight, config, stats_from(calib), 0)
    assert type(fit.encoded) is type(free)
    for x in (calib, held_out):
        assert output_error(x, weight, fit.encoded.decode()) < 0.9 * output_error(x, weight, free.decode())
    # The reported relative errors are the objective's, on the (damped) calibration statistics.
    assert fit.output_rel_err < fit.data_free_rel_err
    if hasattr(free, "layout"):  # same layout and dtype: the file format does not change
        assert fit.encoded.layout == free.layout
        assert fit.encoded.codebooks.dtype == free.codebooks.dtype
        assert fit.encoded.codes.max() < free.layout.codebook_size


def test_objective_matches_plain_loops_with_groups_and_column_weights():
    rng = np.random.default_rng(2)
    k_in, n_out, groups = 5, 6, 2
    hessian = np.stack([(lambda a: a @ a.T)(rng.normal(size=(k_in, k_in))) for _ in range(groups)])
    weights = rng.uniform(size=n_out)
    weights /= weights.sum()
    stats = LayerStats(hessian, np.zeros((groups, k_in)), 10, row_weights=weights)
    w, w_hat = rng.normal(size=(k_in, n_out)), rng.normal(size=(k_in, n_out))
    objective = Objective.from_stats(w, stats)
    expected = 0.0
    for n in range(n_out):
        g = n // (n_out // groups)
        shrink = k_in / (10 + k_in)  # 10 calibration rows for 5 inputs: shrunk toward the diagonal
        h = (1 - shrink) * hessian[g] + shrink * np.diag(np.diag(hessian[g]))
        h = h + data_aware.DAMPING * np.mean(np.diag(hessian[g])) * np.eye(k_in)
        f = 0.5 + 0.5 * n_out * weights[n]
        delta = w_hat[:, n] - w[:, n]
        expected += f * delta @ h @ delta
    assert objective.value(w_hat) == pytest.approx(expected, rel=1e-12)


@pytest.mark.parametrize("config", [KMeansConfig(bits=3, group_size=4), PQConfig(bits=3, dim=3),
                                    RQConfig(bits=2, dim=2, stages=2, axis="out")])
def test_scatter_is_the_adjoint_of_decode(config):
    rng = np.random.default_rng(3)
    enc = quantize(rng.normal(size=(11, 10)).astype(np.float32), config, 0)
    books = rng.normal(size=enc.layout.codebooks_shape)
    grad = rng.normal(size=(11, 10))
    lhs = np.sum(decode_matrix(enc.layout, enc.codes, books) * grad)
    rhs = np.sum(books * scatter_to_codebooks(enc.layout, enc.codes, grad))
    assert lhs == pytest.approx(rhs, rel=1e-10)


@pytest.mark.parametrize("config", [KMeansConfig(bits=2), PQConfig(bits=2, dim=2), RQConfig(bits=2, dim=2, stages=2)])
def test_refit_reaches_the_least_squares_optimum(config):
    """Against the normal equations solved directly on the explicit Jacobian of decode."""
    rng = np.random.default_rng(4)
    k_in, n_out = 8, 6
    weight = rng.normal(size=(k_in, n_out))
    x = correlated_inputs(rng, 400, k_in)
    enc = quantize(weight.astype(np.float32), config, 0)
    objective = Objective.from_stats(weight, stats_from(x))
    lay, codes = enc.layout, enc.codes
    size = int(np.prod(lay.codebooks_shape))
    jac = np.stack([decode_matrix(lay, codes, np.eye(size)[i].reshape(lay.codebooks_shape)).ravel()
                    for i in range(size)], axis=1)                              # [K*N, entries]
    h = objective.hessians[0]
    big_h = np.kron(h, np.eye(n_out))                                         # acts on W.ravel() (row-major)
    normal = jac.T @ big_h @ jac
    rhs = jac.T @ big_h @ weight.ravel()
    best = np.linalg.lstsq(normal, rhs, rcond=None)[0].reshape(lay.codebooks_shape)
    got = refit_codebooks(objective, lay, codes, enc.codebooks.astype(np.float64), max_iters=200, tol=1e-12)
    assert objective.value(decode_matrix(lay, codes, got)) == pytest.approx(
        objective.value(decode_matrix(lay, codes, best)), rel=1e-6)


@pytest.mark.parametrize("config", [KMeansConfig(bits=3), KMeansConfig(bits=3, group_size=1),
                                    PQConfig(bits=3, dim=3), PQConfig(bits=3, dim=2, axis="out")])
def test_gptq_with_identity_statistics_is_nearest_assignment(config):
    """No input correlation, no error to push: GPTQ must pick the nearest codeword, as data-free does."""
    rng = np.random.default_rng(5)
    weight = rng.normal(size=(10, 9)).astype(np.float32)
    enc = quantize(weight, config, 0)
    stats = LayerStats(np.eye(10)[None], np.zeros((1, 10)), 1)
    codes = gptq_codes(Objective.from_stats(weight, stats), enc.layout, enc.codebooks.astype(np.float64))
    np.testing.assert_allclose(decode_matrix(enc.layout, codes, enc.codebooks), enc.decode(), atol=1e-6)


def test_gptq_feedback_lowers_the_objective_over_nearest_codes():
    rng = np.random.default_rng(6)
    weight = rng.normal(size=(30, 20)).astype(np.float32)
    stats = stats_from(correlated_inputs(rng, 600, 30))
    enc = quantize(weight, KMeansConfig(bits=2), 0)
    objective = Objective.from_stats(weight, stats)
    books = enc.codebooks.astype(np.float64)
    codes = gptq_codes(objective, enc.layout, books)
    assert objective.value(decode_matrix(enc.layout, codes, books)) < 0.8 * objective.value(enc.decode())


def test_embedding_frequencies_weight_a_shared_codebook():
    """Gather: with one codebook for the table, rows read often get the lower error."""
    rng = np.random.default_rng(7)
    weight = rng.normal(size=(16, 40)).astype(np.float32)  # W[K=D, N=V]
    freq = np.full(40, 0.1 / 36)
    freq[:4] = 0.9 / 4
    stats = LayerStats(None, None, 1000, row_weights=freq)
    fit = quantize_data_aware(weight, KMeansConfig(bits=2), stats, 0)
    free = quantize(weight, KMeansConfig(bits=2), 0)
    err = lambda enc, cols: float(np.sum((enc.decode()[:, cols] - weight[:, cols]) ** 2))  # noqa: E731
    assert err(fit.encoded, slice(0, 4)) < err(free, slice(0, 4))
    assert fit.output_rel_err <= fit.data_free_rel_err


@pytest.mark.parametrize("config", [PQConfig(bits=3, dim=3), KMeansConfig(bits=2), PQConfig(bits=2, dim=2, axis="out")])
def test_error_feedback_crosses_blocks(config):
    """K beyond one feedback block (128 rows), not a multiple of the subvector length."""
    rng = np.random.default_rng(8)
    k_in, n_out = 301, 12
    weight = rng.normal(size=(k_in, n_out)).astype(np.float32)
    x = correlated_inputs(rng, 2000, k_in)
    fit = quantize_data_aware(weight, config, stats_from(x), 0)
    assert output_error(x, weight, fit.encoded.decode()) < 0.9 * output_error(x, weight, quantize(weight, config, 0).decode())
