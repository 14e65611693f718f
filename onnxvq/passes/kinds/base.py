"""The SiteKind interface and its registry."""
from __future__ import annotations

import dataclasses

import numpy as np

from ...ops.schema import FORMAT_VERSION
from ...quantizers.base import CodedWeight

from ..sites import NodeContext, Site, Skipped

KINDS: list["SiteKind"] = []


def register_kind(cls):
    """Class decorator: one instance of each kind, looked up by op type."""
    KINDS.append(cls())
    return cls


class SiteKind:
    """One op family. Subclasses set ``name`` and ``op_types`` and implement the methods."""

    name = "base"
    op_types: tuple[str, ...] = ()

    def inspect(self, ctx: NodeContext) -> Site | Skipped | None:
        """A site, a skip with its reason, or None when the node is no candidate at all
        (e.g. a Gather over a non-constant tensor: listing those would only be noise)."""
        raise NotImplementedError

    def to_matrix(self, site: Site, weight: np.ndarray) -> np.ndarray:
        """The stored weight (float32, original shape) as W[K, N]."""
        raise NotImplementedError

    def from_matrix(self, site: Site, w: np.ndarray) -> np.ndarray:
        """Inverse of ``to_matrix``: W[K, N] back to the stored weight's shape."""
        raise NotImplementedError

    def view_key(self, site: Site) -> tuple:
        """What, beyond the tensor, decides the matrix view (sites with equal views share codes)."""
        return ()

    def stored_encoding(self, site: Site, encoded, fmt: str):
        """The encoding as the file will hold it. The quantizers pick the fastest VQMatMul code
        layout; a kind that stores codes for a standard-op decoder (or row by row) wants format 1."""
        return row_major(encoded)

    def corrects_bias(self, site: Site) -> bool:
        """Whether the rewrite can add ``site.params["bias_shift"]`` [N] to the node's bias."""
        return False

    def activation(self, site: Site) -> str:
        return site.node.input[0]

    def rewrite(self, site: Site, encoded, ctx) -> None:
        """Record the node's replacement in ``ctx`` (a passes.rewrite.RewriteContext)."""
        raise NotImplementedError


def row_major(encoded):
    """``encoded`` with its codes in format 1 (one LSB-first stream, row by row)."""
    if not isinstance(encoded, CodedWeight) or encoded.layout.format_version == FORMAT_VERSION:
        return encoded
    return dataclasses.replace(encoded, layout=dataclasses.replace(encoded.layout, format_version=FORMAT_VERSION))
