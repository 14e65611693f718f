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
    onnx.TensorProto.UINT8: np.uint8, onnx.TensorProto.BOOL: np.bool_,
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


def graph_inputs(model: onnx.ModelProto) -> list[onnx.ValueInfoProto]:
    initializers = {t.name for t in model.graph.initializer}
    return [i for i in model.graph.input if i.name not in initializers]


def make_inputs(model: onnx.ModelProto, samples: int = 8, seed: int = 0,
                dims: dict[str, int] | None = None) -> dict[str, np.ndarray]:
    """Random inputs shaped from the model: the first dynamic dim takes ``samples``, others ``dims`` or 1."""
    dims = dims or {}
    rng = np.random.default_rng(seed)
    feeds = {}
    for value in graph_inputs(model):
        t = value.type.tensor_type
        if not value.type.HasField("tensor_type"):
            raise InvalidModel(f"input {value.name!r} is not a tensor; pass --data with its values")
        shape = []
        for i, dim in enumerate(t.shape.dim):
            if dim.HasField("dim_value") and dim.dim_value > 0:
                shape.append(dim.dim_value)
            elif dim.dim_param in dims:
                shape.append(dims[dim.dim_param])
            else:
                shape.append(samples if i == 0 else 1)
        dtype = _NUMPY_OF_ONNX.get(t.elem_type)
        if dtype is None:
            raise InvalidModel(f"input {value.name!r} has a dtype onnxvq cannot generate; pass --data")
        count = 1
        for d in shape:
            count *= d
        if count > MAX_GENERATED_ELEMENTS:
            raise InvalidModel(f"input {value.name!r} declares shape {shape} ({count} values), too large to "
                               f"generate test inputs for; pass --data, --samples or --input-dim NAME=N")
        if np.issubdtype(dtype, np.floating):
            feeds[value.name] = rng.standard_normal(shape).astype(dtype)
        else:
            feeds[value.name] = np.zeros(shape, dtype=dtype)
    return feeds


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
                        feeds: dict[str, np.ndarray]) -> list[dict]:
    """Relative L2 error of each compressed main-graph layer's own output, on the same inputs.

    The rewrite keeps every node's output names, so both models can expose them as extra outputs.
    """
    from .ops.schema import DOMAIN

    layers = []
    produced = {o for n in original.graph.node for o in n.output}
    for node in compressed.graph.node:
        if node.domain == DOMAIN and node.output and node.output[0] in produced:
            layers.append((node.name, node.output[0]))
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
