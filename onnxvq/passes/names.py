"""Unique names for the tensors and nodes a pass adds."""
from __future__ import annotations

import onnx

from .sites import walk_graphs


class NameAllocator:
    def __init__(self, model: onnx.ModelProto):
        self.used: set[str] = set()
        for graph, _ in walk_graphs(model.graph):
            self.used.update(t.name for t in graph.initializer)
            self.used.update(v.name for v in (*graph.input, *graph.output, *graph.value_info))
            for node in graph.node:
                self.used.update(node.output)
                self.used.update(node.input)
                self.used.add(node.name)

    def new(self, base: str) -> str:
        name, i = base, 1
        while name in self.used:
            name = f"{base}_{i}"
            i += 1
        self.used.add(name)
        return name
