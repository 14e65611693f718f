"""Parity: run the original and the compressed model on the same inputs and compare outputs."""
from __future__ import annotations

from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import onnx

from .errors import InvalidModel, RuntimeFailure

_NUMPY_OF_ONNX = {
    onnx.TensorProto.FLOAT: np.float32, onnx.TensorProto.DOUBLE: np.float64, onnx.TensorProto.FLOAT16: np.float16,
    onnx.TensorProto.INT64: np.int64, onnx.TensorProto.INT32: np.int32, onnx.TensorProto.INT8: np.int8,
    onnx.TensorProto.UINT8: np.uint8, onnx.TensorProto.BOOL: np.bool_, onnx.TensorProto.INT16: np.int16,
    onnx.TensorProto.UINT16: np.uint16, onnx.TensorProto.UINT32: np.uint32, onnx.TensorProto.UINT64: np.uint64,
}


@dataclass
class OutputParity:
    name: str
    max_abs_err: float
    rel_err: float
    cosine: float
    top1_agreement: float | None = None
    top5_agreement: float | None = None


@dataclass
class Parity:
    outputs: list[OutputParity] = field(default_factory=list)
    samples: int = 0

    def summary(self) -> dict:
        """Worst case over outputs: what the compress report's `parity` field holds."""
        if not self.outputs:
            return {}
        top1 = [o.top1_agreement for o in self.outputs if o.top1_agreement is not None]
        top5 = [o.top5_agreement for o in self.outputs if o.top5_agreement is not None]
        return {
            "max_abs_err": max(o.max_abs_err for o in self.outputs),
            "rel_err": max(o.rel_err for o in self.outputs),
            "cosine": min(o.cosine for o in self.outputs),
            "top1_agreement": min(top1) if top1 else None,
            "top5_agreement": min(top5) if top5 else None,
            "samples": self.samples,
        }

    def to_dict(self) -> dict:
        return {"summary": self.summary(), "outputs": [asdict(o) for o in self.outputs]}

    def failures(self, min_cosine: float | None = None, max_rel_err: float | None = None) -> list[str]:
        problems = []
        for o in self.outputs:
            if min_cosine is not None and not o.cosine >= min_cosine:
                problems.append(f"output {o.name!r}: cosine {o.cosine:.6f} < --min-cosine {min_cosine}")
            if max_rel_err is not None and not o.rel_err <= max_rel_err:
                problems.append(f"output {o.name!r}: relative error {o.rel_err:.6g} > --max-rel-err {max_rel_err}")
        return problems


def compare_outputs(name: str, reference: np.ndarray, candidate: np.ndarray) -> OutputParity:
    # Inf/NaN outputs give NaN metrics (which fail every threshold), not RuntimeWarnings on stderr.
    with np.errstate(all="ignore"):
        return _compare_outputs(name, reference, candidate)


def _compare_outputs(name: str, reference: np.ndarray, candidate: np.ndarray) -> OutputParity:
    ref = np.asarray(reference, dtype=np.float64)
    cand = np.asarray(candidate, dtype=np.float64)
    if ref.shape != cand.shape:
        raise RuntimeFailure(f"output {name!r}: original shape {list(ref.shape)} != compressed shape {list(cand.shape)}")
    diff = cand - ref
    max_abs = float(np.max(np.abs(diff))) if diff.size else 0.0
    ref_norm = float(np.linalg.norm(ref))
    rel = float(np.linalg.norm(diff) / ref_norm) if ref_norm > 0 else float(np.linalg.norm(diff) > 0)
    denom = float(np.linalg.norm(ref) * np.linalg.norm(cand))
    cosine = float(np.sum(ref * cand) / denom) if denom > 0 else float(np.array_equal(ref, cand))
    result = OutputParity(name, max_abs, rel, cosine)
    if ref.ndim >= 2 and ref.shape[-1] >= 2 and np.issubdtype(np.asarray(reference).dtype, np.floating):
        r2, c2 = ref.reshape(-1, ref.shape[-1]), cand.reshape(-1, cand.shape[-1])
        top1_ref = r2.argmax(axis=1)
        result.top1_agreement = float(np.mean(top1_ref == c2.argmax(axis=1)))
        if ref.shape[-1] >= 5:
            top5_cand = np.argsort(-c2, axis=1, kind="stable")[:, :5]
            result.top5_agreement = float(np.mean((top5_cand == top1_ref[:, None]).any(axis=1)))
    return result


#: Generated parity inputs larger than this (per input) are refused rather than allocated.
MAX_GENERATED_ELEMENTS = 1 << 28

#: Dynamic non-batch dims of token-like inputs default to this (a 1-token "sentence" is degenerate).
DEFAULT_SEQUENCE_LENGTH = 16

# Ops that pass integer values through unchanged (only reshaping or selecting them): ids stay ids.
# The tensor must be their data input (input 0), except for Concat, where every input is data.
_VALUE_PRESERVING = {"Cast", "Unsqueeze", "Reshape", "Squeeze", "Identity", "Flatten", "Transpose", "Expand",
                     "Slice", "Tile", "Concat"}
# Ops between a constant and a Gather that keep the table's row count.
_TABLE_PRESERVING = {"Cast", "Identity", "DequantizeLinear"}


@dataclass
class InputRule:
    """How one generated input was made: what a report shows next to the parity table."""
    name: str
    dtype: str
    shape: list[int]
    rule: str        # "random-normal", "zeros", "token-ids", "mask-ones", "segment-zeros", "positions", "full-range"
    detail: str      # one human sentence, e.g. "ids uniform in [1, 50) (rows of table 'emb')"

    def to_dict(self) -> dict:
        return asdict(self)

    def __str__(self) -> str:
        return f"{self.name} {self.dtype}{self.shape}: {self.detail}"


@dataclass
class GeneratedInputs:
    feeds: dict[str, np.ndarray]
    rules: list[InputRule]

    def describe(self) -> str:
        return "\n".join(str(r) for r in self.rules)


def graph_inputs(model: onnx.ModelProto) -> list[onnx.ValueInfoProto]:
    initializers = {t.name for t in model.graph.initializer}
    return [i for i in model.graph.input if i.name not in initializers]


def make_inputs(model: onnx.ModelProto, samples: int = 8, seed: int = 0,
                dims: dict[str, int] | None = None) -> dict[str, np.ndarray]:
    """Random inputs shaped from the model: the first dynamic dim takes ``samples``, others ``dims`` or 1.

    Integer inputs get values that mean something (see ``generate_inputs``) or an InvalidModel."""
    return generate_inputs(model, samples, seed, dims).feeds


def generate_inputs(model: onnx.ModelProto, samples: int = 8, seed: int = 0,
                    dims: dict[str, int] | None = None) -> GeneratedInputs:
    """Inputs for the parity check, and the rule that made each one.

    Float inputs: standard normal. Bool inputs: False (True when the name says mask). Integer inputs:
    token ids when they reach an embedding ``Gather`` as its indices, ones for masks, zeros for
    segment/token-type ids, 0..seq-1 for positions, the whole range for 8-bit values cast to float
    (images); any other integer input is refused: zeros or noise would make the check say nothing.
    Dynamic non-batch dims of token-like inputs default to DEFAULT_SEQUENCE_LENGTH.
    """
    dims = dict(dims or {})
    rng = np.random.default_rng(seed)
    # Integer values come from their own stream so float inputs are the same with or without them.
    int_rng = np.random.default_rng([seed, 1])
    usage = _Usage(model)
    values = graph_inputs(model)
    plans = []
    for value in values:
        if not value.type.HasField("tensor_type"):
            raise InvalidModel(f"input {value.name!r} is not a tensor; pass --data with its values")
        t = value.type.tensor_type
        dtype = _NUMPY_OF_ONNX.get(t.elem_type)
        if dtype is None:
            raise InvalidModel(f"input {value.name!r} has a dtype onnxvq cannot generate; pass --data")
        plans.append((value, dtype, _role(value.name, dtype, usage)))
    # A sequence dim named on a token input is the sequence everywhere (masks, embeddings inputs).
    sequence_dims = set()
    for value, _, (rule, _) in plans:
        if rule in _TOKEN_LIKE:
            for i, dim in enumerate(value.type.tensor_type.shape.dim):
                if i > 0 and not (dim.HasField("dim_value") and dim.dim_value > 0) and dim.dim_param:
                    sequence_dims.add(dim.dim_param)
    feeds, rules = {}, []
    for value, dtype, (rule, info) in plans:
        token_like = rule in _TOKEN_LIKE
        shape = []
        for i, dim in enumerate(value.type.tensor_type.shape.dim):
            if dim.HasField("dim_value") and dim.dim_value > 0:
                shape.append(dim.dim_value)
            elif dim.dim_param in dims:
                shape.append(dims[dim.dim_param])
            elif i == 0:
                shape.append(samples)
            elif token_like or dim.dim_param in sequence_dims:
                shape.append(DEFAULT_SEQUENCE_LENGTH)
            else:
                shape.append(1)
        count = 1
        for d in shape:
            count *= d
        if count > MAX_GENERATED_ELEMENTS:
            raise InvalidModel(f"input {value.name!r} declares shape {shape} ({count} values), too large to "
                               f"generate test inputs for; pass --data, --samples or --input-dim NAME=N")
        if rule == "unknown":
            raise InvalidModel(
                f"input {value.name!r} ({np.dtype(dtype).name}): onnxvq cannot generate meaningful values for it "
                f"(not token ids reaching an embedding table, nor a mask, segment or position input); "
                f"pass --data with real inputs (or --no-check to skip the check)")
        array, detail = _fill(rule, info, shape, dtype, rng, int_rng)
        feeds[value.name] = array
        rules.append(InputRule(value.name, np.dtype(dtype).name, shape, rule, detail))
    return GeneratedInputs(feeds, rules)


_TOKEN_LIKE = {"token-ids", "mask-ones", "segment-zeros", "positions"}


def _role(name: str, dtype, usage: "_Usage") -> tuple[str, object]:
    """(rule, info) for one input; info is the table (name, rows) for token ids."""
    if np.issubdtype(dtype, np.floating):
        return "random-normal", None
    lowered = name.lower()
    if dtype is np.bool_:
        return ("mask-ones", None) if "mask" in lowered else ("zeros", None)
    # Names first: position and segment ids also index embedding tables, but not uniformly.
    if "position" in lowered:
        return "positions", None
    if "token_type" in lowered or "segment" in lowered:
        return "segment-zeros", None
    if "mask" in lowered:
        return "mask-ones", None
    table = usage.smallest_table(name)
    if table is not None:
        return "token-ids", table
    if dtype in (np.uint8, np.int8) and usage.cast_to_float(name):
        return "full-range", None  # 8-bit values turned into floats: pixels or quantized data
    return "unknown", None


def _fill(rule: str, info, shape: list[int], dtype, rng, int_rng) -> tuple[np.ndarray, str]:
    if rule == "random-normal":
        return rng.standard_normal(shape).astype(dtype), "random normal"
    if rule == "zeros":
        return np.zeros(shape, dtype=dtype), "zeros (False)"
    if rule == "mask-ones":
        return np.ones(shape, dtype=dtype), "attention mask: all ones (every position attended)"
    if rule == "segment-zeros":
        return np.zeros(shape, dtype=dtype), "segment / token type ids: zeros (one segment)"
    if rule == "positions":
        seq = shape[-1] if shape else 1
        values = np.broadcast_to(np.arange(seq, dtype=dtype), shape).copy() if shape else np.zeros((), dtype)
        return values, f"position ids: 0..{seq - 1} along the last axis"
    if rule == "full-range":
        info8 = np.iinfo(dtype)
        values = int_rng.integers(info8.min, int(info8.max) + 1, size=shape, dtype=dtype)
        return values, f"uniform over the whole {np.dtype(dtype).name} range (cast to float in the model)"
    if rule == "token-ids":
        table, rows = info
        high = min(rows, int(np.iinfo(dtype).max) + 1)
        # 0 is usually padding: real text is made of the other ids.
        low = 1 if high > 1 else 0
        values = int_rng.integers(low, max(high, 1), size=shape, dtype=np.int64).astype(dtype)
        return values, f"token ids uniform in [{low}, {high}) (rows of embedding table {table!r})"
    raise AssertionError(rule)


class _Usage:
    """Who consumes each tensor, across the main graph and every subgraph (they see outer names)."""

    MAX_VISITED = 10_000  # a bound on the walk from one input, for pathological graphs

    def __init__(self, model: onnx.ModelProto):
        self.consumers: dict[str, list[tuple[onnx.NodeProto, int]]] = {}
        self.producer: dict[str, onnx.NodeProto] = {}
        self.const_dims: dict[str, tuple[int, ...]] = {}
        self._scan(model.graph)

    def _scan(self, graph: onnx.GraphProto) -> None:
        for t in graph.initializer:
            self.const_dims[t.name] = tuple(t.dims)
        for t in graph.sparse_initializer:
            self.const_dims[t.values.name] = tuple(t.dims)
        for node in graph.node:
            for index, name in enumerate(node.input):
                if name:
                    self.consumers.setdefault(name, []).append((node, index))
            for name in node.output:
                self.producer[name] = node
            if node.op_type == "Constant" and node.domain in ("", "ai.onnx") and node.output:
                for attr in node.attribute:
                    if attr.name == "value":
                        self.const_dims[node.output[0]] = tuple(attr.t.dims)
                    elif attr.name == "sparse_value":
                        self.const_dims[node.output[0]] = tuple(attr.sparse_tensor.dims)
            for attr in node.attribute:
                if attr.type == onnx.AttributeProto.GRAPH:
                    self._scan(attr.g)
                elif attr.type == onnx.AttributeProto.GRAPHS:
                    for g in attr.graphs:
                        self._scan(g)

    def _reached(self, name: str):
        """(node, input index) of every consumer of ``name`` or of values passed through unchanged."""
        seen, todo = {name}, [name]
        while todo and len(seen) < self.MAX_VISITED:
            current = todo.pop()
            for node, index in self.consumers.get(current, ()):
                yield node, index
                if node.domain not in ("", "ai.onnx"):
                    continue
                nxt = []
                if node.op_type in _VALUE_PRESERVING and (index == 0 or node.op_type == "Concat"):
                    nxt = list(node.output[:1])
                elif node.op_type in ("Loop", "Scan"):
                    # Loop inputs (M, cond, v...) line up with body inputs (iter, cond, v...): carried
                    # values keep their index, as Scan's inputs do.
                    body = next((a.g for a in node.attribute if a.name == "body"), None)
                    if body is not None and (node.op_type == "Scan" or index >= 2) and index < len(body.input):
                        nxt = [body.input[index].name]
                for out in nxt:
                    if out and out not in seen:
                        seen.add(out)
                        todo.append(out)

    def _table_rows(self, name: str, axis: int) -> int | None:
        for _ in range(8):
            dims = self.const_dims.get(name)
            if dims is not None:
                axis = axis + len(dims) if axis < 0 else axis
                return int(dims[axis]) if 0 <= axis < len(dims) else None
            node = self.producer.get(name)
            if node is None or node.op_type not in _TABLE_PRESERVING or not node.input:
                return None
            name = node.input[0]
        return None

    def smallest_table(self, name: str) -> tuple[str, int] | None:
        """(table, rows) of the smallest constant table ``name`` indexes through a Gather, or None."""
        from .ops.schema import DOMAIN, GATHER_OP_TYPE

        best = None
        for node, index in self._reached(name):
            if node.op_type == GATHER_OP_TYPE and node.domain == DOMAIN and index == 0:
                # an already compressed embedding: V = out_features (ops/schema.py)
                rows = next((a.i for a in node.attribute if a.name == "out_features"), None)
                table = node.name or node.output[0]
            elif node.op_type == "Gather" and node.domain in ("", "ai.onnx") and index == 1:
                axis = next((a.i for a in node.attribute if a.name == "axis"), 0)
                rows, table = self._table_rows(node.input[0], axis), node.input[0]
            else:
                continue
            if rows and rows > 0 and (best is None or rows < best[1]):
                best = (table, rows)
        return best

    def cast_to_float(self, name: str) -> bool:
        floats = {onnx.TensorProto.FLOAT, onnx.TensorProto.DOUBLE, onnx.TensorProto.FLOAT16,
                  onnx.TensorProto.BFLOAT16}
        for node, index in self._reached(name):
            if node.op_type == "Cast" and index == 0:
                to = next((a.i for a in node.attribute if a.name == "to"), None)
                if to in floats:
                    return True
            if node.op_type == "DequantizeLinear" and index == 0:
                return True
        return False


def load_inputs(model: onnx.ModelProto, path: str | Path, samples: int | None = None) -> dict[str, np.ndarray]:
    """Inputs from an .npz: keys are input names (or one array, e.g. ``x``, for a single-input model)."""
    try:
        data = dict(np.load(path, allow_pickle=False))
    except Exception as exc:  # noqa: BLE001
        raise InvalidModel(f"{path}: cannot read inputs: {exc}") from None
    names = [v.name for v in graph_inputs(model)]
    feeds = {n: data[n] for n in names if n in data}
    if len(feeds) < len(names):
        if len(names) == 1 and "x" in data:
            feeds = {names[0]: data["x"]}
        else:
            missing = [n for n in names if n not in feeds]
            raise InvalidModel(f"{path}: no array for input(s) {missing} (has {sorted(data)})")
    if samples:
        feeds = {k: v[:samples] for k, v in feeds.items()}
    return feeds


def run(session, feeds: dict[str, np.ndarray], label: str) -> dict[str, np.ndarray]:
    try:
        names = [o.name for o in session.get_outputs()]
        return dict(zip(names, session.run(names, feeds)))
    except Exception as exc:  # noqa: BLE001 - onnxruntime errors become one line
        raise RuntimeFailure(f"onnxruntime failed to run the {label} model: {str(exc).strip().splitlines()[0]}") from None


def open_session(model_or_path, label: str):
    from .runtime import session

    if isinstance(model_or_path, onnx.ModelProto):
        payload = model_or_path.SerializeToString()
    elif isinstance(model_or_path, bytes):
        payload = model_or_path
    else:
        payload = str(model_or_path)
    import onnxruntime as ort

    options = ort.SessionOptions()
    # onnxruntime logs warnings and kernel errors straight to stderr; the CLI reports a failure
    # itself, in one line, so only fatal messages may pass.
    options.log_severity_level = 4
    try:
        return session(payload, options)
    except Exception as exc:  # noqa: BLE001
        raise RuntimeFailure(f"onnxruntime cannot load the {label} model: {str(exc).strip().splitlines()[0]}") from None


def check_parity(original, compressed, feeds: dict[str, np.ndarray]) -> Parity:
    """Run both (paths or ModelProtos) on ``feeds``; compare every output the compressed model shares."""
    ref = run(open_session(original, "original"), feeds, "original")
    out = run(open_session(compressed, "compressed"), feeds, "compressed")
    samples = next(iter(feeds.values())).shape[0] if feeds and next(iter(feeds.values())).ndim else 1
    return Parity([compare_outputs(name, ref[name], out[name]) for name in ref if name in out], samples)


def _with_outputs(model: onnx.ModelProto, names: list[str]) -> bytes:
    import copy

    model = copy.deepcopy(model)
    existing = {o.name for o in model.graph.output}
    for name in names:
        if name not in existing:
            model.graph.output.append(onnx.helper.make_empty_tensor_value_info(name))
    return model.SerializeToString()


def layer_output_errors(original: onnx.ModelProto, compressed: onnx.ModelProto,
                        feeds: dict[str, np.ndarray], layers: dict[str, str] | None = None) -> list[dict]:
    """Relative L2 error of each compressed main-graph layer's own output, on the same inputs.

    ``layers`` maps layer name -> output tensor (as the compress report knows them: convolutions keep
    their node, and a folded BatchNorm's output is the conv's); without it, every node of our domain.
    The rewrite keeps every node's output names, so both models can expose them as extra outputs.
    """
    from .ops.schema import DOMAIN

    produced = {o for n in original.graph.node for o in n.output}
    main_outputs = {o for n in compressed.graph.node for o in n.output}
    if layers is None:
        layers = {node.name: node.output[0] for node in compressed.graph.node
                  if node.domain == DOMAIN and node.output}
    layers = [(name, out) for name, out in layers.items() if out in produced and out in main_outputs]
    if not layers:
        return []
    names = [out for _, out in layers]
    ref = run(open_session(_with_outputs(original, names), "original"), feeds, "original")
    got = run(open_session(_with_outputs(compressed, names), "compressed"), feeds, "compressed")
    rows = []
    for layer, out in layers:
        p = compare_outputs(out, ref[out], got[out])
        rows.append({"name": layer, "output": out, "rel_err": p.rel_err, "cosine": p.cosine})
    return rows
