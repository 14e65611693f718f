"""Each method: shapes, quality trends, and stored sizes against the paper's rate formulas."""
import numpy as np
import pytest

from onnxvq.config import BinaryConfig, KMeansConfig, PQConfig, RQConfig, SVDConfig
from onnxvq.quantizers import CodedWeight, LowRankWeight, quantize


def weight(k=256, n=128, seed=0):
    return np.random.default_rng(seed).standard_normal((k, n)).astype(np.float32)


def rel_err(w, w_hat):
    return float(np.linalg.norm(w - w_hat) / np.linalg.norm(w))


@pytest.mark.parametrize("config", [
    KMeansConfig(bits=4), KMeansConfig(bits=2, group_size=16), BinaryConfig(), BinaryConfig(scaled=False),
    PQConfig(bits=4, dim=3), PQConfig(bits=4, dim=3, axis="out"), RQConfig(bits=3, dim=2, stages=2),
    RQConfig(bits=3, dim=5, stages=2, axis="out", codebook_dtype="float16"), SVDConfig(rank=8), SVDConfig(ratio=4.0),
])
def test_decode_shape_and_determinism(config):
    w = weight(70, 33)
    a, b = quantize(w, config, seed=5), quantize(w, config, seed=5)
    assert a.decode().shape == (70, 33) and a.decode().dtype == np.float32
    np.testing.assert_array_equal(a.decode(), b.decode())


@pytest.mark.parametrize("make", [lambda b: KMeansConfig(bits=b), lambda b: PQConfig(bits=b, dim=2),
                                  lambda b: RQConfig(bits=b, dim=2, stages=2)])
def test_more_bits_less_error(make):
    w = weight(128, 64)
    errors = [rel_err(w, quantize(w, make(b)).decode()) for b in (1, 2, 4, 6)]
    assert all(e1 > e2 for e1, e2 in zip(errors, errors[1:])), errors


def test_more_rq_stages_less_error():
    w = weight(128, 64)
    errors = [rel_err(w, quantize(w, RQConfig(bits=4, dim=4, stages=t)).decode()) for t in (1, 2, 3)]
    assert errors[0] > errors[1] > errors[2], errors


def test_binary_is_sign_times_mean_abs():
    w = weight(40, 12)
    enc = quantize(w, BinaryConfig())
    np.testing.assert_allclose(enc.decode(), np.where(w >= 0, 1, -1) * np.abs(w).mean(axis=0), rtol=1e-6)
    np.testing.assert_array_equal(quantize(w, BinaryConfig(scaled=False)).decode(), np.where(w >= 0, 1.0, -1.0))


def test_scalar_kmeans_codebook_values_are_the_weights_levels():
    levels = np.array([-0.5, -0.1, 0.2, 0.9], np.float32)
    w = np.random.default_rng(0).choice(levels, size=(64, 32))
    enc = quantize(w, KMeansConfig(bits=2))
    np.testing.assert_array_equal(enc.decode(), w)  # 4 distinct values, 4 codewords: exact


def test_float16_codebooks_halve_codebook_bytes_and_decode_exactly():
    w = weight(64, 512)
    f32, f16 = quantize(w, PQConfig(bits=4, dim=4)), quantize(w, PQConfig(bits=4, dim=4, codebook_dtype="float16"))
    assert f16.codebooks.dtype == np.float16 and f16.codebook_bytes * 2 == f32.codebook_bytes
    assert 0 < rel_err(w, f32.decode()) and rel_err(w, f16.decode()) < rel_err(w, f32.decode()) * 1.01


# --- size formulas of Gong et al. 2014 (m x n matrix, k centers, s segments, t stages) -----------
M, N = 512, 256  # rows of M (R) and length of the split axis (L)


def bytes_of(enc):
    return enc.code_bytes + enc.codebook_bytes


def test_kmeans_rate_is_32_over_log2k_when_codebook_is_negligible():
    for bits in (1, 2, 3, 4, 5, 8):
        enc = quantize(weight(1024, 1024), KMeansConfig(bits=bits))
        rate = 1024 * 1024 * 4 / bytes_of(enc)
        exact = 32 * 1024 * 1024 / (1024 * 1024 * bits + 32 * 2**bits)
        assert rate == pytest.approx(exact, rel=1e-12)
        assert rate == pytest.approx(32 / bits, rel=0.01)


@pytest.mark.parametrize("bits,dim", [(8, 4), (4, 2), (3, 8)])
def test_pq_rate_matches_the_paper(bits, dim):
    w = weight(N, M)  # axis "in": rows R = M output channels, split axis L = N (= K)
    enc = quantize(w, PQConfig(bits=bits, dim=dim))
    k, s = 2**bits, N // dim
    paper = 32 * M * N / (32 * k * N + bits * M * s)
    assert M * N * 4 / bytes_of(enc) == pytest.approx(paper, rel=1e-12)


def test_rq_rate_with_t_stages():
    bits, dim, t = 4, 4, 3
    enc = quantize(weight(N, M), RQConfig(bits=bits, dim=dim, stages=t))
    k, s = 2**bits, N // dim
    assert M * N * 4 / bytes_of(enc) == pytest.approx(32 * M * N / (t * (32 * k * N + bits * M * s)), rel=1e-12)


def test_svd_rate_folds_the_singular_values():
    enc = quantize(weight(N, M), SVDConfig(rank=16))
    assert isinstance(enc, LowRankWeight) and enc.rank == 16
    rate = M * N * 4 / bytes_of(enc)
    assert rate == pytest.approx(M * N / (16 * (M + N)), rel=1e-12)
    assert rate > M * N / (16 * (M + N + 1))  # the paper's mn / k(m+n+1), which stores S separately


def test_svd_ratio_picks_the_rank():
    enc = quantize(weight(N, M), SVDConfig(ratio=8.0))
    assert M * N * 4 / bytes_of(enc) >= 8.0


def test_codes_are_packed_tightly():
    enc = quantize(weight(100, 30), PQConfig(bits=3, dim=4))
    assert isinstance(enc, CodedWeight)
    assert enc.packed_codes().size == -(-30 * 25 * 3 // 8)
