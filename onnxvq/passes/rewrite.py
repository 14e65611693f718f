"""Replace each site's node with its compressed form, in place on a model copy.

Each site's kind decides the form (``passes/kinds/``): a custom op of our domain reading codes +
codebooks (VQMatMul, VQGather), or a decode subgraph of standard ops (``portable.py``) feeding the
original node, which runtimes fold into a dense constant at load time. This module holds what
every kind shares: new initializers, decoded weights, node replacement and the cleanup.
Output names, node order and everything unrelated stay as they were. Weights, biases, Casts and
Constant nodes no longer used by any node are removed.
"""
from __future__ import annotations

from collections import defaultdict

import numpy as np
import onnx
from onnx import helper, numpy_helper

from ..errors import InvalidModel
from ..ops.schema import DOMAIN, DOMAIN_VERSION
from ..quantizers.base import CodedWeight, LowRankWeight
from .fuse_bias import fuse_bias_adds
from .names import NameAllocator
from .portable import MIN_OPSET, build_decoder
from .sites import Site, walk_graphs


def default_opset(model: onnx.ModelProto) -> int:
    for imp in model.opset_import:
        if imp.domain in ("", "ai.onnx"):
            return imp.version
    return 0


class RewriteContext:
    """Shared state of one rewrite: names, the initializers made so far, and node edits."""

    def __init__(self, model: onnx.ModelProto, fmt: str):
        self.model, self.fmt = model, fmt
        self.names = NameAllocator(model)
        self.stored: dict[tuple, list[str]] = {}      # (weight key, what) -> new initializers' names
        self.decoded: dict[tuple, str] = {}           # (graph id, weight key, what) -> decoded tensor
        self.before: dict[int, list[onnx.NodeProto]] = defaultdict(list)  # id(node) -> nodes before it
        self.replace: dict[int, list[onnx.NodeProto]] = {}
        self.graphs: dict[int, onnx.GraphProto] = {}
        self.uses_domain = False

    # --- initializers ---------------------------------------------------------------------
    def coded_initializers(self, site: Site, enc: CodedWeight) -> list[str]:
        """(codes, codebooks) in the op's layout, added once per weight and layout. Entropy-coded
        codes are a standard-op decoder + packer before the site (once per graph), which ONNX
        Runtime folds into the packed codes the op computes with."""
        key = (site.weight_key, "coded", enc.layout.format_version)
        if enc.entropy is not None:
            key = (id(site.graph), *key)
        if key not in self.stored:
            codebooks = self.names.new(f"{site.weight.name}.vq_codebooks")
            if enc.entropy is None:
                codes = self.names.new(f"{site.weight.name}.vq_codes")
                site.weight.graph.initializer.append(numpy_helper.from_array(enc.packed_codes(), codes))
            else:
                codes = self._packed_from_tiers(site, enc)
            site.weight.graph.initializer.append(numpy_helper.from_array(np.ascontiguousarray(enc.codebooks),
                                                                         codebooks))
            self.stored[key] = [codes, codebooks]
        return self.stored[key]

    def _packed_from_tiers(self, site: Site, enc: CodedWeight) -> str:
        from ..ops.schema import BYTESCAN_FORMAT_VERSION, FASTSCAN_FORMAT_VERSION
        from .entropy_decoder import (compact_builder, decode_tiers, pack_bytescan_stream, pack_fastscan_stream,
                                      pack_stream)

        self.require_decoder_opset(site)
        b = compact_builder(self.names)
        codes = decode_tiers(b, enc.entropy, "c")
        layout = enc.layout
        if layout.format_version == FASTSCAN_FORMAT_VERSION:
            packed = pack_fastscan_stream(b, codes, layout.codes_shape)
        elif layout.format_version == BYTESCAN_FORMAT_VERSION:
            packed = pack_bytescan_stream(b, codes, layout.codes_shape)
        else:
            packed = pack_stream(b, codes, layout.num_codes, layout.bits)
        site.graph.initializer.extend(b.initializers)
        self.insert_before(site, b.nodes)
        return packed

    def low_rank_initializers(self, site: Site, enc: LowRankWeight) -> list[str]:
        key = (site.weight_key, "low_rank")
        if key not in self.stored:
            first = self.names.new(f"{site.weight.name}.svd_a")
            second = self.names.new(f"{site.weight.name}.svd_b")
            site.weight.graph.initializer.extend([numpy_helper.from_array(enc.first, first),
                                                  numpy_helper.from_array(enc.second, second)])
            self.stored[key] = [first, second]
        return self.stored[key]

    def constant(self, graph: onnx.GraphProto, base: str, array: np.ndarray) -> str:
        name = self.names.new(base)
        graph.initializer.append(numpy_helper.from_array(np.asarray(array), name))
        return name

    # --- decoded weights --------------------------------------------------------------------
    def require_decoder_opset(self, site: Site) -> None:
        """The standard-op decoder (whatever the format or kind that needs it) uses opset-11 ops."""
        opset = default_opset(self.model)
        if opset < MIN_OPSET:
            raise InvalidModel(f"node {site.display_name!r}: decoding its codes with standard ops needs opset >= "
                               f"{MIN_OPSET}; the model imports opset {opset}")

    def decoded_matrix(self, site: Site, enc) -> str:
        """A tensor holding W_hat [K, N] float32, computed by standard ops before the site's node
        (once per graph and weight). Every input is a constant, so runtimes fold it at load time."""
        key = (id(site.graph), site.weight_key, "matrix")
        if key not in self.decoded:
            if isinstance(enc, LowRankWeight):
                first, second = self.low_rank_initializers(site, enc)
                out = self.names.new(f"{site.weight.name}.svd_product")
                nodes = [helper.make_node("MatMul", [first, second], [out], name=self.names.new(f"{out}_node"))]
            else:
                self.require_decoder_opset(site)
                nodes, inits, out = build_decoder(enc, self.names, f"{site.weight.name}.vq")
                site.graph.initializer.extend(inits)
            self.insert_before(site, nodes)
            self.decoded[key] = out
        return self.decoded[key]

    def decoded_weight(self, site: Site, enc, shape_nodes) -> str:
        """The decoded weight in the form the node reads: ``shape_nodes(ctx, site, w_name) -> (nodes,
        name)`` turns W_hat [K, N] into the stored shape; a Cast restores the consumer dtype."""
        key = (id(site.graph), site.weight_key, "weight")
        if key not in self.decoded:
            nodes, out = shape_nodes(self, site, self.decoded_matrix(site, enc))
            if site.consumer_dtype != onnx.TensorProto.FLOAT:
                cast = self.names.new(f"{site.weight.name}.vq_cast")
                nodes.append(helper.make_node("Cast", [out], [cast], name=self.names.new(f"{cast}_node"),
                                              to=site.consumer_dtype))
                out = cast
            self.insert_before(site, nodes)
            self.decoded[key] = out
        return self.decoded[key]

    # --- node edits -------------------------------------------------------------------------
    def insert_before(self, site: Site, nodes: list[onnx.NodeProto]) -> None:
        self.graphs[id(site.graph)] = site.graph
        self.before[id(site.node)].extend(nodes)

    def replace_node(self, site: Site, nodes: list[onnx.NodeProto]) -> None:
        self.graphs[id(site.graph)] = site.graph
        self.replace[id(site.node)] = nodes

    def rewire_weight(self, site: Site, new_input: str) -> None:
        """Keep the node; read its weight from ``new_input`` instead."""
        node = onnx.NodeProto()
        node.CopyFrom(site.node)
        node.input[site.weight_input] = new_input
        self.replace_node(site, [node])

    def node_name(self, site: Site, suffix: str = "") -> str:
        base = site.node.name or site.node.output[0]
        return self.names.new(f"{base}{suffix}")

    def apply(self) -> None:
        for graph in self.graphs.values():
            new_nodes = []
            for node in graph.node:
                new_nodes.extend(self.before.get(id(node), []))
                new_nodes.extend(self.replace.get(id(node), [node]))
            del graph.node[:]
            graph.node.extend(new_nodes)
        if self.uses_domain and not any(imp.domain == DOMAIN for imp in self.model.opset_import):
            self.model.opset_import.append(helper.make_opsetid(DOMAIN, DOMAIN_VERSION))


def rewrite(model: onnx.ModelProto, sites: list[Site], encoded: dict[tuple, CodedWeight | LowRankWeight],
            fmt: str) -> None:
    """Rewrite ``sites`` (found in ``model``) using ``encoded[site.weight_key]``."""
    ctx = RewriteContext(model, fmt)
    for site in sites:
        site.kind.rewrite(site, site.kind.stored_encoding(site, encoded[site.weight_key], fmt), ctx)
    ctx.apply()
    if ctx.uses_domain:
        fuse_bias_adds(model)
    _remove_unused(model, sites)


def _remove_unused(model: onnx.ModelProto, sites: list[Site]) -> None:
    """Drop weights, biases, Casts and Constant nodes the rewrite left without a reader."""
    def referenced_names() -> set[str]:
        names: set[str] = set()
        for graph, _ in walk_graphs(model.graph):
            for node in graph.node:
                names.update(node.input)
            names.update(o.name for o in graph.output)
        return names

    referenced = referenced_names()
    casts = {id(s.cast): (s.graph, s.cast) for s in sites if s.cast is not None}
    removed_cast = False
    for graph, cast in casts.values():
        if cast.output[0] not in referenced:
            kept = [n for n in graph.node if not (n.op_type == "Cast" and list(n.output) == list(cast.output))]
            del graph.node[:]
            graph.node.extend(kept)
            removed_cast = True
    if removed_cast:
        referenced = referenced_names()
    candidates = [s.weight for s in sites] + [s.bias for s in sites if s.bias is not None]
    for const in {id(c): c for c in candidates}.values():
        if const.name in referenced:
            continue
        if const.constant_node is not None:
            # Match by output: rebuilding graph.node above copied the node messages.
            nodes = [n for n in const.graph.node if not (n.op_type == "Constant" and list(n.output) == [const.name])]
            del const.graph.node[:]
            const.graph.node.extend(nodes)
        else:
            kept = [t for t in const.graph.initializer if t.name != const.name]
            del const.graph.initializer[:]
            const.graph.initializer.extend(kept)
        # An initializer listed as a graph input (old IR style) goes with it.
        kept_inputs = [i for i in const.graph.input if i.name != const.name]
        if len(kept_inputs) != len(const.graph.input):
            del const.graph.input[:]
            const.graph.input.extend(kept_inputs)
