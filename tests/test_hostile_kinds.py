"""Hostile input for the site kinds beyond Gemm/MatMul: convolutions and embeddings.

Same contract as test_hostile.py: one clear stderr line with the right exit code, no traceback,
the input untouched, nothing left behind; odd but valid models compress and still match.
"""
from __future__ import annotations

import subprocess
import sys
import textwrap

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from onnxvq.errors import ExitCode

from . import builders
from .test_hostile import _set, assert_clean, assert_untouched, cli, run_compress_case, snapshot


def _save(model: onnx.ModelProto, folder, name="m.onnx"):
    path = folder / name
    path.write_bytes(model.SerializeToString())
    return path


def _conv(weight: onnx.TensorProto, x_shape, **attrs) -> onnx.ModelProto:
    node = helper.make_node("Conv", ["x", weight.name], ["y"], name="conv", **attrs)
    graph = helper.make_graph([node], "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, x_shape)],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)], [weight])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    return model


W = np.random.default_rng(0).standard_normal((16, 8, 3, 3)).astype(np.float32)


def _weight(**fields) -> onnx.TensorProto:
    """The conv weight with ``fields`` overwritten (the same mutations as test_hostile's Gemm weights)."""
    t = numpy_helper.from_array(W, "w")
    _set(**fields)(t, None)
    return t


BROKEN_CONVS = {
    "nan": (numpy_helper.from_array(np.where(W > 1, np.nan, W).astype(np.float32), "w"), ExitCode.INVALID_WEIGHTS, "NaN"),
    "raw_data_short": (_weight(raw_data=W.tobytes()[:-4]), ExitCode.INVALID_MODEL, "'w'"),
    "negative_dims": (_weight(dims=[-16, 8, 3, 3]), ExitCode.INVALID_MODEL, "'w'"),
    "huge_dims": (_weight(dims=[2**40, 2**40, 3, 3]), ExitCode.INVALID_MODEL, "'w'"),
    "rank_2": (_weight(dims=[16, 72]), ExitCode.NOTHING_TO_DO, "rank"),
    "int32_weight": (numpy_helper.from_array(W.astype(np.int32), "w"), ExitCode.NOTHING_TO_DO, "int32"),
}


@pytest.mark.parametrize("case", sorted(BROKEN_CONVS))
def test_broken_conv_weights(tmp_path, case):
    weight, code, word = BROKEN_CONVS[case]
    path = _save(_conv(weight, ["n", 8, 9, 9]), tmp_path)
    run_compress_case(tmp_path, path, code, word, extra=("--no-check",))


def test_group_that_does_not_divide_is_skipped(tmp_path):
    path = _save(_conv(numpy_helper.from_array(W, "w"), ["n", 24, 9, 9], group=3), tmp_path)
    run_compress_case(tmp_path, path, ExitCode.NOTHING_TO_DO, "group", extra=("--no-check",))


def test_conv_with_a_computed_weight_is_skipped_with_its_reason(tmp_path):
    node = helper.make_node("Conv", ["x", "w_in"], ["y"], name="conv")
    graph = helper.make_graph([node], "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["n", 8, 9, 9]),
                                            helper.make_tensor_value_info("w_in", TensorProto.FLOAT, [16, 8, 3, 3])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    run_compress_case(tmp_path, _save(model, tmp_path), ExitCode.NOTHING_TO_DO, "not a constant", extra=("--no-check",))


ODD_BUT_VALID = {
    "pads_asymmetric_strides_3": dict(pads=[0, 2, 1, 0], strides=[3, 1]),
    "dilations_3": dict(dilations=[3, 2], pads=[3, 2, 3, 2]),
    "auto_pad_same_lower_stride_2": dict(auto_pad="SAME_LOWER", strides=[2, 2]),
    "auto_pad_valid": dict(auto_pad="VALID"),
    "group_2": dict(group=2),
}


@pytest.mark.parametrize("case", sorted(ODD_BUT_VALID))
def test_odd_but_valid_convs_compress_and_match(tmp_path, case):
    attrs = ODD_BUT_VALID[case]
    group = attrs.get("group", 1)
    weight = numpy_helper.from_array(W[:, : 8 // group], "w")
    path = _save(_conv(weight, ["n", 8, 11, 10], **attrs), tmp_path)
    outcome = run_compress_case(tmp_path, path, ExitCode.OK, extra=("--method", "kmeans", "--bits", "6",
                                                                    "--min-cosine", "0.99"))
    assert outcome.code == ExitCode.OK


def test_broken_batchnorm_is_left_alone(tmp_path):
    """A BatchNormalization whose parameters do not fit its conv is not folded (and not a crash)."""
    model = builders.cnn_model()
    for t in model.graph.initializer:
        if t.name == "bn.var":
            t.CopyFrom(numpy_helper.from_array(np.ones(5, np.float32), "bn.var"))  # 5 values for 16 channels
    path = _save(model, tmp_path)
    before = snapshot(tmp_path)
    outcome = cli("compress", path, "-o", tmp_path / "out.onnx", "--min-elements", "0", "--quiet", "--no-check")
    assert_clean(outcome, ExitCode.OK)
    out = onnx.load(str(tmp_path / "out.onnx"))
    assert any(n.op_type == "BatchNormalization" for n in out.graph.node)
    assert_untouched(before, tmp_path, {"out.onnx"})


@pytest.mark.parametrize("fmt", ["portable", "custom"])
@pytest.mark.parametrize("bad_id", [64, 10**12, -65, -(2**62)], ids=["V", "huge", "below_minus_V", "huge_negative"])
def test_out_of_range_ids_fail_like_gather(tmp_path, fmt, bad_id):
    """A compressed embedding refuses out-of-range ids as ONNX Gather does: an error, never a crash
    or a read outside the table (run in a child process, so a segfault fails the test)."""
    path = _save(builders.embedding_model(), tmp_path)
    out = tmp_path / "out.onnx"
    outcome = cli("compress", path, "-o", out, "--min-elements", "0", "--quiet", "--format", fmt, "--no-check")
    assert_clean(outcome, ExitCode.OK)
    script = textwrap.dedent(f"""
        import numpy as np, onnxvq
        sess = onnxvq.session({str(out)!r})
        ids = np.zeros((1, 8), np.int64); ids[0, 3] = {bad_id}
        try:
            sess.run(None, {{"ids": ids}})
        except Exception as exc:
            print("refused:", str(exc).splitlines()[0][:300])
        else:
            print("accepted")
    """)
    proc = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert proc.stdout.startswith("refused:"), proc.stdout
