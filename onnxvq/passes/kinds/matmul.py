"""Gemm and MatMul: W[K, N] is the weight itself (Gemm's transB and alpha folded in).

custom format: one VQMatMul node; portable (or a float16 model): a standard-op decoder feeding a
MatMul (+ Add); low-rank (SVD): two MatMuls (+ Add) in either format.
"""
from __future__ import annotations

import numpy as np
import onnx
from onnx import helper, numpy_helper

from ...ops.schema import DOMAIN, FASTSCAN_FORMAT_VERSION, OP_TYPE
from ...quantizers.base import CodedWeight, LowRankWeight
from ..sites import NodeContext, Site, check_weight_tensor, number_attr
from .base import SiteKind, register_kind, row_major


@register_kind
class MatMulKind(SiteKind):
    name = "matmul"
    op_types = ("MatMul", "Gemm")

    def inspect(self, ctx: NodeContext):
        node, name = ctx.node, ctx.name
        if len(node.input) < 2:
            return ctx.skip(f"{node.op_type} has {len(node.input)} input(s)")
        source = ctx.weight(1)
        if source is None:
            return ctx.skip("weight (input B) is not a constant initializer")
        dims = source.constant.dims
        if len(dims) != 2:
            return ctx.skip(f"weight {source.constant.name!r} has rank {len(dims)}, not 2", source)
        problem = check_weight_tensor(source, name)
        elements = dims[0] * dims[1]
        if problem:
            return ctx.skip(problem, source, elements)

        transposed, alpha, beta = False, 1.0, 1.0
        bias = None
        if node.op_type == "Gemm":
            if number_attr(node, name, "transA", 0, int):
                return ctx.skip("Gemm with transA=1 is not supported", source, elements)
            transposed = bool(number_attr(node, name, "transB", 0, int))
            alpha = number_attr(node, name, "alpha", 1.0, float)
            beta = number_attr(node, name, "beta", 1.0, float)
            if len(node.input) > 2 and node.input[2]:
                bias = ctx.scope.get(node.input[2])
                if bias is None:
                    return ctx.skip("Gemm bias C is not a constant", source, elements)
        n_out = dims[0] if transposed else dims[1]
        bias_array = None
        if bias is not None:
            b = bias.array()
            if b.dtype != np.float32:
                return ctx.skip(f"Gemm bias {bias.name!r} has dtype {b.dtype}, not float32", source, elements)
            if b.size == 1:
                b = np.full(n_out, b.reshape(-1)[0], dtype=np.float32)
            elif b.shape in ((n_out,), (1, n_out)):
                b = b.reshape(n_out)
            else:
                return ctx.skip(f"Gemm bias {bias.name!r} has shape {list(b.shape)}; only [N], [1, N] or a scalar "
                                f"fold", source, elements)
            with np.errstate(over="ignore", invalid="ignore"):  # overflow becomes Inf: reported as such
                bias_array = (b * np.float32(beta)).astype(np.float32) if beta != 1.0 else b.astype(np.float32)
        shape = (dims[1], dims[0]) if transposed else (dims[0], dims[1])
        return ctx.site(source, shape, self, 1, bias=bias, bias_array=bias_array,
                        params={"transposed": transposed, "alpha": alpha})

    def corrects_bias(self, site: Site) -> bool:
        return site.op_type == "Gemm"  # its bias is folded into the rewrite (a MatMul has none)

    def to_matrix(self, site: Site, weight: np.ndarray) -> np.ndarray:
        w = weight.T if site.transposed else weight
        if site.alpha != 1.0:
            with np.errstate(over="ignore", invalid="ignore"):  # overflow becomes Inf: reported as such
                w = w * np.float32(site.alpha)
        return w

    def from_matrix(self, site: Site, w: np.ndarray) -> np.ndarray:
        if site.alpha != 1.0:
            w = w / np.float32(site.alpha)
        return w.T if site.transposed else w

    def view_key(self, site: Site) -> tuple:
        return (site.transposed, site.alpha)

    @staticmethod
    def runs_on_op(site: Site, fmt: str, encoded) -> bool:
        """Whether VQMatMul computes this site. It computes float32 only; `matmul_runtime` auto keeps it
        to the 4-bit fast-scan layouts on 2-D activations, the regime where bench/kernels.py measures it
        faster than ONNX Runtime's dense MatMul; elsewhere the folded decoder runs at the dense speed."""
        if fmt != "custom" or site.consumer_dtype != onnx.TensorProto.FLOAT or not isinstance(encoded, CodedWeight):
            return False
        runtime = site.params.get("runtime", "op")
        if runtime == "auto":
            return encoded.layout.format_version == FASTSCAN_FORMAT_VERSION
        return runtime == "op"

    def stored_encoding(self, site: Site, encoded, fmt: str):
        if self.runs_on_op(site, fmt, encoded):
            return encoded  # VQMatMul computes with the layout the quantizer chose (fast-scan where valid)
        return row_major(encoded)

    def rewrite(self, site: Site, enc, ctx) -> None:
        bias_name = _bias_input(site, ctx)
        if isinstance(enc, LowRankWeight):
            first, second = ctx.low_rank_initializers(site, enc)
            hidden = ctx.node_name(site, ".svd_hidden")
            first_node = helper.make_node("MatMul", [site.activation, first], [hidden],
                                          name=ctx.node_name(site, ".svd_first"))
            ctx.replace_node(site, [first_node, *_matmul_nodes(site, hidden, second, ctx, bias_name)])
        elif self.runs_on_op(site, ctx.fmt, enc):
            codes, codebooks = ctx.coded_initializers(site, enc)
            inputs = [site.activation, codes, codebooks] + ([bias_name] if bias_name else [])
            node = helper.make_node(OP_TYPE, inputs, list(site.node.output), name=site.node.name or ctx.node_name(site),
                                    domain=DOMAIN, **enc.layout.attributes())
            ctx.replace_node(site, [node])
            ctx.uses_domain = True
        else:
            # Standard ops: portable, the folded decoder by choice, or activations that are not float32.
            w_name = ctx.decoded_matrix(site, enc)
            if site.consumer_dtype != onnx.TensorProto.FLOAT:
                w_name = ctx.decoded_weight(site, enc, lambda c, s, w: ([], w))
            ctx.replace_node(site, _matmul_nodes(site, site.activation, w_name, ctx, bias_name))


def _bias_input(site: Site, ctx) -> str | None:
    if site.bias_array is None:
        return None
    if site.bias is None:  # a bias added by bias correction
        name = ctx.node_name(site, ".bias")
        site.graph.initializer.append(numpy_helper.from_array(site.bias_array, name))
        return name
    b = site.bias.array()
    if b.shape == site.bias_array.shape and np.array_equal(b, site.bias_array):
        return site.bias.name  # reuse the original [N] initializer unchanged
    name = ctx.node_name(site, ".bias")
    site.bias.graph.initializer.append(numpy_helper.from_array(site.bias_array, name))
    return name


def _matmul_nodes(site: Site, activation: str, weight: str, ctx, bias: str | None):
    """MatMul(activation, weight) (+ bias) producing the site's original output."""
    out = site.node.output[0]
    final_name = site.node.name or ctx.node_name(site)
    if bias is None:
        return [helper.make_node("MatMul", [activation, weight], [out], name=final_name)]
    hidden = ctx.node_name(site, ".matmul")
    return [helper.make_node("MatMul", [activation, weight], [hidden], name=ctx.node_name(site, ".matmul_node")),
            helper.make_node("Add", [hidden, bias], [out], name=final_name)]
