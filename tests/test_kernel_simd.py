"""The op's SIMD kernel table against its scalar table, through onnxruntime.

The kernel table is chosen once per process, so each table runs in its own subprocess:
the default (the best table this CPU has: avx2, avx512 or neon), ONNXVQ_FORCE_SCALAR=1, and every
other table the host supports through ONNXVQ_FORCE_ISA (an AVX-512 host tests its AVX2 table too),
plus ONNXVQ_EXACT_LUT=1 ONNXVQ_EXACT_GEMM=1 for the exact float paths. Cases cover awkward shapes:
N at the fast-scan block (32) - 1, 32, 32 + 1 and N = 1; K so that S lands at and around
the 16-bit flush boundary (E = 511, 512, 513); odd subvector lengths; batches 1, 2, 7, 64.

Tolerances (stated, per case, relative to the output scale s = max(1, max|y|)):
  * integer work and float work done in the same order: equal to the bit. Here: every
    case whose subvector length is not 4 or 8 (the only float work the SIMD tables do in
    another order is build_lut for d = 4 and 8).
  * otherwise 1e-5 * s, plus, for uint8 tables, 4 quantization steps (a table value on a
    rounding boundary may round the other way), plus, where a run took the panel GEMM's int8
    tier, its worst-case rounding bound (_int8_bound).
"""
from __future__ import annotations

import os
import subprocess
import sys
import textwrap

import numpy as np
import pytest

from onnxvq.ops.packing import pack_for_op, unpack_from_op
from onnxvq.ops.reference import vq_matmul_ref
from onnxvq.ops.schema import VQLayout
from tests.test_kernel import run_kernel

# Runs every case of an .npz file in one session each and saves the outputs.
RUNNER = textwrap.dedent("""
    import ctypes, sys
    import numpy as np
    import onnxruntime as ort
    import onnxvq
    from onnx import TensorProto, helper, numpy_helper
    from onnxvq.ops.schema import DOMAIN, DOMAIN_VERSION, OP_TYPE
    data = np.load(sys.argv[1], allow_pickle=True)
    out = {}
    for i in range(int(data["count"])):
        attrs = data[f"attrs{i}"].item()
        x = data[f"x{i}"]
        node = helper.make_node(OP_TYPE, ["X", "codes", "codebooks", "bias"], ["Y"], domain=DOMAIN, **attrs)
        graph = helper.make_graph([node], "g", [helper.make_tensor_value_info("X", TensorProto.FLOAT, ["b", x.shape[1]])],
            [helper.make_tensor_value_info("Y", TensorProto.FLOAT, None)],
            initializer=[numpy_helper.from_array(data[f"codes{i}"], "codes"),
                         numpy_helper.from_array(data[f"books{i}"], "codebooks"),
                         numpy_helper.from_array(data[f"bias{i}"], "bias")])
        model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17), helper.make_opsetid(DOMAIN, DOMAIN_VERSION)])
        model.ir_version = 10
        options = ort.SessionOptions()
        options.intra_op_num_threads = 2
        out[f"y{i}"] = onnxvq.session(model.SerializeToString(), options).run(None, {"X": x})[0]
    lib = ctypes.CDLL(onnxvq.library_path())
    lib.onnxvq_kernel_name.restype = ctypes.c_char_p
    out["kernel"] = np.array(lib.onnxvq_kernel_name().decode())
    out["int8"] = np.array(lib.onnxvq_int8_panels())
    path = lib.onnxvq_kernel_path_m
    path.restype = ctypes.c_char_p
    path.argtypes = [ctypes.c_int64] * 10
    for i in range(int(data["count"])):  # this run's table's path for each case
        a = data[f"attrs{i}"].item()
        out[f"path{i}"] = np.array(path(data[f"x{i}"].shape[0], a.get("format_version", 1), a["in_features"],
                                        a["out_features"], a["bits"], a["subvector_len"], a["stages"], a["axis"],
                                        a["group_size"], a["codebook_per_subspace"]).decode())
    np.savez(sys.argv[2], **out)
""")


def _cases():
    cases = []
    rng = np.random.default_rng(11)
    batches = (1, 2, 7, 64)
    i = 0
    # Format 2 (fast-scan): N around the 32-row block, K around the 16-bit flush (E = 512).
    for n in (1, 31, 32, 33, 65):
        for k, d in ((4, 4), (15, 4), (16, 4), (17, 4), (2044, 4), (2048, 4), (2052, 4),
                     (33, 3), (35, 5), (64, 8), (1539, 3)):
            cases.append((VQLayout.for_weight(k, n, bits=4, subvector_len=d, format_version=2),
                          batches[i % 4] if k < 1000 else 1 + (i % 2)))
            i += 1
    # Format 2 with residual stages and with row groups of 32 rows.
    cases.append((VQLayout.for_weight(40, 70, bits=4, subvector_len=4, stages=2, format_version=2), 7))
    cases.append((VQLayout.for_weight(24, 96, bits=4, subvector_len=3, group_size=32, format_version=2), 2))
    # Format 3 (byte-scan): N around the 64-row block, K around the 16-bit flush (E = 256).
    for n in (1, 63, 64, 65, 130):
        for k, d in ((4, 4), (9, 2), (1020, 4), (1024, 4), (1028, 4), (35, 5), (64, 8)):
            cases.append((VQLayout.for_weight(k, n, bits=8, subvector_len=d, format_version=3),
                          batches[i % 4] if k < 1000 else 1 + (i % 2)))
            i += 1
    cases.append((VQLayout.for_weight(40, 70, bits=8, subvector_len=4, stages=2, format_version=3), 7))
    cases.append((VQLayout.for_weight(24, 192, bits=8, subvector_len=3, group_size=64, format_version=3), 2))
    # Format 1: the float paths (8-bit PQ gathers, k-means, binary, RQ, axis 1).
    for n in (1, 7, 8, 9, 33):
        cases.append((VQLayout.for_weight(36, n, bits=8, subvector_len=4), batches[n % 4]))
        cases.append((VQLayout.for_weight(35, n, bits=8, subvector_len=5), 7))
        cases.append((VQLayout.for_weight(37, n, bits=4, subvector_len=1, codebook_per_subspace=0), 2))
        cases.append((VQLayout.for_weight(37, n, bits=1, subvector_len=1, codebook_per_subspace=0,
                                          group_size=1), 7))
        cases.append((VQLayout.for_weight(64, n, bits=1, subvector_len=1, codebook_per_subspace=0,
                                          group_size=1), 2))
        cases.append((VQLayout.for_weight(400, n, bits=8, subvector_len=3), 1))
        cases.append((VQLayout.for_weight(30, n, bits=3, subvector_len=3, stages=2), 64))
        cases.append((VQLayout.for_weight(30, max(n, 2), bits=4, subvector_len=2, axis=1), 7))
    data = {"count": len(cases)}
    for j, (layout, batch) in enumerate(cases):
        codes = rng.integers(0, layout.codebook_size, layout.codes_shape)
        data[f"attrs{j}"] = np.array(layout.attributes(), dtype=object)
        data[f"codes{j}"] = pack_for_op(codes, layout)
        data[f"books{j}"] = rng.standard_normal(layout.codebooks_shape).astype(np.float32)
        data[f"bias{j}"] = rng.standard_normal(layout.out_features).astype(np.float32)
        data[f"x{j}"] = rng.standard_normal((batch, layout.in_features)).astype(np.float32)
    return cases, data


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    cases, data = _cases()
    tmp = tmp_path_factory.mktemp("simd")
    np.savez(tmp / "cases.npz", **data)
    script = tmp / "runner.py"
    script.write_text(RUNNER)
    outputs = {}
    exact = {"ONNXVQ_EXACT_LUT": "1", "ONNXVQ_EXACT_GEMM": "1"}  # float tables and float panels
    runs = {"default": {}, "scalar": {"ONNXVQ_FORCE_SCALAR": "1"}, "exact": exact,
            "exact_scalar": {**exact, "ONNXVQ_FORCE_SCALAR": "1"}}
    for table in SIMD_TABLES:
        runs[f"isa_{table}"] = {"ONNXVQ_FORCE_ISA": table}
        runs[f"isa_exact_{table}"] = {"ONNXVQ_FORCE_ISA": table, **exact}
    for name, env in runs.items():
        full_env = {k: v for k, v in os.environ.items() if not k.startswith("ONNXVQ_")}
        subprocess.run([sys.executable, str(script), str(tmp / "cases.npz"), str(tmp / f"{name}.npz")],
                       env={**full_env, **env}, check=True, timeout=300)
        outputs[name] = dict(np.load(tmp / f"{name}.npz"))
    return cases, data, outputs


def _kernel_name():
    import ctypes

    import onnxvq
    lib = ctypes.CDLL(onnxvq.library_path())
    lib.onnxvq_kernel_name.restype = ctypes.c_char_p
    return lib.onnxvq_kernel_name().decode()


def _simd_tables() -> list[str]:
    """Every table this build and CPU have except scalar (the oracle), e.g. ["avx2", "avx512"]."""
    import ctypes

    import onnxvq
    lib = ctypes.CDLL(onnxvq.library_path())
    lib.onnxvq_kernel_tables.restype = ctypes.c_char_p
    return [t for t in lib.onnxvq_kernel_tables().decode().split(",") if t != "scalar"]


SIMD_TABLES = _simd_tables()


def _lut_step(layout, codebooks, x):
    """Largest uint8 quantization step (max table range / 255) over the rows of x."""
    T, S, d = layout.stages, layout.num_subspaces, layout.subvector_len
    xp = np.zeros((x.shape[0], S * d))
    xp[:, : layout.in_features] = x
    books = codebooks.astype(np.float64)  # [T, Gs, Gr, 16, d]
    step = 0.0
    for g in range(layout.row_groups):
        cb = books[:, :, g]  # [T, Gs, 16, d]
        if cb.shape[1] == 1:
            cb = np.repeat(cb, S, axis=1)
        lut = np.einsum("msj,tscj->mtsc", xp.reshape(-1, S, d), cb)
        step = max(step, float((lut.max(-1) - lut.min(-1)).max() / 255.0))
    return step


def _int8_bound(layout, packed, codebooks, x):
    """The int8 tier's worst case per output (vq_kernel.h, kInt8MaxRelError): X rounded to half
    a step of its row's max |x| / 127 and W_hat to half a step of its column's:
    |xw - x'w'| <= sum_k sx/2 |w| + sw/2 |x| + sx sw / 4 (a chunk's maximum is at most the row's)."""
    k = layout.in_features
    w = vq_matmul_ref(np.eye(k, dtype=np.float32), packed, codebooks, None, layout).astype(np.float64)
    xd = np.abs(x.astype(np.float64))
    sx = xd.max(axis=1, keepdims=True) / 127.0  # [M, 1]
    sw = np.abs(w).max(axis=0, keepdims=True) / 127.0  # [1, N]
    a = layout.attributes()
    if a["subvector_len"] == 1 and a["stages"] == 1 and a["axis"] == 0 and not a["codebook_per_subspace"]:
        # scalar codebooks quantize whole (km4 in fast-scan blocks): the group's largest codeword
        groups = np.abs(codebooks.astype(np.float64)).reshape(layout.row_groups, -1).max(axis=1)
        sw = np.maximum(sw, np.repeat(groups, a["group_size"])[: layout.out_features][None, :] / 127.0)
    return 1.01 * (0.5 * sx * np.abs(w).sum(axis=0) + 0.5 * xd.sum(axis=1, keepdims=True) * sw + 0.25 * k * sx * sw)


def _int8_tol(output, i, layout, data):
    """The int8 bound where this run took the panel GEMM's int8 tier for case i, else 0."""
    if not (int(output["int8"]) and str(output[f"path{i}"]) == "tile_gemm"):
        return 0.0
    return _int8_bound(layout, data[f"codes{i}"], data[f"books{i}"], data[f"x{i}"])


def _assert_within(got, want, tol, message):
    """|got - want| <= tol elementwise (tol a scalar or an array of per-output bounds)."""
    excess = np.abs(got.astype(np.float64) - want) - tol
    worst = np.unravel_index(np.argmax(excess), excess.shape) if excess.size else ()
    assert excess.size == 0 or excess[worst] <= 0, f"{message}: at {worst} {got[worst]} vs {want[worst]}"


def test_kernel_tables_ran(runs):
    _, _, outputs = runs
    assert str(outputs["scalar"]["kernel"]) == "scalar"
    assert str(outputs["default"]["kernel"]) in {"scalar", "avx2", "avx512", "avx512vbmi", "avx512vbmi-vnni", "avx512vbmi-vnni-amx", "neon"}


def test_every_table_ran_when_forced(runs):
    _, _, outputs = runs
    for table in SIMD_TABLES:
        assert str(outputs[f"isa_{table}"]["kernel"]) == table
        assert str(outputs[f"isa_exact_{table}"]["kernel"]) == table


def test_forcing_a_table_the_host_lacks_fails_kernel_creation(tmp_path):
    env = {**{k: v for k, v in os.environ.items() if not k.startswith("ONNXVQ_")}, "ONNXVQ_FORCE_ISA": "no_such_isa"}
    code = ("import numpy as np, onnxvq; from onnxvq.compress import compress_model; from onnxvq.config import "
            "build_plan; from tests import builders\n"
            "m = compress_model(builders.mlp_model(k=64, hidden=32), build_plan(None, {'matmul_runtime': 'op'})).model\n"
            "try:\n    onnxvq.session(m.SerializeToString())\nexcept Exception as e:\n    print(e)\n")
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=120,
                         cwd=os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    assert "ONNXVQ_FORCE_ISA=no_such_isa names no kernel table" in out.stdout, out.stdout + out.stderr


@pytest.mark.parametrize("precision", ["uint8", "exact"])
@pytest.mark.parametrize("table", ["default", *SIMD_TABLES])
def test_simd_matches_scalar(runs, precision, table):
    cases, data, outputs = runs
    run = table if table == "default" else f"isa_{table}"
    exact_run = "exact" if table == "default" else f"isa_exact_{table}"
    simd, scalar = (outputs[run], outputs["scalar"]) if precision == "uint8" else \
        (outputs[exact_run], outputs["exact_scalar"])
    bitwise = 0
    for i, (layout, _) in enumerate(cases):
        a, b = simd[f"y{i}"], scalar[f"y{i}"]
        assert a.shape == b.shape
        # Same path: the same bits (the C++ tests check every micro-kernel bit for bit). The
        # tables' thresholds differ, though (kTileGemmThresholds has rows per ISA), so near a
        # threshold one table may take the tile GEMM where the other does not: the fp32 tier.
        quantized = precision == "uint8" and layout.format_version in (2, 3)
        if np.array_equal(a, b):
            bitwise += 1
            continue
        tol = 1e-5 * max(1.0, float(np.abs(b).max())) + _int8_tol(simd, i, layout, data) + _int8_tol(scalar, i, layout, data)
        if quantized:
            # Tables have thresholds of their own (kTileGemmThresholds): one may run the uint8
            # tables where the other already runs the exact tile GEMM, so the uint8 tier's bound.
            entries = layout.stages * layout.num_subspaces
            tol += (0.5 * entries + 1.0) * 1.01 * _lut_step(layout, data[f"books{i}"], data[f"x{i}"])
        _assert_within(a, b, tol, f"case {i}: {layout}")
    assert bitwise > 10


@pytest.mark.parametrize("run", ["default", "scalar", "exact", *(f"isa_{t}" for t in SIMD_TABLES)])
def test_against_reference(runs, run):
    """Exact paths at 1e-5 of the output scale; uint8 tables within half a step per entry."""
    cases, data, outputs = runs
    for i, (layout, _) in enumerate(cases):
        expected = vq_matmul_ref(data[f"x{i}"], data[f"codes{i}"], data[f"books{i}"], data[f"bias{i}"], layout)
        tol = 1e-5 * max(1.0, float(np.abs(expected).max())) + _int8_tol(outputs[run], i, layout, data)
        if run != "exact" and layout.format_version in (2, 3):
            entries = layout.stages * layout.num_subspaces
            tol += (0.5 * entries + 1) * _lut_step(layout, data[f"books{i}"], data[f"x{i}"]) * 1.01
        _assert_within(outputs[run][f"y{i}"], expected, tol, f"case {i}: {layout}")


def test_int8_tier_ran_and_exact_turns_it_off(runs):
    """Where a table has the int8 tier, the default run takes it on the tile-path cases (their
    outputs differ from the float panels') and ONNXVQ_EXACT_GEMM=1 turns it off."""
    cases, _, outputs = runs
    assert int(outputs["exact"]["int8"]) == 0 and int(outputs["scalar"]["int8"]) == 0
    if not int(outputs["default"]["int8"]):
        return  # no int8 table on this CPU: nothing else to check
    tiled = [i for i in range(len(cases)) if str(outputs["default"][f"path{i}"]) == "tile_gemm"]
    differ = [i for i in tiled if not np.array_equal(outputs["default"][f"y{i}"], outputs["exact"][f"y{i}"])]
    assert len(tiled) >= 5 and len(differ) >= len(tiled) // 2, (len(tiled), len(differ))


def test_exact_fastscan_equals_format1(runs):
    """Formats 2 and 3's exact paths sum the same float tables in the same order as format 1's LUT path."""
    cases, data, outputs = runs
    checked = {2: 0, 3: 0}
    for i, (layout, _) in enumerate(cases):
        if layout.format_version not in checked or layout.row_groups != 1 or checked[layout.format_version] >= 12:
            continue
        # Same codes in format 1: the op must give the same bits as the exact fast-scan path
        # (where neither runs the tile GEMM at this batch: its rows differ per layout).
        v1 = VQLayout(**{**layout.attributes(), "format_version": 1})
        rows = data[f"x{i}"].shape[0]
        if "tile_gemm" in (_path_at(layout, rows), _path_at(v1, rows)):
            continue
        codes = unpack_from_op(data[f"codes{i}"], layout)
        y1 = run_kernel(v1, pack_for_op(codes, v1), data[f"books{i}"], data[f"bias{i}"], data[f"x{i}"])
        if str(outputs["exact"]["kernel"]) == _kernel_name() or layout.subvector_len not in (4, 8):
            np.testing.assert_array_equal(outputs["exact"][f"y{i}"], y1, err_msg=f"case {i}")
        else:
            np.testing.assert_allclose(outputs["exact"][f"y{i}"], y1, rtol=0,
                                       atol=1e-5 * max(1.0, float(np.abs(y1).max())))
        checked[layout.format_version] += 1
    assert min(checked.values()) >= 12, checked


# --- tile GEMM (many rows) ----------------------------------------------------------------
# At M >= a per-layout threshold (the chooser's table in vq_kernel.cc) the op decodes W_hat a
# tile at a time (128 inputs x up to 2048 outputs) and multiplies with ONNX Runtime's own Gemm.
# The tier: within 1e-5 of the output scale of the numpy reference, like every float path;
# bit-identical across thread counts (the op calls Gemm on at most 128 inputs at a time and
# adds the chunks itself, so MLAS's thread-dependent K blocking never splits a sum). Shapes: K
# around the 128-input chunk (127, 129, 300), N with tails and more than one output tile.

TILE_LAYOUTS = {
    "lut8_d4": VQLayout.for_weight(130, 65, bits=8, subvector_len=4, axis=0),
    "km5_wide": VQLayout.for_weight(300, 2100, bits=5, subvector_len=1, codebook_per_subspace=0),
    "km3_groups": VQLayout.for_weight(129, 130, bits=3, subvector_len=1, codebook_per_subspace=0,
                                      group_size=16),
    "pq8_axis1": VQLayout.for_weight(127, 130, bits=8, subvector_len=4, axis=1),
    "lut8_d8_rq": VQLayout.for_weight(65, 130, bits=8, subvector_len=8, axis=0, stages=2),
    "lut4_d3": VQLayout.for_weight(65, 63, bits=4, subvector_len=3, axis=0),
    "lut2_d1_groups": VQLayout.for_weight(31, 130, bits=2, subvector_len=1, axis=0, group_size=5),
    "direct_axis0": VQLayout.for_weight(130, 63, bits=6, subvector_len=2, axis=0, group_size=9),
    "direct_axis1": VQLayout.for_weight(65, 130, bits=4, subvector_len=3, axis=1, group_size=2,
                                        stages=2),
    "binary": VQLayout.for_weight(130, 65, bits=1, subvector_len=1, codebook_per_subspace=0,
                                  group_size=1),
}


def _path_at(layout: VQLayout, rows: int) -> str:
    import ctypes

    import onnxvq
    lib = ctypes.CDLL(onnxvq.library_path())
    fn = lib.onnxvq_kernel_path_m
    fn.restype = ctypes.c_char_p
    fn.argtypes = [ctypes.c_int64] * 10
    a = layout.attributes()
    return fn(rows, a.get("format_version", 1), a["in_features"], a["out_features"], a["bits"],
              a["subvector_len"], a["stages"], a["axis"], a["group_size"],
              a["codebook_per_subspace"]).decode()


def _threshold(layout: VQLayout) -> int:
    for rows in range(1, 129):
        if _path_at(layout, rows) == "tile_gemm":
            return rows
    pytest.fail(f"no tile_gemm up to 128 rows for {layout}")


@pytest.mark.parametrize("name", sorted(TILE_LAYOUTS))
def test_tile_gemm_around_threshold(name):
    from tests.test_kernel import random_case
    layout = TILE_LAYOUTS[name]
    threshold = _threshold(layout)
    assert _path_at(layout, threshold + 1) == "tile_gemm"
    if threshold > 1:
        assert _path_at(layout, threshold - 1) != "tile_gemm"
    packed, codebooks, bias = random_case(layout, seed=11)
    x = np.random.default_rng(12).standard_normal((threshold + 1, layout.in_features)).astype(np.float32)
    full = run_kernel(layout, packed, codebooks, bias, x)
    expected = vq_matmul_ref(x, packed, codebooks, bias, layout)
    scale = max(1.0, float(np.abs(expected).max()))
    np.testing.assert_allclose(full, expected, rtol=0, atol=1e-5 * scale)
    for threads in (2, 4):
        np.testing.assert_array_equal(run_kernel(layout, packed, codebooks, bias, x, threads=threads), full)
    for rows in {max(1, threshold - 1), threshold}:  # the small path below the threshold
        part = run_kernel(layout, packed, codebooks, bias, x[:rows], threads=2)
        np.testing.assert_allclose(part, expected[:rows], rtol=0, atol=1e-5 * scale)
