"""The uint8 fast-scan guard, through onnxruntime (custom_ops/kernels/vq_kernel.h).

Format-2 (4-bit fast-scan) rows whose uint8 tables the kernel estimates too coarse take the
exact float tables: inputs with a few channels 50-100x the rest (LayerNorm outputs) must then
stay within 1% of the numpy reference, while ordinary inputs keep the uint8 tables (counted by
the library's onnxvq_fastscan_row_counts hook). The kernel reads ONNXVQ_EXACT_LUT and
ONNXVQ_LUT_GUARD once per process, so every run is a subprocess with a clean environment.
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
OUTLIER_RTOL = 1e-2
UINT8_TABLES_RTOL = 3e-2  # tests/test_pass.py's tier for uint8 tables

SCRIPT = r"""
import ctypes, json
import numpy as np
import onnxvq
from onnxvq.ops.reference import vq_matmul_ref
from onnxvq.ops.schema import VQLayout
from onnxvq.ops.packing import pack_for_op
from tests.test_kernel import run_kernel

lib = ctypes.CDLL(onnxvq.library_path())
lib.onnxvq_fastscan_row_counts.argtypes = [ctypes.POINTER(ctypes.c_uint64)] * 2 + [ctypes.c_int]

def counts():
    fast, exact = ctypes.c_uint64(), ctypes.c_uint64()
    lib.onnxvq_fastscan_row_counts(ctypes.byref(fast), ctypes.byref(exact), 1)
    return fast.value, exact.value

out = {}
for name, k, d in (("km4", 384, 1), ("pq4_d2", 1536, 2), ("pq4_d4", 768, 4)):
    layout = VQLayout.for_weight(k, 97, bits=4, subvector_len=d, codebook_per_subspace=int(d > 1),
                                 format_version=2)
    rng = np.random.default_rng(k)
    packed = pack_for_op(rng.integers(0, 16, layout.codes_shape), layout)
    codebooks = rng.standard_normal(layout.codebooks_shape).astype(np.float32)
    bias = rng.standard_normal(layout.out_features).astype(np.float32)
    x = rng.standard_normal((16, k)).astype(np.float32)
    spiky = x.copy()
    spiky[:, [5, k // 3, k - 2]] *= np.float32(80.0)  # the same few outlier channels in every row
    spiky[::4, 11] *= np.float32(50.0)
    for kind, xs in (("ordinary", x), ("outliers", spiky)):
        counts()
        y = run_kernel(layout, packed, codebooks, bias, xs, threads=2)
        fast, exact = counts()
        ref = vq_matmul_ref(xs, packed, codebooks, bias, layout)
        rel = float(np.abs(y - ref).max() / max(1.0, np.abs(ref).max()))
        out[f"{name}/{kind}"] = {"rel": rel, "uint8_rows": fast, "exact_rows": exact}
print(json.dumps(out))
"""


def _run(**env) -> dict:
    clean = {k: v for k, v in os.environ.items() if not k.startswith("ONNXVQ_")}
    # 16 rows would take the tile GEMM (from 8 rows for km4): keep the fast-scan path under test.
    clean["ONNXVQ_TILE_GEMM_MIN_ROWS"] = str(1 << 40)
    proc = subprocess.run([sys.executable, "-c", SCRIPT], capture_output=True, text=True,
                          env={**clean, **env}, cwd=ROOT, timeout=300)
    assert proc.returncode == 0, proc.stderr
    return json.loads(proc.stdout.splitlines()[-1])


@pytest.fixture(scope="module")
def guarded():
    return _run()


@pytest.fixture(scope="module")
def unguarded():
    return _run(ONNXVQ_LUT_GUARD="inf")


@pytest.mark.parametrize("name", ["km4", "pq4_d2", "pq4_d4"])
def test_outlier_rows_stay_within_one_percent(guarded, unguarded, name):
    got = guarded[f"{name}/outliers"]
    assert got["rel"] <= OUTLIER_RTOL, got
    assert got["exact_rows"] == 16 and got["uint8_rows"] == 0, got
    # Without the guard the same rows leave the uint8 tier: the guard is what keeps them right.
    assert unguarded[f"{name}/outliers"]["rel"] > UINT8_TABLES_RTOL, unguarded[f"{name}/outliers"]
    assert unguarded[f"{name}/outliers"]["uint8_rows"] == 16


@pytest.mark.parametrize("name", ["km4", "pq4_d2", "pq4_d4"])
def test_ordinary_rows_keep_the_uint8_tables(guarded, name):
    got = guarded[f"{name}/ordinary"]
    assert got["uint8_rows"] == 16 and got["exact_rows"] == 0, got
    assert 0 < got["rel"] <= UINT8_TABLES_RTOL, got  # > 0: the tables really were quantized
