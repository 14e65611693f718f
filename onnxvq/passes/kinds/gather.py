"""Gather on a constant table along axis 0 (token / position embeddings): rows of M = table rows.

W[K, N] = table^T (K = D, the row length; N = V, the rows), so ``axis in`` splits each row into
subvectors and per-group codebooks cover groups of rows.
* custom: a VQGather node decodes only the gathered rows; the table stays compressed in RAM;
* portable (axis in): the packed codes are unpacked by constant ops that runtimes fold once into
  uint8 codes [V, T, S]; at run time a Gather picks the ids' codes and only those rows are decoded,
  so RAM holds 1 byte per code plus the codebooks, never the float table;
* portable (axis out): a full standard-op decoder feeding the original Gather (folded to dense at load);
* low rank (SVD): table ~ B^T A^T, so Gather(B^T, ids) @ A^T: small in RAM and fast.
"""
from __future__ import annotations

import numpy as np
import onnx
from onnx import helper

from ...ops.schema import AXIS_IN, DOMAIN, GATHER_OP_TYPE
from ...quantizers.base import CodedWeight, LowRankWeight
from ..portable import build_row_codes, gather_rows
from ..sites import NodeContext, Site, check_weight_tensor, number_attr
from .base import SiteKind, register_kind


@register_kind
class GatherKind(SiteKind):
    name = "gather"
    op_types = ("Gather",)

    def inspect(self, ctx: NodeContext):
        node, name = ctx.node, ctx.name
        if len(node.input) < 2:
            return None
        source = ctx.weight(0)
        if source is None or source.constant.tensor.data_type not in (onnx.TensorProto.FLOAT, onnx.TensorProto.FLOAT16,
                                                                    onnx.TensorProto.BFLOAT16):
            return None  # gathers over shapes, ids or activations are not weights
        dims = source.constant.dims
        elements = int(np.prod(dims)) if dims else 1
        if len(dims) != 2:
            return ctx.skip(f"table {source.constant.name!r} has rank {len(dims)}, not 2", source, elements)
        problem = check_weight_tensor(source, name)
        if problem:
            return ctx.skip(problem, source, elements)
        axis = number_attr(node, name, "axis", 0, int)
        if axis not in (0, -2):
            return ctx.skip(f"Gather along axis {axis}; only axis 0 (rows of the table) is supported", source, elements)
        return ctx.site(source, (dims[1], dims[0]), self, 0)

    def activation(self, site: Site) -> str:
        return site.node.input[1]

    def to_matrix(self, site: Site, weight: np.ndarray) -> np.ndarray:
        return weight.T

    def from_matrix(self, site: Site, w: np.ndarray) -> np.ndarray:
        return w.T

    def rewrite(self, site: Site, enc, ctx) -> None:
        indices, out = site.node.input[1], site.node.output[0]
        if isinstance(enc, LowRankWeight):
            rows, mix = _low_rank_tables(site, enc, ctx)
            hidden = ctx.node_name(site, ".svd_rows")
            ctx.replace_node(site, [
                helper.make_node("Gather", [rows, indices], [hidden], name=ctx.node_name(site, ".svd_gather"), axis=0),
                *_cast_to_consumer(site, ctx, "MatMul", [hidden, mix], out),
            ])
        elif ctx.fmt == "custom" and isinstance(enc, CodedWeight):
            # Row-major codes (format 1, see stored_encoding): a gathered row's codes are contiguous.
            codes, codebooks = ctx.coded_initializers(site, enc)
            ctx.replace_node(site, _cast_to_consumer(site, ctx, GATHER_OP_TYPE, [indices, codes, codebooks], out,
                                                     domain=DOMAIN, **enc.layout.attributes()))
            ctx.uses_domain = True
        elif isinstance(enc, CodedWeight) and enc.layout.axis == AXIS_IN:
            codes, books = _row_codes(site, enc, ctx)
            nodes, inits, rows, shape = gather_rows(enc, codes, books, indices, ctx.names,
                                                    f"{site.node.name or out}.vq_gather")
            site.graph.initializer.extend(inits)
            ctx.replace_node(site, [*nodes, *_cast_to_consumer(site, ctx, "Reshape", [rows, shape], out)])
        else:
            # axis out: M = W_hat [D, V], so a table row is a column of M and its codes are spread over
            # every row of M; no row-wise gather exists. Decode the whole table (folded to dense at load).
            ctx.rewire_weight(site, ctx.decoded_weight(site, enc, _table_from_matrix))


def _row_codes(site: Site, enc: CodedWeight, ctx) -> tuple[str, str]:
    """uint8 codes [V, T, S] (folded from the packed stream at load) and flat codebooks, once per graph."""
    key = (id(site.graph), site.weight_key, "row_codes")
    if key not in ctx.decoded:
        ctx.require_decoder_opset(site)
        nodes, inits, codes, books = build_row_codes(enc, ctx.names, f"{site.weight.name}.vq")
        site.graph.initializer.extend(inits)
        ctx.insert_before(site, nodes)
        ctx.decoded[key] = (codes, books)
    return ctx.decoded[key]


def _low_rank_tables(site: Site, enc: LowRankWeight, ctx) -> tuple[str, str]:
    """table^T = first @ second, so table = second^T @ first^T: rows [V, r] and mixing [r, D]."""
    key = (site.weight_key, "low_rank_gather")
    if key not in ctx.stored:
        rows = ctx.constant(site.weight.graph, f"{site.weight.name}.svd_rows",
                            np.ascontiguousarray(enc.second.T, np.float32))
        mix = ctx.constant(site.weight.graph, f"{site.weight.name}.svd_mix",
                           np.ascontiguousarray(enc.first.T, np.float32))
        ctx.stored[key] = [rows, mix]
    return tuple(ctx.stored[key])


def _cast_to_consumer(site: Site, ctx, op_type: str, inputs: list[str], out: str, **attrs):
    """One node computing float32 into ``out``, or into a temporary plus a Cast for float16 models."""
    name = site.node.name or ctx.node_name(site)
    if site.consumer_dtype == onnx.TensorProto.FLOAT:
        return [helper.make_node(op_type, inputs, [out], name=name, **attrs)]
    hidden = ctx.node_name(site, ".f32")
    return [helper.make_node(op_type, inputs, [hidden], name=ctx.node_name(site, ".f32_node"), **attrs),
            helper.make_node("Cast", [hidden], [out], name=name, to=site.consumer_dtype)]


def _table_from_matrix(ctx, site: Site, w_name: str):
    out = ctx.names.new(f"{site.weight.name}.vq.table")
    return [helper.make_node("Transpose", [w_name], [out], name=ctx.names.new(f"{out}_node"), perm=[1, 0])], out
