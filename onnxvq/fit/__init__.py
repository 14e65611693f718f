"""Codebook fitting: batched k-means for vector codebooks, exact-grade 1-D k-means for scalar codebooks."""
from .kmeans import assign_nearest, fit_kmeans_batched
from .kmeans1d import fit_kmeans_1d, fit_kmeans_1d_batched

__all__ = ["assign_nearest", "fit_kmeans_batched", "fit_kmeans_1d", "fit_kmeans_1d_batched"]
