"""The C++ VQMatMul kernel against the numpy oracle, and its input validation.

Every case builds a one-node model in code, runs it through ``onnxvq.session`` and compares
with ``vq_matmul_ref`` (tier 1: kernel vs reference, tight). Validation cases check that a
bad model or tensor gives an onnxruntime error naming the problem, never a crash.
"""
from __future__ import annotations

import ctypes
import itertools
import os
import subprocess
import sys

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper, numpy_helper

import onnxvq
from onnxvq.ops.packing import pack_codes
from onnxvq.ops.reference import vq_matmul_ref
from onnxvq.ops.schema import DOMAIN, DOMAIN_VERSION, OP_TYPE, VQLayout

# Kernel vs reference: float32 accumulation against float64, relative to the output scale.
RTOL_SCALE = 1e-5

SIZES = (1, 3, 7, 17, 33, 100)


# --- model building ---------------------------------------------------------------------

def _value_info(name, elem_type, dims):
    return helper.make_tensor_value_info(name, elem_type, dims)


def vq_model(attrs: dict, *, x_dims, constants: dict | None = None, inputs: dict | None = None,
             bias: str = "none", x_type=TensorProto.FLOAT) -> bytes:
    """One VQMatMul node. ``constants`` become initializers, ``inputs`` ({name: (type, dims)})
    graph inputs; bias is "none" (3 node inputs), "empty" (empty 4th name) or "present"."""
    constants, inputs = constants or {}, inputs or {}
    node_inputs = ["X", "codes", "codebooks"]
    if bias == "present":
        node_inputs.append("bias")
    elif bias == "empty":
        node_inputs.append("")
    node = helper.make_node(OP_TYPE, node_inputs, ["Y"], domain=DOMAIN, name="vq_node", **attrs)
    graph = helper.make_graph(
        [node], "vq",
        [_value_info("X", x_type, x_dims)] + [_value_info(n, t, d) for n, (t, d) in inputs.items()],
        [_value_info("Y", TensorProto.FLOAT, None)],
        initializer=[numpy_helper.from_array(a, n) for n, a in constants.items()],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17),
                                                    helper.make_opsetid(DOMAIN, DOMAIN_VERSION)])
    model.ir_version = 10
    return model.SerializeToString()


def make_session(model: bytes, threads: int = 1):
    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    return onnxvq.session(model, options)


def random_case(layout: VQLayout, *, codebook_dtype=np.float32, with_bias=True, seed=0):
    rng = np.random.default_rng(seed)
    codes = rng.integers(0, layout.codebook_size, size=layout.codes_shape)
    packed = pack_codes(codes, layout.bits)
    codebooks = rng.standard_normal(layout.codebooks_shape).astype(codebook_dtype)
    bias = rng.standard_normal(layout.out_features).astype(np.float32) if with_bias else None
    return packed, codebooks, bias


def run_kernel(layout, packed, codebooks, bias, x, *, threads=1, bias_mode=None):
    constants = {"codes": packed, "codebooks": codebooks}
    if bias is not None:
        constants["bias"] = bias
    mode = bias_mode or ("present" if bias is not None else "none")
    x_dims = [f"d{i}" for i in range(x.ndim - 1)] + [layout.in_features]
    model = vq_model(layout.attributes(), x_dims=x_dims, constants=constants, bias=mode)
    return make_session(model, threads).run(None, {"X": x})[0]


def assert_matches_reference(layout, packed, codebooks, bias, x, **kwargs):
    y = run_kernel(layout, packed, codebooks, bias, x, **kwargs)
    expected = vq_matmul_ref(x, packed, codebooks, bias, layout)
    assert y.dtype == np.float32 and y.shape == expected.shape
    scale = max(1.0, float(np.abs(expected).max(initial=0.0)))
    np.testing.assert_allclose(y, expected, rtol=0, atol=RTOL_SCALE * scale)
    return y


def check_layout(layout, *, batch_shape=(7,), seed=0, **case_kwargs):
    packed, codebooks, bias = random_case(layout, seed=seed, **case_kwargs)
    x = np.random.default_rng(seed + 1).standard_normal((*batch_shape, layout.in_features))
    return assert_matches_reference(layout, packed, codebooks, bias, x.astype(np.float32))


# --- the sweep ----------------------------------------------------------------------------
# Each list below feeds one parametrized test; test_sweep_reaches_every_path checks that
# together they take every kernel path on both axes.

def _size(i):
    return SIZES[i % len(SIZES)]


BITS_AND_D = [
    VQLayout.for_weight(_size(i + 2), _size(5 * i + 3), bits=bits, subvector_len=d, axis=axis)
    for i, (axis, bits, d) in enumerate(itertools.product((0, 1), range(1, 9), (1, 2, 3, 4, 5, 8)))
]

SHAPES = [
    VQLayout.for_weight(k, n, bits=3, subvector_len=3, axis=axis, stages=2)
    for axis, k, n in itertools.product((0, 1), SIZES, SIZES)
]


def _group_layouts():
    layouts = []
    for axis, variant, per_subspace, d, bits in itertools.product(
            (0, 1), ("one", "middle", "all"), (0, 1), (1, 4), (1, 4, 8)):
        k, n = (33, 17) if axis == 0 else (17, 33)
        rows = n if axis == 0 else k
        group_size = {"one": 1, "middle": 5, "all": rows}[variant]
        layouts.append(VQLayout.for_weight(k, n, bits=bits, subvector_len=d, axis=axis,
                                           group_size=group_size,
                                           codebook_per_subspace=per_subspace))
    # group sizes at and above 2^bits, which use one table per row group
    for axis, d in itertools.product((0, 1), (1, 3)):
        layouts.append(VQLayout.for_weight(100, 100, bits=2, subvector_len=d, axis=axis,
                                           group_size=33, codebook_per_subspace=1))
        layouts.append(VQLayout.for_weight(100, 100, bits=3, subvector_len=d, axis=axis,
                                           group_size=8, codebook_per_subspace=0))
    return layouts


GROUPS = _group_layouts()

# Scalar codebooks (d = 1, one codebook per row group): binary and k-means layouts.
SCALAR_CODEBOOKS = [
    VQLayout.for_weight(k, 17, bits=bits, subvector_len=1, axis=0, group_size=group_size,
                        codebook_per_subspace=0)
    for bits, k, group_size in itertools.product(range(1, 9), (33, 100, 300), (1, 4, 17))
]

STAGES = [(VQLayout.for_weight(33, 17, bits=4, subvector_len=2, axis=axis, stages=stages), dtype, bias)
          for axis, stages, dtype, bias in itertools.product((0, 1), (1, 2, 3),
                                                              (np.float32, np.float16), (True, False))]

def _random_cases(count, seed=2024):
    """Seeded draws from the whole parameter space: (layout, codebook dtype, bias, batch)."""
    rng = np.random.default_rng(seed)
    cases = []
    while len(cases) < count:
        axis = int(rng.integers(2))
        k, n = (int(v) for v in rng.choice(SIZES, 2))
        rows = n if axis == 0 else k
        group_size = int(rng.choice([1, max(1, rows // 3), rows]))
        layout = VQLayout.for_weight(k, n, bits=int(rng.integers(1, 9)),
                                     subvector_len=int(rng.choice([1, 2, 3, 4, 5, 8])), axis=axis,
                                     stages=int(rng.integers(1, 4)), group_size=group_size,
                                     codebook_per_subspace=int(rng.integers(2)))
        batch = tuple(int(v) for v in rng.choice([1, 2, 7, 64], size=int(rng.integers(1, 4))))
        cases.append((layout, rng.choice([np.float32, np.float16]), bool(rng.integers(2)), batch))
    return cases


RANDOM = _random_cases(300)

# One layout per kernel path (and both direct variants).
PATH_LAYOUTS = {
    "lut": VQLayout.for_weight(100, 33, bits=8, subvector_len=4, axis=0, stages=2),
    "row_buckets": VQLayout.for_weight(100, 33, bits=1, subvector_len=1, axis=0, group_size=1,
                                       codebook_per_subspace=0),
    "column_buckets": VQLayout.for_weight(33, 100, bits=3, subvector_len=2, axis=1, stages=2),
    "direct_axis0": VQLayout.for_weight(100, 33, bits=8, subvector_len=3, axis=0, group_size=1),
    "direct_axis1": VQLayout.for_weight(33, 100, bits=5, subvector_len=2, axis=1, group_size=3),
}

BATCH_SHAPES = [(1,), (2,), (7,), (64,), (1024,), (2, 3), (2, 3, 4), (5, 1, 2)]


@pytest.mark.parametrize("layout", BITS_AND_D, ids=str)
def test_bits_and_subvector_lengths(layout):
    check_layout(layout)


@pytest.mark.parametrize("layout", SHAPES, ids=str)
def test_odd_shapes_and_partial_subspaces(layout):
    check_layout(layout, batch_shape=(3,))


@pytest.mark.parametrize("layout", GROUPS, ids=str)
def test_row_groups_and_shared_codebooks(layout):
    check_layout(layout, batch_shape=(2,), codebook_dtype=np.float16)


@pytest.mark.parametrize("layout", SCALAR_CODEBOOKS, ids=str)
def test_scalar_codebooks(layout):
    check_layout(layout, batch_shape=(5,))


@pytest.mark.parametrize("layout,dtype,with_bias", STAGES, ids=str)
def test_stages_dtypes_bias(layout, dtype, with_bias):
    check_layout(layout, codebook_dtype=dtype, with_bias=with_bias)


@pytest.mark.parametrize("layout,dtype,with_bias,batch_shape", RANDOM, ids=str)
def test_random_combinations(layout, dtype, with_bias, batch_shape):
    check_layout(layout, batch_shape=batch_shape, codebook_dtype=dtype, with_bias=with_bias)


@pytest.mark.parametrize("batch_shape", BATCH_SHAPES, ids=str)
@pytest.mark.parametrize("path", sorted(PATH_LAYOUTS))
def test_batch_sizes_and_ranks(path, batch_shape):
    check_layout(PATH_LAYOUTS[path], batch_shape=batch_shape)


@pytest.mark.parametrize("path", sorted(PATH_LAYOUTS))
def test_rank1_input(path):
    layout = PATH_LAYOUTS[path]
    packed, codebooks, bias = random_case(layout)
    x = np.random.default_rng(3).standard_normal(layout.in_features).astype(np.float32)
    y = assert_matches_reference(layout, packed, codebooks, bias, x)
    assert y.shape == (layout.out_features,)


@pytest.mark.parametrize("batch_shape", [(0,), (2, 0), (0, 3)], ids=str)
def test_empty_batch_gives_empty_output(batch_shape):
    layout = PATH_LAYOUTS["lut"]
    packed, codebooks, bias = random_case(layout)
    x = np.zeros((*batch_shape, layout.in_features), np.float32)
    y = run_kernel(layout, packed, codebooks, bias, x)
    assert y.shape == (*batch_shape, layout.out_features)


@pytest.mark.parametrize("path", sorted(PATH_LAYOUTS))
def test_any_code_bytes_are_valid(path):
    """Every byte stream of the right length decodes in bounds: codes are bits-wide fields."""
    layout = PATH_LAYOUTS[path]
    _, codebooks, bias = random_case(layout)
    x = np.random.default_rng(4).standard_normal((3, layout.in_features)).astype(np.float32)
    for packed in (np.full(layout.packed_nbytes, 0xFF, np.uint8),
                   np.random.default_rng(5).integers(0, 256, layout.packed_nbytes).astype(np.uint8)):
        assert_matches_reference(layout, packed, codebooks, bias, x)


def test_empty_bias_name_means_no_bias():
    layout = PATH_LAYOUTS["column_buckets"]
    packed, codebooks, _ = random_case(layout, with_bias=False)
    x = np.random.default_rng(6).standard_normal((4, layout.in_features)).astype(np.float32)
    y = run_kernel(layout, packed, codebooks, None, x, bias_mode="empty")
    expected = vq_matmul_ref(x, packed, codebooks, None, layout)
    np.testing.assert_allclose(y, expected, rtol=0, atol=RTOL_SCALE * max(1.0, np.abs(expected).max()))


def test_float16_codebooks_convert_exactly():
    """Subnormal, zero, signed and extreme half values widen exactly."""
    layout = VQLayout.for_weight(8, 6, bits=2, subvector_len=2, axis=0)
    special = np.array([0.0, -0.0, 6e-8, -6e-8, 1e-5, 65504.0, -65504.0, 0.1, 1.0 / 3.0],
                       dtype=np.float16)
    codebooks = np.resize(special, layout.codebooks_shape)
    packed, _, _ = random_case(layout)
    x = np.eye(8, dtype=np.float32)  # picks single weights: Y = W_hat exactly
    y = run_kernel(layout, packed, codebooks, None, x)
    from onnxvq.ops.reference import decode_weight
    from onnxvq.ops.packing import unpack_codes
    w = decode_weight(layout, unpack_codes(packed, layout.bits, layout.num_codes), codebooks)
    np.testing.assert_array_equal(y, w.astype(np.float32))


def test_float16_codebooks_read_every_call_unless_constant():
    """Constant float16 codebooks are widened once per node; codebooks fed as a graph input are
    read again on every call (two calls, two sets of values, each matches the reference)."""
    layout = VQLayout.for_weight(64, 48, bits=4, subvector_len=2, axis=0)
    packed, books, _ = random_case(layout, codebook_dtype=np.float16, with_bias=False, seed=3)
    x = np.random.default_rng(4).standard_normal((5, 64)).astype(np.float32)
    fed = make_session(vq_model(layout.attributes(), x_dims=["m", 64], constants={"codes": packed},
                                inputs={"codebooks": (TensorProto.FLOAT16, list(books.shape))}))
    const = make_session(vq_model(layout.attributes(), x_dims=["m", 64],
                                  constants={"codes": packed, "codebooks": books}))
    for scale in (1.0, -2.0):
        values = (books.astype(np.float32) * scale).astype(np.float16)
        expected = vq_matmul_ref(x, packed, values, None, layout)
        atol = RTOL_SCALE * max(1.0, float(np.abs(expected).max()))
        np.testing.assert_allclose(fed.run(None, {"X": x, "codebooks": values})[0], expected, rtol=0, atol=atol)
    expected = vq_matmul_ref(x, packed, books, None, layout)
    for _ in range(2):
        np.testing.assert_allclose(const.run(None, {"X": x})[0], expected, rtol=0,
                                   atol=RTOL_SCALE * max(1.0, float(np.abs(expected).max())))


# --- properties: threads, batch, dispatch ---------------------------------------------------

BIG_LAYOUTS = {
    "lut": VQLayout.for_weight(256, 300, bits=8, subvector_len=4, axis=0, stages=2),
    "decode_dot": VQLayout.for_weight(256, 300, bits=2, subvector_len=1, axis=0,
                                      codebook_per_subspace=0, group_size=7),
    "row_buckets": VQLayout.for_weight(256, 300, bits=2, subvector_len=1, axis=0, stages=2,
                                       codebook_per_subspace=0, group_size=7),
    "column_buckets": VQLayout.for_weight(256, 300, bits=8, subvector_len=1, axis=1),
    "direct_axis0": VQLayout.for_weight(256, 300, bits=6, subvector_len=2, axis=0, group_size=9),
    "direct_axis1": VQLayout.for_weight(256, 300, bits=4, subvector_len=3, axis=1, group_size=2),
}


@pytest.mark.parametrize("path", sorted(BIG_LAYOUTS))
def test_thread_count_does_not_change_results_and_batch_stays_in_tier(path):
    layout = BIG_LAYOUTS[path]
    packed, codebooks, bias = random_case(layout, seed=7)
    x = np.random.default_rng(8).standard_normal((96, layout.in_features)).astype(np.float32)
    one = assert_matches_reference(layout, packed, codebooks, bias, x, threads=1)
    four = run_kernel(layout, packed, codebooks, bias, x, threads=4)
    np.testing.assert_array_equal(one, four)
    # A single row takes a small-batch path and 96 rows the tile GEMM: another summation
    # order, so the same row agrees within the fp32 tier, not bit for bit.
    single_rows = np.concatenate([run_kernel(layout, packed, codebooks, bias, x[i:i + 1], threads=4)
                                  for i in (0, 50, 95)])
    scale = max(1.0, float(np.abs(one).max()))
    np.testing.assert_allclose(single_rows, one[[0, 50, 95]], rtol=0, atol=RTOL_SCALE * scale)


def _library():
    lib = ctypes.CDLL(onnxvq.library_path())
    lib.onnxvq_kernel_name.restype = ctypes.c_char_p
    lib.onnxvq_kernel_path.restype = ctypes.c_char_p
    lib.onnxvq_kernel_path.argtypes = [ctypes.c_int64] * 8
    return lib


def kernel_path(layout: VQLayout) -> str:
    a = layout.attributes()
    return _library().onnxvq_kernel_path(
        a["in_features"], a["out_features"], a["bits"], a["subvector_len"], a["stages"], a["axis"],
        a["group_size"], a["codebook_per_subspace"]).decode()


def test_sweep_reaches_every_path():
    layouts = (BITS_AND_D + SHAPES + GROUPS + SCALAR_CODEBOOKS + [s[0] for s in STAGES] + [r[0] for r in RANDOM]
               + list(PATH_LAYOUTS.values())
               + list(BIG_LAYOUTS.values()))
    reached = {(kernel_path(layout), layout.axis) for layout in layouts}
    assert reached >= {("lut", 0), ("row_buckets", 0), ("decode_dot", 0), ("direct", 0), ("bit_lut", 0),
                       ("column_buckets", 1), ("direct", 1)}
    for name, layout in {**PATH_LAYOUTS, **BIG_LAYOUTS}.items():
        assert kernel_path(layout) == name.replace("_axis0", "").replace("_axis1", "")


def test_force_scalar_environment_variable():
    code = ("import ctypes, onnxvq; lib = ctypes.CDLL(onnxvq.library_path()); "
            "lib.onnxvq_kernel_name.restype = ctypes.c_char_p; print(lib.onnxvq_kernel_name().decode())")
    env = {**os.environ, "ONNXVQ_FORCE_SCALAR": "1"}
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "scalar"
    assert _library().onnxvq_kernel_name().decode() in {"scalar", "avx2", "avx512", "avx512vbmi", "avx512vbmi-vnni", "avx512vbmi-vnni-amx", "neon"}


# --- validation: errors, not crashes ----------------------------------------------------------

VALID = VQLayout.for_weight(7, 5, bits=3, subvector_len=2, axis=0)


def _feed_model(attrs, *, codebook_type=TensorProto.FLOAT, x_dims=("b", "k"), bias=True,
                x_type=TensorProto.FLOAT):
    # Unknown ranks, so that ORT's own input checks leave every shape to the kernel.
    inputs = {"codes": (TensorProto.UINT8, None), "codebooks": (codebook_type, None)}
    if bias:
        inputs["bias"] = (TensorProto.FLOAT, None)
    return vq_model(attrs, x_dims=list(x_dims), inputs=inputs, x_type=x_type,
                    bias="present" if bias else "none")


def _valid_feeds(layout=VALID):
    packed, codebooks, bias = random_case(layout)
    x = np.ones((2, layout.in_features), np.float32)
    return {"X": x, "codes": packed, "codebooks": codebooks, "bias": bias}


def _expect_ort_error(match, create, run=None):
    with pytest.raises(Exception, match=match) as info:
        session = create()
        if run is not None:
            run(session)
    assert type(info.value).__module__.startswith("onnxruntime"), type(info.value)
    assert "vq_node" in str(info.value) or "VQMatMul" in str(info.value)


def _bad_run(match, feeds_update, **model_kwargs):
    """A model whose tensors are fed at run time; the run must fail with `match`."""
    feeds = {**_valid_feeds(), **feeds_update}
    if not model_kwargs.get("bias", True):
        feeds.pop("bias")
    model = _feed_model(VALID.attributes(), **model_kwargs)
    _expect_ort_error(match, lambda: make_session(model), lambda s: s.run(None, feeds))


def test_valid_feeds_run():
    feeds = _valid_feeds()
    y = make_session(_feed_model(VALID.attributes())).run(None, feeds)[0]
    expected = vq_matmul_ref(feeds["X"], feeds["codes"], feeds["codebooks"], feeds["bias"], VALID)
    np.testing.assert_allclose(y, expected, rtol=0, atol=1e-5 * max(1.0, np.abs(expected).max()))


@pytest.mark.parametrize("delta", [-1, 1])
def test_wrong_codes_length(delta):
    packed = _valid_feeds()["codes"]
    bad = np.zeros(packed.size + delta, np.uint8)
    _bad_run(rf"vq_node.*codes must have shape \[{packed.size}\].*got \[{bad.size}\]", {"codes": bad})


def test_codes_must_be_1d():
    packed = _valid_feeds()["codes"]
    _bad_run(r"vq_node.*codes must have shape \[\d+\].*got \[1, ", {"codes": packed.reshape(1, -1)})


@pytest.mark.parametrize("shape", [(1, 4, 2, 8, 2), (1, 4, 1, 8, 3), (4, 1, 8, 2), (1, 4, 1, 7, 2), (2, 4, 1, 8, 2)],
                         ids=str)
def test_wrong_codebooks_shape(shape):
    _bad_run(r"vq_node.*codebooks must have shape \[1, 4, 1, 8, 2\].*got",
             {"codebooks": np.zeros(shape, np.float32)})
    assert VALID.codebooks_shape == (1, 4, 1, 8, 2)


def test_codebooks_int32_dtype():
    _bad_run(r"vq_node.*codebooks must be float32 or float16, got int32",
             {"codebooks": np.zeros(VALID.codebooks_shape, np.int32)}, codebook_type=TensorProto.INT32)


def test_x_last_dim_not_k_at_run_time():
    _bad_run(r"vq_node.*X has last dimension 6, expected in_features K = 7",
             {"X": np.ones((2, 6), np.float32)})


def test_x_last_dim_not_k_in_declared_shape():
    model = _feed_model(VALID.attributes(), x_dims=("b", 6))
    feeds = {**_valid_feeds(), "X": np.ones((2, 6), np.float32)}
    _expect_ort_error(r"vq_node.*X has last dimension 6, expected in_features K = 7",
                      lambda: make_session(model), lambda s: s.run(None, feeds))


def test_x_scalar():
    _bad_run(r"vq_node.*X must have rank >= 1", {"X": np.ones((), np.float32)}, x_dims=())


@pytest.mark.parametrize("shape", [(6,), (1, 5), ()], ids=str)
def test_bias_wrong_shape(shape):
    _bad_run(r"vq_node.*bias must have shape \[5\].*got", {"bias": np.zeros(shape, np.float32)})


def _bad_attributes(match, **changes):
    attrs = {**VALID.attributes(), **changes}
    attrs = {k: v for k, v in attrs.items() if v is not None}
    model = _feed_model(attrs)
    _expect_ort_error(match, lambda: make_session(model), lambda s: s.run(None, _valid_feeds()))


def test_unknown_format_version():
    _bad_attributes(r"vq_node.*format_version 7 is not supported by this library \(supports 1, 2, 3\); "
                    r"upgrade onnxvq", format_version=7)


@pytest.mark.parametrize("bits", [9, 0, -3])
def test_bits_out_of_range(bits):
    _bad_attributes(r"vq_node.*bits must be|vq_node.*'bits' must be >= 1", bits=bits)


@pytest.mark.parametrize("changes,match", [
    ({"num_subspaces": 3}, r"num_subspaces must be ceil\(7 / 2\) = 4, got 3"),
    ({"group_size": 6}, r"group_size 6 exceeds the 5 rows"),
    ({"axis": 2}, r"axis must be 0 or 1, got 2"),
    ({"codebook_per_subspace": 2}, r"codebook_per_subspace must be 0 or 1"),
    ({"stages": 0}, r"'stages' must be >= 1, got 0"),
    ({"stages": None}, r"required int attribute 'stages' is missing"),
    ({"stages": 1 << 40, "in_features": 1 << 40, "num_subspaces": 1 << 39},
     r"too large to address"),
], ids=str)
def test_bad_attributes(changes, match):
    _bad_attributes(r"vq_node.*" + match, **changes)
