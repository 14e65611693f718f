"""Conv and ConvTranspose (1-D/2-D/3-D, any kernel, strides, pads, dilations, auto_pad, group).

The compressed weight is a decode subgraph of standard ops feeding the original node, in both
formats: every decoder input is a constant, so ONNX Runtime folds it into a dense initializer
when the session is created and the convolution runs exactly as before; the file holds codes.

Matrix views (rows of M = output channels, subvectors along the reduction with ``axis in``):
* Conv          weight [Cout, Cin/g, *k]  ->  W[K, N] = reshape(Cout, Cin/g * prod(k))^T
* ConvTranspose weight [Cin, Cout/g, *k]  ->  rows are the Cout/g output channels of a group:
                W[K, N] = transpose(1, 0, ...).reshape(Cout/g, Cin * prod(k))^T
"""
from __future__ import annotations

import numpy as np
import onnx
from onnx import helper

from ..sites import NodeContext, Site, check_weight_tensor, number_attr
from .base import SiteKind, register_kind


def _shape_const(ctx, site: Site, suffix: str, values) -> str:
    return ctx.constant(site.graph, f"{site.weight.name}.{suffix}", np.array(values, np.int64))


@register_kind
class ConvKind(SiteKind):
    name = "conv"
    op_types = ("Conv", "ConvTranspose")

    def inspect(self, ctx: NodeContext):
        node, name = ctx.node, ctx.name
        source = ctx.weight(1)
        if source is None:
            return ctx.skip("weight (input W) is not a constant initializer")
        dims = source.constant.dims
        if len(dims) < 3:
            return ctx.skip(f"weight {source.constant.name!r} has rank {len(dims)}; a convolution weight has rank >= 3",
                            source)
        elements = int(np.prod(dims))
        problem = check_weight_tensor(source, name)
        if problem:
            return ctx.skip(problem, source, elements)
        group = number_attr(node, name, "group", 1, int)
        if group < 1:
            return ctx.skip(f"group {group} is not a positive integer", source, elements)
        transposed = node.op_type == "ConvTranspose"
        channels_out = dims[1] * group if transposed else dims[0]
        channels_in = dims[0] if transposed else dims[1] * group
        if (dims[0] % group) != 0:
            return ctx.skip(f"weight dim 0 ({dims[0]}) is not divisible by group {group}", source, elements)
        rows = dims[1] if transposed else dims[0]
        length = elements // rows
        depthwise = group > 1 and group == channels_in and (dims[1] == 1 if not transposed else dims[0] == group)
        bias = ctx.scope.get(node.input[2]) if len(node.input) > 2 and node.input[2] else None
        return ctx.site(source, (length, rows), self, 1, bias=bias, params={
            "transposed": transposed, "group": group, "depthwise": depthwise,
            "channels_in": channels_in, "channels_out": channels_out, "kernel": dims[2:],
            # The first layer reads the model input: its few channels carry the whole signal.
            "reads_graph_input": node.input[0] in {i.name for i in ctx.graph.input},
        })

    def to_matrix(self, site: Site, weight: np.ndarray) -> np.ndarray:
        if site.params["transposed"]:
            weight = np.swapaxes(weight, 0, 1)
        return weight.reshape(weight.shape[0], -1).T

    def from_matrix(self, site: Site, w: np.ndarray) -> np.ndarray:
        dims = site.weight.dims
        if site.params["transposed"]:
            return np.swapaxes(w.T.reshape([dims[1], dims[0], *dims[2:]]), 0, 1)
        return w.T.reshape(dims)

    def view_key(self, site: Site) -> tuple:
        return (site.params["transposed"],)

    def corrects_bias(self, site: Site) -> bool:
        # M's rows are the output channels (a grouped ConvTranspose's rows are one group's: no).
        if site.params["transposed"] and site.params["group"] > 1:
            return False
        if len(site.node.input) > 2 and site.node.input[2]:
            b = site.bias
            return b is not None and b.tensor.data_type == onnx.TensorProto.FLOAT \
                and list(b.dims) == [site.params["channels_out"]]
        return True

    def rewrite(self, site: Site, enc, ctx) -> None:
        shift = site.params.get("bias_shift")
        if shift is not None:  # before rewire_weight, which copies the node
            bias = shift if site.bias is None else site.bias.float32() + shift
            name = ctx.constant(site.graph, f"{site.weight.name}.vq.bias", bias.astype(np.float32))
            while len(site.node.input) < 3:
                site.node.input.append("")
            site.node.input[2] = name
        ctx.rewire_weight(site, ctx.decoded_weight(site, enc, _weight_from_matrix))


def _weight_from_matrix(ctx, site: Site, w_name: str):
    """Standard ops: W_hat [K, N] -> the convolution's weight shape."""
    dims = site.weight.dims
    base = f"{site.weight.name}.vq"
    rows = ctx.names.new(f"{base}.rows")
    nodes = [helper.make_node("Transpose", [w_name], [rows], name=ctx.names.new(f"{rows}_node"), perm=[1, 0])]
    if site.params["transposed"]:
        grouped = ctx.names.new(f"{base}.grouped")
        nodes.append(helper.make_node("Reshape", [rows, _shape_const(ctx, site, "vq.swapped_shape",
                                                                       [dims[1], dims[0], *dims[2:]])],
                                      [grouped], name=ctx.names.new(f"{grouped}_node")))
        out = ctx.names.new(f"{base}.weight")
        perm = [1, 0, *range(2, len(dims))]
        nodes.append(helper.make_node("Transpose", [grouped], [out], name=ctx.names.new(f"{out}_node"), perm=perm))
        return nodes, out
    out = ctx.names.new(f"{base}.weight")
    nodes.append(helper.make_node("Reshape", [rows, _shape_const(ctx, site, "vq.weight_shape", dims)], [out],
                                  name=ctx.names.new(f"{out}_node")))
    return nodes, out
