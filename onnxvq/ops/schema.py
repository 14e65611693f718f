"""The single definition of the VQMatMul and VQGather operators.

Everything else — the numpy reference, the graph pass, the portable emitter and the
C++ kernel (through the generated header ``custom_ops/generated/vq_schema.h``) — reads
its names and numbers from here. Run ``python -m onnxvq.ops.schema`` to regenerate the
header; ``tests/test_schema.py`` fails when the checked-in header is stale.

Semantics
---------
``Y[..., N] = X[..., K] @ W_hat[K, N] (+ bias[N])``.

W_hat is never stored. It is described by a matrix of *vectors* M (R rows of length
L = S * d after zero padding), split into S subvectors of length d:

* ``axis = 0`` (subvectors along K, the input axis):  M = W_hat^T, R = N, L = K
* ``axis = 1`` (subvectors along N, the output axis): M = W_hat,   R = K, L = N

and, with T residual stages (T = 1 for plain quantization)::

    M[r, s*d + j] = sum_t codebooks[t, s if codebook_per_subspace else 0,
                                    r // group_size, codes[t, r, s], j]

for s*d + j < L (padded positions are dropped). Every method of Gong et al. 2014 is
one setting of these attributes:

* scalar k-means: d = 1, one shared codebook (per tensor, or per group of rows)
* binary:         bits = 1, d = 1, group_size = 1, codebook [-alpha_r, +alpha_r]
* PQ:             d > 1, codebook_per_subspace = 1, either axis
* RQ:             T > 1 stages, summed

Code layout (format_version 1)
------------------------------
Logical codes have shape [T, R, S] (row-major) with values < 2**bits. They are stored
as one uint8 stream, bit-packed LSB-first: code i occupies stream bits
[i*bits, (i+1)*bits), bit b of the stream is bit (b % 8) of byte b // 8. The stream is
exactly ceil(T*R*S*bits / 8) bytes, so 3-bit codes cost 3 bits each.

Code layout (format_version 2: "fast-scan" blocks; axis = 0 and bits = 4 only)
-----------------------------------------------------------------------------
The kernel looks codes up 32 rows of M (32 outputs) at a time with one byte shuffle per
16 codes, so the codes are stored in that order. With E = T*S entries per row (entry
e = t*S + s, stage-major) and B = ceil(R / 32) blocks of 32 rows (rows >= R are padding
with code 0), the stream is exactly B * E * 16 bytes::

    byte[(b*E + e)*16 + j] = code(t, 32*b + j, s) | code(t, 32*b + 16 + j, s) << 4
    for b < B, e = t*S + s < E, j < 16

i.e. block b is E consecutive 16-byte groups; in group e, byte j holds row 32b+j in its
low nibble and row 32b+16+j in its high nibble. Padding nibbles must be 0 when written and
are ignored when read. Version 1 stays valid for every layout; version 2 is chosen by
setting ``format_version=2`` on the layout (``VQLayout.for_weight(..., format_version=None)``
picks 2 where it is valid).

Code layout (format_version 3: "byte-scan" blocks; axis = 0, bits = 8, d >= 2 only)
---------------------------------------------------------------------------------
The kernel looks 8-bit codes up 64 rows of M at a time with byte permutes over a 256-entry
table (AVX-512 VBMI), so each entry's 64 codes are consecutive bytes. With B = ceil(R / 64)
blocks (rows >= R are padding with code 0), the stream is exactly B * E * 64 bytes::

    byte[(b*E + e)*64 + j] = code(t, 64*b + j, s)      for b < B, e = t*S + s < E, j < 64

``VQLayout.for_weight(..., format_version=None)`` picks 3 where it is valid (8-bit PQ and RQ
along the input axis; scalar 8-bit k-means keeps format 1, read by the decode paths).

VQGather: embedding lookup on a compressed table
------------------------------------------------
``ai.onnxvq::VQGather`` (domain version 1) replaces ``Gather(table, indices)`` (axis 0) for a
constant table [V, D]; the table stays compressed and only the gathered rows are decoded.

Inputs (GATHER_INPUTS): ``indices`` (int32 or int64, any shape, rank >= 0), ``codes`` and
``codebooks`` (exactly as for VQMatMul). Attributes: exactly VQMatMul's (ATTRIBUTES, same
names, same meaning, same validation). The table is::

    T_hat[V, D] = W_hat^T,   D = in_features (K),  V = out_features (N)

where W_hat[K, N] is what VQMatMul decodes from the same codes, codebooks and attributes.
So with axis = 0 a table row is a row of M (M = W_hat^T, R = V, L = D: the common case);
with axis = 1 M = W_hat [D, V] (R = D, L = V) and table row v is column v of M. Every stage
count, group_size, codebook_per_subspace, bits 1..8, float32/float16 codebooks and both
format versions (1, and 2 under its usual constraints: axis 0, 4-bit codes) are supported.

Output (GATHER_OUTPUTS): ``Y``, float32, shape ``indices.shape + [D]``::

    Y[i..., :] = T_hat[idx[i...] + (V if idx[i...] < 0 else 0), :]

Indices follow ONNX Gather: a value in [-V, -1] counts from the end; any value outside
[-V, V - 1] is an error (the kernel names the node, the value and V) and nothing is read.
Decoded values are float32 sums over stages, t ascending from the stage-0 codeword (the
numpy reference sums in float64, which is the same for T <= 2 and within float32 rounding
for more stages).
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

DOMAIN = "ai.onnxvq"
DOMAIN_VERSION = 1
OP_TYPE = "VQMatMul"
#: Embedding lookup on a compressed table (same layout attributes as VQMatMul): see GATHER_INPUTS.
GATHER_OP_TYPE = "VQGather"

#: Version of the packed layout. Bump it whenever the meaning of the bytes changes;
#: the kernel refuses versions it does not know.
FORMAT_VERSION = 1
SUPPORTED_FORMAT_VERSIONS = (1, 2, 3)
#: format_version 2 (fast-scan blocks): its constraints and block geometry.
FASTSCAN_FORMAT_VERSION = 2
FASTSCAN_BITS = 4
FASTSCAN_BLOCK_ROWS = 32
FASTSCAN_GROUP_BYTES = 16
#: format_version 3 (byte-scan blocks): 8-bit codes of 64 rows per entry, axis 0, d >= 2.
BYTESCAN_FORMAT_VERSION = 3
BYTESCAN_BITS = 8
BYTESCAN_BLOCK_ROWS = 64
BYTESCAN_MIN_SUBVECTOR_LEN = 2

MIN_BITS = 1
MAX_BITS = 8
AXIS_IN = 0
AXIS_OUT = 1


@dataclass(frozen=True)
class InputSpec:
    name: str
    index: int
    optional: bool
    doc: str


INPUTS = (
    InputSpec("X", 0, False, "float32 activations, shape [..., K], rank >= 1"),
    InputSpec("codes", 1, False,
              "uint8 packed codes: v1 [ceil(T*R*S*bits/8)], v2 [ceil(R/32)*T*S*16], v3 [ceil(R/64)*T*S*64]"),
    InputSpec("codebooks", 2, False, "float32 or float16, shape [T, Gs, Gr, 2**bits, d]"),
    InputSpec("bias", 3, True, "float32, shape [N]; absent or empty name for no bias"),
)
OUTPUTS = (InputSpec("Y", 0, False, "float32, shape [..., N]"),)

#: VQGather's inputs and outputs (its attributes are ATTRIBUTES, shared with VQMatMul).
GATHER_INPUTS = (
    InputSpec("indices", 0, False, "int32 or int64, any shape (rank >= 0), values in [-V, V-1], V = out_features"),
    InputSpec("codes", 1, False, "uint8 packed codes, exactly as VQMatMul's codes"),
    InputSpec("codebooks", 2, False, "float32 or float16, shape [T, Gs, Gr, 2**bits, d], as VQMatMul's"),
)
GATHER_OUTPUTS = (InputSpec("Y", 0, False, "float32, shape indices.shape + [D], D = in_features"),)
#: Packed-layout versions VQGather reads (the graph pass emits format_version 1).
GATHER_SUPPORTED_FORMAT_VERSIONS = SUPPORTED_FORMAT_VERSIONS


@dataclass(frozen=True)
class AttrSpec:
    name: str
    cpp_name: str
    minimum: int
    doc: str


# Every attribute is a required INT. The order here is the order in the C++ struct.
ATTRIBUTES = (
    AttrSpec("format_version", "format_version", 1, "packed layout version, see FORMAT_VERSION"),
    AttrSpec("in_features", "K", 1, "K, the reduction dimension"),
    AttrSpec("out_features", "N", 1, "N, the output dimension"),
    AttrSpec("bits", "bits", MIN_BITS, "bits per code, 1..8; codebooks hold 2**bits codewords"),
    AttrSpec("subvector_len", "d", 1, "d, length of one subvector"),
    AttrSpec("num_subspaces", "S", 1, "S = ceil(L / d), subvectors per row of M"),
    AttrSpec("stages", "T", 1, "T, residual stages summed at decode"),
    AttrSpec("axis", "axis", 0, "0: subvectors along K (M = W^T); 1: along N (M = W)"),
    AttrSpec("group_size", "group_size", 1, "rows of M sharing one codebook group"),
    AttrSpec("codebook_per_subspace", "per_subspace", 0, "1: one codebook per subspace (Gs = S); 0: shared (Gs = 1)"),
)
ATTRIBUTE_NAMES = tuple(a.name for a in ATTRIBUTES)


def ceil_div(a: int, b: int) -> int:
    return -(-a // b)


@dataclass(frozen=True)
class VQLayout:
    """The attributes of one VQMatMul node, validated, with the derived sizes."""

    in_features: int
    out_features: int
    bits: int
    subvector_len: int
    num_subspaces: int
    stages: int = 1
    axis: int = AXIS_IN
    group_size: int = 0  # 0 here means "all rows in one group"; normalized in __post_init__
    codebook_per_subspace: int = 1
    format_version: int = FORMAT_VERSION

    def __post_init__(self):
        if self.group_size == 0:
            object.__setattr__(self, "group_size", self.rows)
        problems = self.problems()
        if problems:
            raise ValueError("invalid VQMatMul layout: " + "; ".join(problems))

    # --- derived sizes -------------------------------------------------------------
    @property
    def rows(self) -> int:
        """R, the number of rows of M."""
        return self.out_features if self.axis == AXIS_IN else self.in_features

    @property
    def length(self) -> int:
        """L, the unpadded length of a row of M."""
        return self.in_features if self.axis == AXIS_IN else self.out_features

    @property
    def padded_length(self) -> int:
        return self.num_subspaces * self.subvector_len

    @property
    def codebook_size(self) -> int:
        return 1 << self.bits

    @property
    def subspace_groups(self) -> int:
        """Gs."""
        return self.num_subspaces if self.codebook_per_subspace else 1

    @property
    def row_groups(self) -> int:
        """Gr."""
        return ceil_div(self.rows, self.group_size)

    @property
    def codes_shape(self) -> tuple[int, int, int]:
        return (self.stages, self.rows, self.num_subspaces)

    @property
    def num_codes(self) -> int:
        return self.stages * self.rows * self.num_subspaces

    @property
    def packed_nbytes(self) -> int:
        """Bytes of the op's codes input for this layout's format_version."""
        if self.format_version == FASTSCAN_FORMAT_VERSION:
            return (ceil_div(self.rows, FASTSCAN_BLOCK_ROWS) * self.stages * self.num_subspaces
                    * FASTSCAN_GROUP_BYTES)
        if self.format_version == BYTESCAN_FORMAT_VERSION:
            return ceil_div(self.rows, BYTESCAN_BLOCK_ROWS) * self.stages * self.num_subspaces * BYTESCAN_BLOCK_ROWS
        return ceil_div(self.num_codes * self.bits, 8)

    @staticmethod
    def fastscan_eligible(axis: int, bits: int) -> bool:
        """Whether format_version 2 (fast-scan blocks) can describe codes of this layout."""
        return axis == AXIS_IN and bits == FASTSCAN_BITS

    @staticmethod
    def bytescan_eligible(axis: int, bits: int, subvector_len: int) -> bool:
        """Whether format_version 3 (byte-scan blocks) can describe codes of this layout."""
        return axis == AXIS_IN and bits == BYTESCAN_BITS and subvector_len >= BYTESCAN_MIN_SUBVECTOR_LEN

    @property
    def table_shape(self) -> tuple[int, int]:
        """VQGather's table [V, D] = W_hat^T: (out_features, in_features)."""
        return (self.out_features, self.in_features)

    @property
    def codebooks_shape(self) -> tuple[int, int, int, int, int]:
        return (self.stages, self.subspace_groups, self.row_groups, self.codebook_size, self.subvector_len)

    def problems(self) -> list[str]:
        p = []
        if self.format_version not in SUPPORTED_FORMAT_VERSIONS:
            p.append(f"format_version {self.format_version} is not one of {SUPPORTED_FORMAT_VERSIONS}")
        if not MIN_BITS <= self.bits <= MAX_BITS:
            p.append(f"bits must be in [{MIN_BITS}, {MAX_BITS}], got {self.bits}")
        for name in ("in_features", "out_features", "subvector_len", "num_subspaces", "stages", "group_size"):
            if getattr(self, name) < 1:
                p.append(f"{name} must be >= 1, got {getattr(self, name)}")
        if self.axis not in (AXIS_IN, AXIS_OUT):
            p.append(f"axis must be 0 or 1, got {self.axis}")
        if self.codebook_per_subspace not in (0, 1):
            p.append(f"codebook_per_subspace must be 0 or 1, got {self.codebook_per_subspace}")
        if (self.format_version == FASTSCAN_FORMAT_VERSION
                and not self.fastscan_eligible(self.axis, self.bits)):
            p.append(f"format_version {FASTSCAN_FORMAT_VERSION} needs axis {AXIS_IN} and "
                     f"{FASTSCAN_BITS}-bit codes, got axis {self.axis} and {self.bits} bits")
        if (self.format_version == BYTESCAN_FORMAT_VERSION
                and not self.bytescan_eligible(self.axis, self.bits, self.subvector_len)):
            p.append(f"format_version {BYTESCAN_FORMAT_VERSION} needs axis {AXIS_IN}, {BYTESCAN_BITS}-bit codes "
                     f"and subvector_len >= {BYTESCAN_MIN_SUBVECTOR_LEN}, got axis {self.axis}, "
                     f"{self.bits} bits and subvector_len {self.subvector_len}")
        if not p and self.num_subspaces != ceil_div(self.length, self.subvector_len):
            p.append(
                f"num_subspaces must be ceil({self.length} / {self.subvector_len}) = "
                f"{ceil_div(self.length, self.subvector_len)}, got {self.num_subspaces}"
            )
        if not p and self.group_size > self.rows:
            p.append(f"group_size {self.group_size} exceeds the {self.rows} rows")
        return p

    # --- ONNX attributes -------------------------------------------------------------
    def attributes(self) -> dict[str, int]:
        return {a.name: int(getattr(self, a.name)) for a in ATTRIBUTES}

    @classmethod
    def from_attributes(cls, attrs: dict) -> "VQLayout":
        missing = [n for n in ATTRIBUTE_NAMES if n not in attrs]
        if missing:
            raise ValueError(f"VQMatMul is missing attribute(s) {missing}")
        return cls(**{n: int(attrs[n]) for n in ATTRIBUTE_NAMES})

    @classmethod
    def for_weight(cls, in_features: int, out_features: int, *, bits: int, subvector_len: int = 1,
                   axis: int = AXIS_IN, stages: int = 1, group_size: int = 0,
                   codebook_per_subspace: int = 1,
                   format_version: int | None = FORMAT_VERSION) -> "VQLayout":
        """``format_version=None`` picks the fastest packed layout valid for these settings."""
        length = in_features if axis == AXIS_IN else out_features
        if format_version is None:
            format_version = (FASTSCAN_FORMAT_VERSION if cls.fastscan_eligible(axis, bits)
                              else BYTESCAN_FORMAT_VERSION if cls.bytescan_eligible(axis, bits, subvector_len)
                              else FORMAT_VERSION)
        return cls(in_features=in_features, out_features=out_features, bits=bits,
                   subvector_len=subvector_len, num_subspaces=ceil_div(length, subvector_len),
                   stages=stages, axis=axis, group_size=group_size,
                   codebook_per_subspace=codebook_per_subspace, format_version=format_version)


# --- C++ header generation -----------------------------------------------------------
HEADER_PATH = Path(__file__).resolve().parents[2] / "custom_ops" / "generated" / "vq_schema.h"


def render_cpp_header() -> str:
    lines = [
        "// GENERATED by `python -m onnxvq.ops.schema` from onnxvq/ops/schema.py. Do not edit.",
        "// tests/test_schema.py fails when this file is out of date.",
        "#pragma once",
        "#include <cstdint>",
        "",
        "namespace onnxvq::schema {",
        f'inline constexpr const char* kDomain = "{DOMAIN}";',
        f"inline constexpr int kDomainVersion = {DOMAIN_VERSION};",
        f'inline constexpr const char* kOpType = "{OP_TYPE}";',
        f"inline constexpr int64_t kFormatVersion = {FORMAT_VERSION};",
        f"inline constexpr int64_t kMinBits = {MIN_BITS};",
        f"inline constexpr int64_t kMaxBits = {MAX_BITS};",
        f"inline constexpr int64_t kAxisIn = {AXIS_IN};",
        f"inline constexpr int64_t kAxisOut = {AXIS_OUT};",
        "",
        "// format_version 2: fast-scan blocks (axis 0, 4-bit codes only); see schema.py.",
        f"inline constexpr int64_t kFastScanFormatVersion = {FASTSCAN_FORMAT_VERSION};",
        f"inline constexpr int64_t kFastScanBits = {FASTSCAN_BITS};",
        f"inline constexpr int64_t kFastScanBlockRows = {FASTSCAN_BLOCK_ROWS};",
        f"inline constexpr int64_t kFastScanGroupBytes = {FASTSCAN_GROUP_BYTES};",
        "// format_version 3: byte-scan blocks (axis 0, 8-bit codes, d >= 2); see schema.py.",
        f"inline constexpr int64_t kByteScanFormatVersion = {BYTESCAN_FORMAT_VERSION};",
        f"inline constexpr int64_t kByteScanBits = {BYTESCAN_BITS};",
        f"inline constexpr int64_t kByteScanBlockRows = {BYTESCAN_BLOCK_ROWS};",
        f"inline constexpr int64_t kByteScanMinSubvectorLen = {BYTESCAN_MIN_SUBVECTOR_LEN};",
        "",
        "// Supported packed-layout versions.",
        "inline constexpr int64_t kSupportedFormatVersions[] = {"
        + ", ".join(str(v) for v in SUPPORTED_FORMAT_VERSIONS) + "};",
        "",
        "// Input indices.",
    ]
    for spec in INPUTS:
        lines.append(f"inline constexpr int kInput_{spec.name} = {spec.index};  // {spec.doc}")
    lines.append(f"inline constexpr int kNumInputs = {len(INPUTS)};")
    lines.append(f"inline constexpr int kNumRequiredInputs = {sum(not s.optional for s in INPUTS)};")
    lines += ["", "// VQGather: embedding lookup on a compressed table (same attributes as VQMatMul).",
              f'inline constexpr const char* kGatherOpType = "{GATHER_OP_TYPE}";']
    for spec in GATHER_INPUTS:
        lines.append(f"inline constexpr int kGatherInput_{spec.name} = {spec.index};  // {spec.doc}")
    lines.append(f"inline constexpr int kGatherNumInputs = {len(GATHER_INPUTS)};")
    lines.append(f"inline constexpr int kGatherNumOutputs = {len(GATHER_OUTPUTS)};")
    lines.append("inline constexpr int64_t kGatherSupportedFormatVersions[] = {"
                 + ", ".join(str(v) for v in GATHER_SUPPORTED_FORMAT_VERSIONS) + "};")
    lines += ["", "// Attributes: ONNX name, minimum value, and field of struct Attributes."]
    lines.append("struct AttributeSpec { const char* name; int64_t minimum; };")
    lines.append("inline constexpr AttributeSpec kAttributes[] = {")
    for a in ATTRIBUTES:
        lines.append(f'    {{"{a.name}", {a.minimum}}},  // {a.doc}')
    lines.append("};")
    lines.append(f"inline constexpr int kNumAttributes = {len(ATTRIBUTES)};")
    lines += ["", "// Filled in kAttributes order.", "struct Attributes {"]
    for a in ATTRIBUTES:
        lines.append(f"    int64_t {a.cpp_name};")
    lines += ["};", "}  // namespace onnxvq::schema", ""]
    return "\n".join(lines)


def main() -> None:
    HEADER_PATH.parent.mkdir(parents=True, exist_ok=True)
    HEADER_PATH.write_text(render_cpp_header())
    print(f"wrote {HEADER_PATH}")


if __name__ == "__main__":
    main()
