"""VQGather (embedding lookup on a compressed table) through onnxruntime.

Tiny models built in code: a table T[V, D] is quantized as the weight W = T^T [D, V] with every
method, and ``Gather(T, indices)`` becomes ``ai.onnxvq::VQGather(indices, codes, codebooks)``.
Tolerance tiers:
  * against CodedWeight.decode() (float32, stages summed in the kernel's order): bit for bit;
  * against the numpy reference vq_gather_ref (float64 decode): float32 rounding (rtol 1e-6).
The SIMD kernel table runs against ONNXVQ_FORCE_SCALAR=1 (and 1 vs 2 threads) in subprocesses:
bit for bit.
"""
from __future__ import annotations

import dataclasses
import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

import onnxvq
from onnxvq.config import BinaryConfig, KMeansConfig, PQConfig, RQConfig
from onnxvq.ops.packing import pack_for_op
from onnxvq.ops.reference import reference_ops, vq_gather_ref
from onnxvq.ops.schema import DOMAIN, DOMAIN_VERSION, GATHER_OP_TYPE, VQLayout
from onnxvq.quantizers import quantize

REPO = Path(__file__).resolve().parents[1]

# (name, config, V, D): awkward sizes (V = 1, 31, 33; D not a multiple of d; d = 1, 3, 5, 8, 17).
CASES = [
    ("kmeans4", KMeansConfig(bits=4), 33, 17),
    ("kmeans3-g5", KMeansConfig(bits=3, group_size=5), 31, 9),
    ("kmeans2-v1", KMeansConfig(bits=2), 1, 5),
    ("kmeans8-fp16", KMeansConfig(bits=8, codebook_dtype="float16"), 33, 40),
    ("binary", BinaryConfig(), 31, 13),
    ("binary-unscaled", BinaryConfig(scaled=False), 33, 3),
    ("pq-in-4bit-d3", PQConfig(bits=4, dim=3, axis="in"), 33, 17),
    ("pq-in-6bit-d8", PQConfig(bits=6, dim=8, axis="in"), 31, 21),
    ("pq-in-5bit-d17", PQConfig(bits=5, dim=17, axis="in"), 33, 40),
    ("pq-out-5bit-d2", PQConfig(bits=5, dim=2, axis="out"), 31, 11),
    ("pq-out-3bit-d5", PQConfig(bits=3, dim=5, axis="out", codebook_dtype="float16"), 33, 7),
    ("pq-in-1bit-d1", PQConfig(bits=1, dim=1, axis="in"), 33, 19),
    ("rq-in-3x3bit-d5", RQConfig(bits=3, dim=5, stages=3, axis="in"), 33, 12),
    ("rq-in-2x4bit-d1", RQConfig(bits=4, dim=1, stages=2, axis="in"), 31, 20),
    ("rq-out-2x2bit-d3", RQConfig(bits=2, dim=3, stages=2, axis="out"), 31, 5),
    ("rq-in-2x7bit-d4-fp16", RQConfig(bits=7, dim=4, stages=2, axis="in", codebook_dtype="float16"), 33, 18),
]
INDEX_SHAPES = [(), (5,), (2, 3), (0,)]


def table_for(name: str, V: int, D: int) -> np.ndarray:
    rng = np.random.default_rng(abs(hash(name)) % 2**32)
    return rng.standard_normal((V, D)).astype(np.float32)


def coded_table(name, config, V, D, format_version=None):
    """(layout, packed codes, codebooks, float32 decoded table [V, D])."""
    coded = quantize(table_for(name, V, D).T, config, seed=0)  # W = T^T: K = D, N = V
    layout = coded.layout
    if format_version is not None and format_version != layout.format_version:
        layout = dataclasses.replace(layout, format_version=format_version)
    packed = pack_for_op(coded.codes, layout)
    assert layout.table_shape == (V, D)
    return layout, packed, coded.codebooks, coded.decode().T


def gather_model(layout: VQLayout, packed, codebooks, index_dtype=TensorProto.INT64,
                 name="emb", index_shape=None) -> bytes:
    node = helper.make_node(GATHER_OP_TYPE, ["indices", "codes", "codebooks"], ["Y"], domain=DOMAIN,
                            name=name, **layout.attributes())
    graph = helper.make_graph(
        [node], "g", [helper.make_tensor_value_info("indices", index_dtype, index_shape)],
        [helper.make_tensor_value_info("Y", TensorProto.FLOAT,
                                       None if index_shape is None else [*index_shape, layout.in_features])],
        [numpy_helper.from_array(np.asarray(packed, np.uint8), "codes"),
         numpy_helper.from_array(np.asarray(codebooks), "codebooks")])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17),
                                                    helper.make_opsetid(DOMAIN, DOMAIN_VERSION)])
    model.ir_version = 8
    return model.SerializeToString()


def indices_for(V: int, shape, dtype, seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    idx = rng.integers(-V, V, size=shape)  # negatives count from the end
    if idx.size:
        idx.reshape(-1)[0] = -V  # both ends of the range
        idx.reshape(-1)[-1] = V - 1
    return np.asarray(idx, dtype=dtype)


@pytest.mark.parametrize("name,config,V,D", CASES, ids=[c[0] for c in CASES])
def test_vq_gather_matches_reference(name, config, V, D):
    layout, packed, books, decoded = coded_table(name, config, V, D)
    for dtype, onnx_type in ((np.int64, TensorProto.INT64), (np.int32, TensorProto.INT32)):
        sess = onnxvq.session(gather_model(layout, packed, books, onnx_type))
        for i, shape in enumerate(INDEX_SHAPES):
            idx = indices_for(V, shape, dtype, seed=i)
            y = sess.run(None, {"indices": idx})[0]
            assert y.dtype == np.float32 and y.shape == tuple(shape) + (D,)
            rows = np.where(idx < 0, idx + V, idx).astype(np.int64)
            np.testing.assert_array_equal(y, decoded[rows])  # same float32 sums: bit for bit
            np.testing.assert_allclose(y, vq_gather_ref(idx, packed, books, layout), rtol=1e-6, atol=1e-7)


@pytest.mark.parametrize("name,config,V,D", [c for c in CASES if c[0].startswith("pq-in-4bit")]
                         + [("pq-in-4bit-d4-v65", PQConfig(bits=4, dim=4, axis="in"), 65, 18),
                            ("kmeans4-v40", KMeansConfig(bits=4), 40, 7)])
@pytest.mark.parametrize("version", [1, 2])
def test_both_format_versions(name, config, V, D, version):
    layout, packed, books, decoded = coded_table(name, config, V, D, format_version=version)
    assert layout.format_version == version
    idx = indices_for(V, (4, 7), np.int64, seed=3)
    y = onnxvq.session(gather_model(layout, packed, books)).run(None, {"indices": idx})[0]
    np.testing.assert_array_equal(y, decoded[np.where(idx < 0, idx + V, idx)])
    np.testing.assert_allclose(y, vq_gather_ref(idx, packed, books, layout), rtol=1e-6, atol=1e-7)


@pytest.mark.parametrize("V", [1, 63, 64, 65, 130])
def test_byte_scan_format(V):
    """format_version 3 (8-bit codes in blocks of 64 rows): the same table rows as format 1."""
    layout, packed, books, decoded = coded_table(f"pq-in-8bit-d4-v{V}", PQConfig(bits=8, dim=4, axis="in"), V, 18,
                                                 format_version=3)
    assert layout.format_version == 3 and packed.size == -(-V // 64) * layout.num_subspaces * 64
    idx = indices_for(V, (5, 3), np.int64, seed=4)
    y = onnxvq.session(gather_model(layout, packed, books)).run(None, {"indices": idx})[0]
    np.testing.assert_array_equal(y, decoded[np.where(idx < 0, idx + V, idx)])
    np.testing.assert_allclose(y, vq_gather_ref(idx, packed, books, layout), rtol=1e-6, atol=1e-7)


def test_replaces_gather_exactly_on_the_decoded_table():
    """The op is Gather on its decoded table: compare with ORT's own Gather on T_hat."""
    layout, packed, books, decoded = coded_table("pq-in-6bit-d8", PQConfig(bits=6, dim=8), 31, 21)
    node = helper.make_node("Gather", ["table", "indices"], ["Y"], axis=0)
    graph = helper.make_graph([node], "g", [helper.make_tensor_value_info("indices", TensorProto.INT64, None)],
                              [helper.make_tensor_value_info("Y", TensorProto.FLOAT, None)],
                              [numpy_helper.from_array(np.ascontiguousarray(decoded), "table")])
    dense = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    dense.ir_version = 8
    idx = indices_for(31, (3, 4), np.int64, seed=9)
    want = onnxvq.session(dense.SerializeToString()).run(None, {"indices": idx})[0]
    got = onnxvq.session(gather_model(layout, packed, books)).run(None, {"indices": idx})[0]
    np.testing.assert_array_equal(got, want)


def test_onnx_reference_evaluator_runs_vq_gather():
    from onnx.reference import ReferenceEvaluator

    layout, packed, books, decoded = coded_table("rq-in-3x3bit-d5", RQConfig(bits=3, dim=5, stages=3), 33, 12)
    model = onnx.load_from_string(gather_model(layout, packed, books, index_shape=["a", "b"]))
    onnx.checker.check_model(model, full_check=True)  # a valid model with the custom domain imported
    idx = indices_for(33, (2, 3), np.int64, seed=1)
    (y,) = ReferenceEvaluator(model, new_ops=reference_ops()).run(None, {"indices": idx})
    np.testing.assert_allclose(y, decoded[np.where(idx < 0, idx + 33, idx)], rtol=1e-6, atol=1e-7)
    with pytest.raises(ValueError, match="out of range"):
        ReferenceEvaluator(model, new_ops=reference_ops()).run(None, {"indices": np.array([33])})


def test_reference_index_rules():
    layout, packed, books, decoded = coded_table("kmeans4", KMeansConfig(bits=4), 33, 17)
    np.testing.assert_array_equal(vq_gather_ref(np.int32(-1), packed, books, layout), decoded[32])
    for bad in (33, -34, 2**40):
        with pytest.raises(ValueError, match=f"index {bad} is out of range"):
            vq_gather_ref(np.array([0, bad]), packed, books, layout)
    with pytest.raises(ValueError, match="int32 or int64"):
        vq_gather_ref(np.array([0.0]), packed, books, layout)


@pytest.mark.parametrize("bad", [33, -34, 2**31 - 1, -2**31, 2**62])
def test_out_of_range_index_is_a_clear_error(bad):
    layout, packed, books, _ = coded_table("kmeans4", KMeansConfig(bits=4), 33, 17)
    dtype, onnx_type = (np.int32, TensorProto.INT32) if abs(bad) < 2**31 else (np.int64, TensorProto.INT64)
    sess = onnxvq.session(gather_model(layout, packed, books, onnx_type, name="word_embeddings"))
    with pytest.raises(Exception) as info:
        sess.run(None, {"indices": np.array([[0, 5], [bad, 1]], dtype)})
    message = str(info.value)
    assert "VQGather node 'word_embeddings'" in message and str(bad) in message and "V = out_features = 33" \
        in message, message
    # The session stays usable.
    assert sess.run(None, {"indices": np.array([32, -33], dtype)})[0].shape == (2, 17)


def test_output_shape_is_inferred():
    layout, packed, books, _ = coded_table("pq-out-5bit-d2", PQConfig(bits=5, dim=2, axis="out"), 31, 11)
    model = onnx.load_from_string(gather_model(layout, packed, books))
    model.graph.input[0].type.tensor_type.shape.dim.add().dim_param = "batch"
    model.graph.input[0].type.tensor_type.shape.dim.add().dim_value = 3
    del model.graph.output[0].type.tensor_type.shape.dim[:]
    sess = onnxvq.session(model.SerializeToString())
    y = sess.run(None, {"indices": np.zeros((2, 3), np.int64)})[0]
    assert y.shape == (2, 3, 11)


# --- SIMD vs scalar, threads: each kernel table in its own process ---------------------------

CHILD = textwrap.dedent("""
    import ctypes, json, sys
    import numpy as np
    import onnxruntime as ort
    import onnxvq
    data = np.load(sys.argv[1])
    out = {}
    for key in data.files:
        if not key.startswith("model"):
            continue
        i = key[5:]
        for threads in (1, 2):
            options = ort.SessionOptions()
            options.intra_op_num_threads = threads
            sess = onnxvq.session(data[key].tobytes(), options)
            out[f"y{i}_t{threads}"] = sess.run(None, {"indices": data[f"idx{i}"]})[0]
    lib = ctypes.CDLL(onnxvq.library_path())
    lib.onnxvq_kernel_name.restype = ctypes.c_char_p
    out["kernel"] = np.array(lib.onnxvq_kernel_name().decode())
    np.savez(sys.argv[2], **out)
""")


def test_simd_equals_scalar_and_threads_do_not_matter(tmp_path):
    arrays, expected = {}, {}
    for i, (name, config, V, D) in enumerate(CASES):
        layout, packed, books, decoded = coded_table(name, config, V, D)
        idx = indices_for(V, (4096,) if i % 3 == 0 else (64, 3), np.int64, seed=i)  # many rows: several tasks
        arrays[f"model{i}"] = np.frombuffer(gather_model(layout, packed, books), np.uint8)
        arrays[f"idx{i}"] = idx
        expected[i] = decoded[np.where(idx < 0, idx + V, idx)]
    data = tmp_path / "cases.npz"
    np.savez(data, **arrays)
    script = tmp_path / "child.py"
    script.write_text(CHILD)
    results = {}
    for mode in ("default", "scalar"):
        env = {k: v for k, v in os.environ.items() if k != "ONNXVQ_FORCE_SCALAR"}
        if mode == "scalar":
            env["ONNXVQ_FORCE_SCALAR"] = "1"
        out = tmp_path / f"{mode}.npz"
        proc = subprocess.run([sys.executable, str(script), str(data), str(out)], env=env, cwd=REPO,
                              capture_output=True, text=True, timeout=300)
        assert proc.returncode == 0, proc.stderr[-3000:]
        results[mode] = dict(np.load(out))
    assert str(results["scalar"]["kernel"]) == "scalar"
    for i in expected:
        for mode in ("default", "scalar"):
            for threads in (1, 2):
                np.testing.assert_array_equal(results[mode][f"y{i}_t{threads}"], expected[i],
                                              err_msg=f"{CASES[i][0]} {mode} threads={threads} "
                                                      f"kernel={results[mode]['kernel']}")
