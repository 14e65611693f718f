"""The numpy reference against an independent, loop-by-loop reading of the schema's formula."""
import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper
from onnx.reference import ReferenceEvaluator

from onnxvq.ops.packing import pack_codes
from onnxvq.ops.reference import decode_weight, reference_ops, vq_matmul_ref
from onnxvq.ops.schema import DOMAIN, OP_TYPE, VQLayout


def loop_decode(lay: VQLayout, codes, codebooks):
    """W_hat[K, N] straight from the docstring formula, one element at a time."""
    m = np.zeros((lay.rows, lay.length))
    for r in range(lay.rows):
        for pos in range(lay.length):
            s, j = divmod(pos, lay.subvector_len)
            for t in range(lay.stages):
                gs = s if lay.codebook_per_subspace else 0
                m[r, pos] += codebooks[t, gs, r // lay.group_size, codes[t, r, s], j]
    return m.T if lay.axis == 0 else m


CASES = [
    dict(k=7, n=5, bits=3, d=2, axis=0, stages=1, group_size=0, per_subspace=1),
    dict(k=7, n=5, bits=2, d=3, axis=1, stages=2, group_size=0, per_subspace=1),
    dict(k=6, n=9, bits=1, d=1, axis=0, stages=1, group_size=1, per_subspace=0),
    dict(k=9, n=4, bits=4, d=1, axis=0, stages=1, group_size=3, per_subspace=0),
    dict(k=5, n=8, bits=5, d=4, axis=1, stages=3, group_size=2, per_subspace=1),
]


@pytest.mark.parametrize("case", CASES)
def test_reference_matches_loop_formula(case):
    rng = np.random.default_rng(0)
    lay = VQLayout.for_weight(case["k"], case["n"], bits=case["bits"], subvector_len=case["d"], axis=case["axis"],
                              stages=case["stages"], group_size=case["group_size"],
                              codebook_per_subspace=case["per_subspace"])
    codes = rng.integers(0, lay.codebook_size, lay.codes_shape)
    books = rng.standard_normal(lay.codebooks_shape).astype(np.float32)
    np.testing.assert_allclose(decode_weight(lay, codes, books), loop_decode(lay, codes, books), rtol=1e-12)
    x = rng.standard_normal((3, 2, case["k"])).astype(np.float32)
    bias = rng.standard_normal(case["n"]).astype(np.float32)
    y = vq_matmul_ref(x, pack_codes(codes, lay.bits), books, bias, lay)
    np.testing.assert_allclose(y, x.astype(np.float64) @ loop_decode(lay, codes, books) + bias, rtol=1e-5, atol=1e-5)


def test_reference_runs_in_onnx_reference_evaluator():
    rng = np.random.default_rng(1)
    lay = VQLayout.for_weight(12, 7, bits=4, subvector_len=4)
    codes = rng.integers(0, 16, lay.codes_shape)
    books = rng.standard_normal(lay.codebooks_shape).astype(np.float32)
    node = helper.make_node(OP_TYPE, ["X", "codes", "books"], ["Y"], domain=DOMAIN, **lay.attributes())
    graph = helper.make_graph([node], "g", [helper.make_tensor_value_info("X", TensorProto.FLOAT, [2, 12])],
                              [helper.make_tensor_value_info("Y", TensorProto.FLOAT, [2, 7])],
                              [numpy_helper.from_array(pack_codes(codes, 4), "codes"),
                               numpy_helper.from_array(books, "books")])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17), helper.make_opsetid(DOMAIN, 1)])
    onnx.checker.check_model(model, full_check=True)
    x = rng.standard_normal((2, 12)).astype(np.float32)
    (y,) = ReferenceEvaluator(model, new_ops=reference_ops()).run(None, {"X": x})
    np.testing.assert_allclose(y, x @ decode_weight(lay, codes, books), rtol=1e-5, atol=1e-5)
