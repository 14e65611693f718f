"""Replace each site's node with the compressed form, in place on a model copy.

* custom format: one VQMatMul node (our domain) reading codes + codebooks initializers;
* portable format: a standard-op decoder (see portable.py) feeding a MatMul (+ Add);
* low-rank results (SVD) are two MatMuls (+ Add) in either format.
Output names, node order and everything unrelated stay as they were. Weights and biases no
longer used by any node are removed.
"""
from __future__ import annotations

from collections import defaultdict

import numpy as np
import onnx
from onnx import helper, numpy_helper

from ..errors import InvalidModel
from ..ops.schema import DOMAIN, DOMAIN_VERSION, OP_TYPE
from ..quantizers.base import CodedWeight, LowRankWeight
from .names import NameAllocator
from .portable import MIN_OPSET, build_decoder
from .sites import Site, walk_graphs


def default_opset(model: onnx.ModelProto) -> int:
    for imp in model.opset_import:
        if imp.domain in ("", "ai.onnx"):
            return imp.version
    return 0


def rewrite(model: onnx.ModelProto, sites: list[Site], encoded: dict[tuple, CodedWeight | LowRankWeight],
            fmt: str) -> None:
    """Rewrite ``sites`` (found in ``model``) using ``encoded[site.weight_key]``."""
    if fmt == "portable" and default_opset(model) < MIN_OPSET:
        raise InvalidModel(f"--format portable needs opset >= {MIN_OPSET}; the model imports opset "
                           f"{default_opset(model)}")
    names = NameAllocator(model)
    stored: dict[tuple, list[str]] = {}            # weight key -> its new initializers' names
    decoded: dict[tuple, str] = {}                 # (graph id, weight key) -> W_hat name (portable)
    before: dict[int, list[onnx.NodeProto]] = defaultdict(list)   # id(node) -> nodes to insert before it
    replace: dict[int, list[onnx.NodeProto]] = {}
    graphs: dict[int, onnx.GraphProto] = {}

    for site in sites:
        enc = encoded[site.weight_key]
        graphs[id(site.graph)] = site.graph
        base = _base_name(site)
        bias_name = _bias_input(site, names, base)
        if isinstance(enc, LowRankWeight):
            if site.weight_key not in stored:
                stored[site.weight_key] = _add_low_rank_initializers(site, enc, names)
            replace[id(site.node)] = _low_rank_nodes(site, stored[site.weight_key], names, base, bias_name)
        elif fmt == "custom":
            if site.weight_key not in stored:
                stored[site.weight_key] = _add_coded_initializers(site, enc, names)
            codes, codebooks = stored[site.weight_key]
            inputs = [site.activation, codes, codebooks] + ([bias_name] if bias_name else [])
            node = helper.make_node(OP_TYPE, inputs, list(site.node.output), name=site.node.name or names.new(base),
                                    domain=DOMAIN, **enc.layout.attributes())
            replace[id(site.node)] = [node]
        else:
            key = (id(site.graph), site.weight_key)
            if key not in decoded:
                nodes, inits, w_name = build_decoder(enc, names, f"{site.weight.name}.vq")
                site.graph.initializer.extend(inits)
                before[id(site.node)].extend(nodes)
                decoded[key] = w_name
            replace[id(site.node)] = _matmul_nodes(site, site.activation, decoded[key], names, base, bias_name)

    for graph in graphs.values():
        new_nodes = []
        for node in graph.node:
            new_nodes.extend(before.get(id(node), []))
            new_nodes.extend(replace.get(id(node), [node]))
        del graph.node[:]
        graph.node.extend(new_nodes)

    if fmt == "custom" and any(isinstance(e, CodedWeight) for e in encoded.values()):
        _import_domain(model)
    _remove_unused(model, sites)


def _base_name(site: Site) -> str:
    return site.node.name or site.node.output[0]


def _bias_input(site: Site, names: NameAllocator, base: str) -> str | None:
    if site.bias_array is None:
        return None
    b = site.bias.array()
    if b.shape == site.bias_array.shape and np.array_equal(b, site.bias_array):
        return site.bias.name  # reuse the original [N] initializer unchanged
    name = names.new(f"{base}.bias")
    site.bias.graph.initializer.append(numpy_helper.from_array(site.bias_array, name))
    return name


def _add_coded_initializers(site: Site, enc: CodedWeight, names: NameAllocator) -> list[str]:
    codes = names.new(f"{site.weight.name}.vq_codes")
    codebooks = names.new(f"{site.weight.name}.vq_codebooks")
    site.weight.graph.initializer.extend([
        numpy_helper.from_array(enc.packed_codes(), codes),
        numpy_helper.from_array(np.ascontiguousarray(enc.codebooks), codebooks),
    ])
    return [codes, codebooks]


def _matmul_nodes(site: Site, activation: str, weight: str, names: NameAllocator, base: str, bias: str | None):
    """MatMul(activation, weight) (+ bias) producing the site's original output."""
    out = site.node.output[0]
    final_name = site.node.name or names.new(base)
    if bias is None:
        return [helper.make_node("MatMul", [activation, weight], [out], name=final_name)]
    hidden = names.new(f"{base}.matmul")
    return [helper.make_node("MatMul", [activation, weight], [hidden], name=names.new(f"{base}.matmul_node")),
            helper.make_node("Add", [hidden, bias], [out], name=final_name)]


def _add_low_rank_initializers(site: Site, enc: LowRankWeight, names: NameAllocator) -> list[str]:
    first = names.new(f"{site.weight.name}.svd_a")
    second = names.new(f"{site.weight.name}.svd_b")
    site.weight.graph.initializer.extend([numpy_helper.from_array(enc.first, first),
                                          numpy_helper.from_array(enc.second, second)])
    return [first, second]


def _low_rank_nodes(site: Site, factors: list[str], names: NameAllocator, base: str, bias: str | None):
    first, second = factors
    hidden = names.new(f"{base}.svd_hidden")
    first_node = helper.make_node("MatMul", [site.activation, first], [hidden], name=names.new(f"{base}.svd_first"))
    return [first_node, *_matmul_nodes(site, hidden, second, names, base, bias)]


def _import_domain(model: onnx.ModelProto) -> None:
    if not any(imp.domain == DOMAIN for imp in model.opset_import):
        model.opset_import.append(helper.make_opsetid(DOMAIN, DOMAIN_VERSION))


def _remove_unused(model: onnx.ModelProto, sites: list[Site]) -> None:
    """Drop weights, biases and Constant nodes the rewrite left without a reader."""
    referenced: set[str] = set()
    for graph, _ in walk_graphs(model.graph):
        for node in graph.node:
            referenced.update(node.input)
        referenced.update(o.name for o in graph.output)
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
