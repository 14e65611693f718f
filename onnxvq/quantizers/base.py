"""What a quantizer produces, and the registry that maps a config type to its quantizer."""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Callable

import numpy as np

from ..ops.packing import pack_codes, pack_for_op
from ..ops.schema import VQLayout


@dataclass(frozen=True)
class CodedWeight:
    """A weight W[K, N] as codes + codebooks, decoded by the VQMatMul op.

    codes:     uint8 [T, R, S] (unpacked; packed on the way into the model)
    codebooks: float32 or float16 [T, Gs, Gr, 2**bits, d]
    """

    layout: VQLayout
    codes: np.ndarray
    codebooks: np.ndarray
    #: Pruned: codeword 0 of every codebook is exactly 0 and stays so through any refit
    #: (quantizers/pruning.py); pruned weights are coded 0.
    zero_codeword: bool = False
    #: The codes as a tiered prefix code (ops.entropy.TieredCodes), stored instead of the packed
    #: stream and decoded by standard ops at load (--entropy); None: packed as the layout says.
    entropy: object | None = None

    def __post_init__(self):
        if self.codes.shape != self.layout.codes_shape:
            raise ValueError(f"codes shape {self.codes.shape} != layout {self.layout.codes_shape}")
        if self.codebooks.shape != self.layout.codebooks_shape:
            raise ValueError(f"codebooks shape {self.codebooks.shape} != layout {self.layout.codebooks_shape}")

    def decode(self) -> np.ndarray:
        """W_hat [K, N] float32, what the op computes with (float32 throughout: for a large layer the
        float64 reference decode would hold several copies of the whole matrix)."""
        return decode_matrix(self.layout, self.codes, self.codebooks.astype(np.float32, copy=False))

    def packed_codes(self) -> np.ndarray:
        """The custom op's codes input (layout set by the schema's format version)."""
        return pack_for_op(self.codes, self.layout)

    def flat_packed_codes(self) -> np.ndarray:
        """Codes as one LSB-first stream in [T, R, S] order: what the portable decoder unpacks."""
        return pack_codes(self.codes, self.layout.bits)

    def entropy_coded(self) -> "CodedWeight":
        """This weight with its codes entropy-coded, if that is smaller (decoder included)."""
        from ..ops.entropy import TENSOR_OVERHEAD_BYTES, encode
        from ..passes.entropy_decoder import decoder_overhead_bytes

        tiers = encode(self.codes.reshape(-1), self.layout.bits)
        # The plain stream is one initializer too: its header counts on both sides.
        if tiers.nbytes + decoder_overhead_bytes(tiers) >= self.plain_code_bytes + TENSOR_OVERHEAD_BYTES:
            return self
        return dataclasses.replace(self, entropy=tiers)

    @property
    def plain_code_bytes(self) -> int:
        """The packed stream's bytes (what the codes take without --entropy)."""
        return self.layout.packed_nbytes

    @property
    def code_bytes(self) -> int:
        return self.plain_code_bytes if self.entropy is None else int(self.entropy.nbytes)

    @property
    def codebook_bytes(self) -> int:
        return int(self.codebooks.nbytes)


def codebook_indices(layout: VQLayout) -> tuple[np.ndarray, np.ndarray]:
    """(subspace group of each subspace [S], row group of each row [R]): where a code looks up."""
    s_index = np.arange(layout.num_subspaces) if layout.codebook_per_subspace else np.zeros(layout.num_subspaces, np.intp)
    return s_index, np.arange(layout.rows) // layout.group_size


def decode_matrix(layout: VQLayout, codes: np.ndarray, codebooks: np.ndarray) -> np.ndarray:
    """W_hat [K, N] in the codebooks' dtype: the sum over stages of the codewords the codes select."""
    s_index, g_index = codebook_indices(layout)
    rows = codebooks[0][s_index[None, :], g_index[:, None], codes[0]]  # [R, S, d]
    for t in range(1, layout.stages):
        rows += codebooks[t][s_index[None, :], g_index[:, None], codes[t]]
    rows = rows.reshape(layout.rows, -1)[:, : layout.length]
    return np.ascontiguousarray(rows.T if layout.axis == 0 else rows)


@dataclass(frozen=True)
class LowRankWeight:
    """W[K, N] ~ first[K, r] @ second[r, N], written as two standard MatMuls."""

    first: np.ndarray
    second: np.ndarray

    @property
    def rank(self) -> int:
        return int(self.first.shape[1])

    def decode(self) -> np.ndarray:
        return self.first @ self.second

    @property
    def code_bytes(self) -> int:
        return int(self.first.nbytes + self.second.nbytes)

    @property
    def codebook_bytes(self) -> int:
        return 0


QuantizeFn = Callable[[np.ndarray, object, int], "CodedWeight | LowRankWeight"]
_REGISTRY: dict[type, QuantizeFn] = {}


def register(config_type: type):
    """Decorator: ``@register(PQConfig) def quantize(weight, config, seed) -> CodedWeight``."""

    def wrap(fn: QuantizeFn) -> QuantizeFn:
        _REGISTRY[config_type] = fn
        return fn

    return wrap


def quantize(weight: np.ndarray, config, seed: int = 0):
    """Quantize a float32 weight W[K, N] (ONNX MatMul orientation) with the method ``config`` names."""
    try:
        fn = _REGISTRY[type(config)]
    except KeyError:
        raise TypeError(f"no quantizer registered for {type(config).__name__}") from None
    return fn(np.ascontiguousarray(weight, dtype=np.float32), config, seed)


RefineFn = Callable[[np.ndarray, object, object, object], object]
_DATA_AWARE: dict[type, RefineFn] = {}


def register_data_aware(config_type: type):
    """Decorator for a method whose data-aware fit is not the generic code refit
    (``fit.data_aware.refine_codes``): ``fn(weight, config, data_free_encoding, stats, centered) ->
    DataAwareFit`` (centered: minimize the error a bias correction leaves)."""

    def wrap(fn: RefineFn) -> RefineFn:
        _DATA_AWARE[config_type] = fn
        return fn

    return wrap


def quantize_data_aware(weight: np.ndarray, config, stats, seed: int = 0, correct_bias: bool = False):
    """Fit W[K, N] to minimize its output error on calibration inputs (``stats``: a
    calibration.LayerStats); returns a fit.data_aware.DataAwareFit. Starts from the data-free fit.

    ``correct_bias``: the layer's bias will absorb the mean output shift, so the fit minimizes the
    error that is left (covariance instead of second moment) and returns the shift."""
    from ..fit.data_aware import refine_codes, with_bias_correction

    weight = np.ascontiguousarray(weight, dtype=np.float32)
    encoded = quantize(weight, config, seed)
    correct_bias = correct_bias and stats.mean is not None
    refine = _DATA_AWARE.get(type(config))
    if refine is not None:
        fit = refine(weight, config, encoded, stats, correct_bias)
    else:
        # The paper's plain +-1 binarization has no codebook to fit; its codes still get the feedback.
        fit = refine_codes(encoded, weight, stats, codebook_dtype=getattr(config, "codebook_dtype", "float32"),
                           refit=getattr(config, "scaled", True), centered=correct_bias,
                           prune=getattr(config, "prune", 0.0))
    return with_bias_correction(fit, weight, stats) if correct_bias else fit


def to_codebook_dtype(codebooks: np.ndarray, dtype: str) -> np.ndarray:
    return codebooks.astype(np.float16 if dtype == "float16" else np.float32)


def subvectors(weight: np.ndarray, d: int, axis: str) -> np.ndarray:
    """Split W[K, N] into subvectors: returns [S, R, d] float32, zero-padded to S*d.

    axis "in": rows are output channels (M = W^T), subvectors run along K.
    axis "out": rows are input channels (M = W), subvectors run along N.
    """
    m = weight.T if axis == "in" else weight
    rows, length = m.shape
    s = -(-length // d)
    padded = np.zeros((rows, s * d), dtype=np.float32)
    padded[:, :length] = m
    return np.ascontiguousarray(padded.reshape(rows, s, d).transpose(1, 0, 2))
