"""Hostile VQGather models: crafted attributes, tensors and indices, each run by onnxruntime in a
child process. Every case must end in an onnxruntime error (ours names the node and what is
wrong), never a crash, never a traceback from our code; only the controls may run.
"""
from __future__ import annotations

import json
import subprocess
import sys
import textwrap
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]

CRAFT_SCRIPT = textwrap.dedent(r"""
    import json, sys
    import numpy as np
    from onnx import TensorProto, helper, numpy_helper
    import onnxvq
    from onnxvq.ops.packing import pack_for_op
    from onnxvq.ops.schema import DOMAIN, GATHER_OP_TYPE, VQLayout

    V, D = 10, 24
    rng = np.random.default_rng(0)
    layout = VQLayout.for_weight(D, V, bits=3, subvector_len=5, stages=2, group_size=4)
    codes = pack_for_op(rng.integers(0, 8, layout.codes_shape), layout)
    books = rng.standard_normal(layout.codebooks_shape).astype(np.float32)
    good = layout.attributes()

    def model(attrs, codes=codes, books=books, drop=(), index_type=TensorProto.INT64, inputs=None):
        attrs = {k: v for k, v in attrs.items() if k not in drop}
        node = helper.make_node(GATHER_OP_TYPE, inputs or ["indices", "codes", "books"], ["Y"], domain=DOMAIN,
                                name="emb", **attrs)
        graph = helper.make_graph([node], "g", [helper.make_tensor_value_info("indices", index_type, None)],
                                  [helper.make_tensor_value_info("Y", TensorProto.FLOAT, None)],
                                  [numpy_helper.from_array(codes, "codes"), numpy_helper.from_array(books, "books")])
        m = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17), helper.make_opsetid(DOMAIN, 1)])
        m.ir_version = 8
        return m.SerializeToString()

    def attrs(**over):
        return {**good, **over}

    I = np.array([[0, 9], [-10, 3]], np.int64)
    T = {np.int8: TensorProto.INT8, np.uint8: TensorProto.UINT8, np.int16: TensorProto.INT16,
         np.uint32: TensorProto.UINT32, np.uint64: TensorProto.UINT64, np.float32: TensorProto.FLOAT,
         np.float64: TensorProto.DOUBLE, np.float16: TensorProto.FLOAT16, np.bool_: TensorProto.BOOL}

    def typed(dtype):
        return (model(good, index_type=T[dtype]), I.astype(dtype) if dtype is not np.bool_ else I > 0)

    # A D of 2**40 with codes and codebooks small enough to build: its output cannot be allocated.
    huge = VQLayout(in_features=2**40, out_features=3, bits=1, subvector_len=2**20, num_subspaces=2**20,
                    codebook_per_subspace=0)
    huge_codes = np.zeros(huge.packed_nbytes, np.uint8)
    huge_books = np.zeros(huge.codebooks_shape, np.float32)
    cases = {
        "control": (model(good), I),
        "control_int32": (model(good, index_type=TensorProto.INT32), I.astype(np.int32)),
        "control_scalar": (model(good), np.array(-1, np.int64)),
        "control_empty": (model(good), np.zeros((0, 3), np.int64)),
        "control_fp16_books": (model(good, books=books.astype(np.float16)), I),
        "idx_V": (model(good), np.array([0, 10])),
        "idx_minus_V_minus_1": (model(good), np.array([[1], [-11]])),
        "idx_int64_max": (model(good), np.array([2**63 - 1])),
        "idx_int64_min": (model(good), np.array([-2**63])),
        "idx_2pow32": (model(good), np.array([2**32])),
        "idx_minus_2pow32": (model(good), np.array([-2**32 + 3])),
        "idx_int32_max": (model(good, index_type=TensorProto.INT32), np.array([2**31 - 1], np.int32)),
        "idx_int32_min": (model(good, index_type=TensorProto.INT32), np.array([-2**31], np.int32)),
        "idx_last_of_many": (model(good), np.concatenate([np.arange(-10, 10).repeat(50), [12]])),
        "idx_int8": typed(np.int8), "idx_uint8": typed(np.uint8), "idx_int16": typed(np.int16),
        "idx_uint32": typed(np.uint32), "idx_uint64": typed(np.uint64), "idx_float": typed(np.float32),
        "idx_double": typed(np.float64), "idx_float16": typed(np.float16), "idx_bool": typed(np.bool_),
        "codes_too_short": (model(good, codes=codes[:-1]), I),
        "codes_too_long": (model(good, codes=np.concatenate([codes, codes[:3]])), I),
        "codes_empty": (model(good, codes=codes[:0]), I),
        "codes_2d": (model(good, codes=codes.reshape(1, -1)), I),
        "codes_int8": (model(good, codes=codes.view(np.int8)), I),
        "codes_float": (model(good, codes=codes.astype(np.float32)), I),
        "codes_for_format_2": (model(attrs(format_version=2, bits=4)), I),
        "codebooks_short": (model(good, books=books[..., :-1, :]), I),
        "codebooks_rank4": (model(good, books=books[0]), I),
        "codebooks_float64": (model(good, books=books.astype(np.float64)), I),
        "codebooks_int32": (model(good, books=books.astype(np.int32)), I),
        "codebooks_uint8": (model(good, books=books.astype(np.uint8)), I),
        "codebooks_empty": (model(good, books=books[:0]), I),
        "codebooks_one_group": (model(good, books=books[:, :, :1]), I),
        "format_version_99": (model(attrs(format_version=99)), I),
        "format_version_0": (model(attrs(format_version=0)), I),
        "format_version_neg": (model(attrs(format_version=-1)), I),
        "format_2_axis_1": (model(attrs(format_version=2, bits=4, axis=1)), I),
        "bits_0": (model(attrs(bits=0)), I),
        "bits_9": (model(attrs(bits=9)), I),
        "bits_64": (model(attrs(bits=64)), I),
        "bits_huge": (model(attrs(bits=2**62)), I),
        "group_size_0": (model(attrs(group_size=0)), I),
        "group_size_neg": (model(attrs(group_size=-3)), I),
        "group_size_too_big": (model(attrs(group_size=11)), I),
        "D_negative": (model(attrs(in_features=-24)), I),
        "D_huge": (model(attrs(in_features=2**62)), I),
        "V_huge": (model(attrs(out_features=2**62)), I),
        "V_int64_max": (model(attrs(out_features=2**63 - 1)), I),
        "V_zero": (model(attrs(out_features=0)), I),
        "S_mismatch": (model(attrs(num_subspaces=4)), I),
        "S_huge": (model(attrs(num_subspaces=2**40)), I),
        "d_zero": (model(attrs(subvector_len=0)), I),
        "d_huge": (model(attrs(subvector_len=2**62, num_subspaces=1)), I),
        "stages_0": (model(attrs(stages=0)), I),
        "stages_huge": (model(attrs(stages=2**61)), I),
        "axis_2": (model(attrs(axis=2)), I),
        "axis_neg": (model(attrs(axis=-1)), I),
        "axis_1_same_tensors": (model(attrs(axis=1)), I),
        "per_subspace_5": (model(attrs(codebook_per_subspace=5)), I),
        "missing_bits": (model(good, drop=("bits",)), I),
        "missing_version": (model(good, drop=("format_version",)), I),
        "missing_everything": (model(good, drop=tuple(good)), I),
        "bits_as_float": (model({**good, "bits": 3.0}), I),
        "bits_as_string": (model({**good, "bits": "3"}), I),
        "bits_as_ints": (model({**good, "bits": [3, 3]}), I),
        "everything_overflows": (model(attrs(in_features=2**62, out_features=2**62, num_subspaces=2**60,
                                              stages=2**40)), I),
        "D_2pow40_output_too_big": (model(huge.attributes(), codes=huge_codes, books=huge_books),
                                    np.array([0, 2], np.int64)),
        "two_inputs": (model(good, inputs=["indices", "codes"]), I),
        "codes_as_indices": (model(good, inputs=["indices", "indices", "books"]), I),
    }
    only = sys.argv[1:]
    for name, (payload, idx) in cases.items():
        if only and name not in only:
            continue
        print(json.dumps({"case": name, "stage": "start"}), flush=True)
        result = {"case": name}
        try:
            sess = onnxvq.session(payload)
            result["stage"] = "run"
            y = sess.run(None, {"indices": idx})[0]
            result["ok"] = True
            result["shape"] = list(y.shape)
        except Exception as exc:
            result["ok"] = False
            result["error"] = type(exc).__name__ + ": " + str(exc)
        print(json.dumps(result), flush=True)
""")

# Our messages name the node, what is wrong and the values involved.
EXPECTATIONS = {
    "idx_V": ("VQGather node 'emb'", "indices value 10", "V = out_features = 10", "[-10, 9]"),
    "idx_minus_V_minus_1": ("VQGather node 'emb'", "indices value -11", "V = out_features = 10"),
    "idx_int64_max": ("indices value 9223372036854775807",),
    "idx_int64_min": ("indices value -9223372036854775808",),
    "idx_2pow32": ("indices value 4294967296",),
    "idx_int32_min": ("indices value -2147483648",),
    "idx_last_of_many": ("indices value 12", "flat position 1000"),
    "idx_int8": ("VQGather node 'emb'", "indices must be int32 or int64, got int8"),
    "idx_float": ("indices must be int32 or int64, got float32",),
    "idx_uint64": ("indices must be int32 or int64, got uint64",),
    "codes_too_short": ("VQGather node 'emb'", "codes must have shape", "got"),
    "codebooks_short": ("VQGather node 'emb'", "codebooks must have shape", "got"),
    "codebooks_float64": ("codebooks must be float32 or float16, got float64",),
    "format_version_99": ("VQGather node 'emb'", "format_version", "99"),
    "bits_9": ("bits", "got 9"),
    "group_size_0": ("group_size", "got 0"),
    "group_size_too_big": ("group_size", "exceeds"),
    "S_mismatch": ("num_subspaces", "got 4"),
    "axis_2": ("axis", "got 2"),
    "missing_bits": ("VQGather node 'emb'", "bits", "missing"),
    "stages_huge": ("too large",),
    "D_huge": ("VQGather",),
}


def test_crafted_gather_models_never_crash_onnxruntime(tmp_path):
    script = tmp_path / "craft.py"
    script.write_text(CRAFT_SCRIPT)
    proc = subprocess.run([sys.executable, str(script)], capture_output=True, text=True, timeout=300, cwd=REPO)
    records = [json.loads(line) for line in proc.stdout.splitlines() if line.startswith("{")]
    last = records[-1] if records else {}
    assert proc.returncode == 0, (f"the process died (status {proc.returncode}) in case {last.get('case')!r}: "
                                  f"{proc.stderr[-2000:]}")
    assert "Traceback" not in proc.stderr, proc.stderr[-2000:]
    results = {r["case"]: r for r in records if "ok" in r}
    assert len(results) >= 70, sorted(results)
    controls = {"control": [2, 2, 24], "control_int32": [2, 2, 24], "control_scalar": [24],
                "control_empty": [0, 3, 24], "control_fp16_books": [2, 2, 24]}
    for name, shape in controls.items():
        assert results[name]["ok"] and results[name]["shape"] == shape, results[name]
    for name, r in results.items():
        if name in controls:
            continue
        assert not r["ok"], f"{name}: onnxruntime accepted a broken model and ran it: {r}"
        error = r["error"]
        assert "VQGather" in error or "Type Error" in error or "INVALID_ARGUMENT" in error \
            or "Invalid" in error or "Failed to allocate" in error or "bad_alloc" in error, \
            f"{name}: unclear error {error!r}"
        assert "Traceback" not in error and "unknown C++ exception" not in error, (name, error)
    for name, words in EXPECTATIONS.items():
        for w in words:
            assert w in results[name]["error"], (name, w, results[name]["error"])
