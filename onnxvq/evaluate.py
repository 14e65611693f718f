"""Accuracy and agreement of a model on labeled (or unlabeled) data.

Data is an ``.npz`` file: the model's inputs (keys = input names, or ``x`` for a single-input
model) and optional labels ``y`` (int, ``-1`` = unlabeled: left out of accuracy, still used for
agreement). Raw data can be normalized on the fly with a small preprocessing spec, see
:func:`parse_preprocess`.

Top-1 agreement compares the candidate's argmax with the reference's argmax over the last axis
of the output, for every sample (and every position, for sequence outputs such as a CTC head).

For a model whose output is an embedding (``task="embedding"``: one float vector per input, no
labels) the comparison is instead the cosine between the original's and the candidate's
embedding of each input (mean and minimum), and nearest-neighbour agreement: the share of inputs
whose nearest other input of the set, by cosine, is the same under both models. See
:func:`resolve_task` for when ``auto`` picks it.
"""
from __future__ import annotations

import time
from dataclasses import dataclass, field
from fractions import Fraction
from pathlib import Path
from typing import Any

import numpy as np
import onnx

from .check import graph_inputs
from .errors import ConfigError, InputNotFound, InvalidModel, RuntimeFailure

PREPROCESS_HELP = """\
Comma-separated KEY=VALUE items, applied in this order to the input array:
  key=NAME      array of the .npz to read (default: the input's name, else `x`)
  scale=S       multiply by S (a number or a fraction such as 1/255)
  mean=M[:M..]  subtract, per channel (one value, or one per channel separated by ':')
  std=S[:S..]   divide, per channel
  layout=L      the model's layout, nchw or nhwc: [N,H,W] data gets a channel axis, and
                4-D data in the other layout (channels last of 1/3/4 vs first) is transposed
Example (MNIST raw bytes): key=x_raw,scale=1/255,mean=0.1307,std=0.3081,layout=nchw
A model with several inputs reads each from its own name and gets the same recipe (key= is ignored)."""


@dataclass(frozen=True)
class Preprocess:
    key: str | None = None
    scale: float = 1.0
    mean: tuple[float, ...] = ()
    std: tuple[float, ...] = ()
    layout: str | None = None

    def apply(self, x: np.ndarray) -> np.ndarray:
        x = np.asarray(x)
        if self.layout is not None:
            x = _to_layout(x, self.layout)
        x = x.astype(np.float32) * np.float32(self.scale)
        channel_axis = -1 if self.layout == "nhwc" else 1
        if self.mean:
            x = x - _per_channel(self.mean, x, channel_axis, "mean")
        if self.std:
            x = x / _per_channel(self.std, x, channel_axis, "std")
        return np.ascontiguousarray(x, dtype=np.float32)


def _to_layout(x: np.ndarray, layout: str) -> np.ndarray:
    if x.ndim == 3:  # [N, H, W] grayscale
        return x[:, None] if layout == "nchw" else x[..., None]
    if x.ndim != 4:
        raise ConfigError(f"preprocess layout={layout} needs 3-D or 4-D data, got shape {list(x.shape)}")
    channels_last = x.shape[-1] in (1, 3, 4) and x.shape[1] not in (1, 3, 4)
    if layout == "nchw" and channels_last:
        return x.transpose(0, 3, 1, 2)
    channels_first = x.shape[1] in (1, 3, 4) and x.shape[-1] not in (1, 3, 4)
    if layout == "nhwc" and channels_first:
        return x.transpose(0, 2, 3, 1)
    return x


def _per_channel(values: tuple[float, ...], x: np.ndarray, axis: int, what: str) -> np.ndarray:
    v = np.asarray(values, dtype=np.float32)
    if v.size == 1:
        return v.reshape(())
    if x.ndim < 2 or x.shape[axis] != v.size:
        raise ConfigError(f"preprocess {what} has {v.size} values but the data has "
                          f"{x.shape[axis] if x.ndim >= 2 else 'no'} channels (shape {list(x.shape)})")
    shape = [1] * x.ndim
    shape[axis] = v.size
    return v.reshape(shape)


def _number(text: str, key: str) -> float:
    try:
        return float(Fraction(text.strip())) if "/" in text else float(text)
    except (ValueError, ZeroDivisionError):
        raise ConfigError(f"preprocess {key}={text!r} is not a number") from None


def parse_preprocess(spec: str | None) -> Preprocess | None:
    """``scale=1/255,mean=0.485:0.456:0.406,std=0.229:0.224:0.225,layout=nchw`` -> Preprocess."""
    if spec is None or not spec.strip():
        return None
    fields: dict[str, Any] = {}
    for item in spec.split(","):
        if not item.strip():
            continue
        key, sep, value = item.partition("=")
        key, value = key.strip().lower(), value.strip()
        if not sep or not value:
            raise ConfigError(f"preprocess item {item!r} is not KEY=VALUE (keys: key, scale, mean, std, layout)")
        if key in fields:
            raise ConfigError(f"preprocess key {key!r} given twice")
        if key == "key":
            fields["key"] = value
        elif key == "scale":
            fields["scale"] = _number(value, key)
        elif key in ("mean", "std"):
            fields[key] = tuple(_number(v, key) for v in value.split(":"))
            if key == "std" and any(v == 0 for v in fields[key]):
                raise ConfigError("preprocess std must not be 0")
        elif key == "layout":
            if value.lower() not in ("nchw", "nhwc"):
                raise ConfigError(f"preprocess layout must be nchw or nhwc, got {value!r}")
            fields["layout"] = value.lower()
        else:
            raise ConfigError(f"unknown preprocess key {key!r} (keys: key, scale, mean, std, layout)")
    return Preprocess(**fields)


@dataclass
class Dataset:
    feeds: dict[str, np.ndarray]
    labels: np.ndarray | None
    samples: int

    @property
    def labeled(self) -> int:
        return 0 if self.labels is None else int((self.labels >= 0).sum())


def load_dataset(model: onnx.ModelProto, path: str | Path, preprocess: Preprocess | None = None,
                 samples: int | None = None) -> Dataset:
    """Read inputs (and labels ``y``) from an .npz for ``model``."""
    path = Path(path)
    if not path.is_file():
        raise InputNotFound(f"{path}: data file not found")
    try:
        with np.load(path, allow_pickle=False) as npz:
            data = {k: npz[k] for k in npz.files}
    except Exception as exc:  # noqa: BLE001 - any reader error becomes one line
        raise InvalidModel(f"{path}: cannot read the data: {str(exc).splitlines()[0] if str(exc) else exc}") from None
    names = [v.name for v in graph_inputs(model)]
    if not names:
        raise InvalidModel("the model has no inputs to feed")
    feeds: dict[str, np.ndarray] = {}
    for i, name in enumerate(names):
        key = name
        if preprocess is not None and preprocess.key and len(names) == 1:
            key = preprocess.key
        elif name not in data and len(names) == 1:
            key = "x"
        if key not in data:
            raise InvalidModel(f"{path}: no array for input {name!r} (looked for {key!r}; has {sorted(data)})")
        array = data[key]
        if preprocess is not None:
            array = preprocess.apply(array)
        feeds[name] = array
    counts = {v.shape[0] if v.ndim else 1 for v in feeds.values()}
    if len(counts) != 1:
        raise InvalidModel(f"{path}: inputs have different sample counts {sorted(counts)}")
    n = counts.pop()
    labels = None
    if "y" in data:
        labels = np.asarray(data["y"])
        if not np.issubdtype(labels.dtype, np.integer):
            raise InvalidModel(f"{path}: labels y must be integers (class indices, -1 = unlabeled), got {labels.dtype}")
        if labels.shape[:1] != (n,):
            raise InvalidModel(f"{path}: labels y have shape {list(labels.shape)}, expected {n} first")
        labels = labels.astype(np.int64)
    if samples is not None and samples < n:
        feeds = {k: v[:samples] for k, v in feeds.items()}
        labels = None if labels is None else labels[:samples]
        n = samples
    _check_dtypes(model, feeds, path)
    return Dataset(feeds, labels, n)


_FLOAT = {onnx.TensorProto.FLOAT: np.float32, onnx.TensorProto.DOUBLE: np.float64, onnx.TensorProto.FLOAT16: np.float16}


def _check_dtypes(model: onnx.ModelProto, feeds: dict[str, np.ndarray], path: Path) -> None:
    for value in graph_inputs(model):
        want = _FLOAT.get(value.type.tensor_type.elem_type)
        got = feeds[value.name]
        if want is not None and got.dtype != want:
            if np.issubdtype(got.dtype, np.floating):
                feeds[value.name] = got.astype(want)
            else:
                raise InvalidModel(f"{path}: input {value.name!r} holds {got.dtype} values but the model takes "
                                   f"{np.dtype(want).name}; pass --preprocess (e.g. scale=1/255)")


def _fixed_batch(model: onnx.ModelProto) -> int | None:
    for value in graph_inputs(model):
        dims = value.type.tensor_type.shape.dim
        if dims and dims[0].HasField("dim_value") and dims[0].dim_value > 0:
            return int(dims[0].dim_value)
    return None


def make_session(model: onnx.ModelProto | bytes | str, label: str, threads: int = 0):
    import onnxruntime as ort

    from .runtime import session

    options = ort.SessionOptions()
    if threads > 0:
        options.intra_op_num_threads = threads
        options.inter_op_num_threads = 1
    options.log_severity_level = 3
    payload = model.SerializeToString() if isinstance(model, onnx.ModelProto) else model
    try:
        return session(payload if isinstance(payload, bytes) else str(payload), sess_options=options)
    except Exception as exc:  # noqa: BLE001
        raise RuntimeFailure(f"onnxruntime cannot load the {label} model: {str(exc).strip().splitlines()[0]}") from None


def predict(model: onnx.ModelProto | bytes | str, feeds: dict[str, np.ndarray], *, output: str | None = None,
            batch_size: int = 256, threads: int = 0, label: str = "model",
            fixed_batch: int | None = None) -> np.ndarray:
    """Run ``model`` on ``feeds`` in batches; return one output (the first by default), concatenated."""
    sess = make_session(model, label, threads)
    names = [o.name for o in sess.get_outputs()]
    if output is None:
        output = names[0]
    elif output not in names:
        raise ConfigError(f"the {label} model has no output {output!r} (outputs: {names})")
    n = next(iter(feeds.values())).shape[0]
    step = fixed_batch or max(1, batch_size)
    parts = []
    for start in range(0, n, step):
        batch = {k: v[start:start + step] for k, v in feeds.items()}
        try:
            parts.append(sess.run([output], batch)[0])
        except Exception as exc:  # noqa: BLE001
            detail = " ".join(line.strip() for line in str(exc).strip().splitlines() if line.strip())
            raise RuntimeFailure(f"onnxruntime failed to run the {label} model on the data: {detail}") from None
    return np.concatenate(parts, axis=0)


def topk_accuracy(scores: np.ndarray, labels: np.ndarray, k: int) -> float | None:
    """Share of labeled samples (label >= 0) whose label is among the k highest scores."""
    mask = labels >= 0
    if not mask.any():
        return None
    s = scores[mask]
    if k == 1:
        return float(np.mean(s.argmax(axis=-1) == labels[mask]))
    k = min(k, s.shape[-1])
    top = np.argpartition(-s, k - 1, axis=-1)[..., :k]
    return float(np.mean((top == labels[mask][..., None]).any(axis=-1)))


def agreement(reference: np.ndarray, candidate: np.ndarray) -> dict[str, float]:
    """Top-1 agreement (same argmax) and top-5 agreement (reference argmax in the candidate's top 5)."""
    if reference.shape != candidate.shape:
        raise RuntimeFailure(f"output shapes differ: reference {list(reference.shape)}, "
                             f"candidate {list(candidate.shape)}")
    r = reference.reshape(-1, reference.shape[-1]) if reference.ndim > 1 else reference.reshape(-1, 1)
    c = candidate.reshape(-1, candidate.shape[-1]) if candidate.ndim > 1 else candidate.reshape(-1, 1)
    ref_top = r.argmax(axis=1)
    out = {"top1_agreement": float(np.mean(ref_top == c.argmax(axis=1)))}
    if r.shape[1] >= 5:
        top5 = np.argpartition(-c, 4, axis=1)[:, :5]
        out["top5_agreement"] = float(np.mean((top5 == ref_top[:, None]).any(axis=1)))
    diff = c.astype(np.float64) - r
    norm = float(np.linalg.norm(r))
    out["output_rel_err"] = float(np.linalg.norm(diff) / norm) if norm > 0 else float(np.linalg.norm(diff))
    return out


TASKS = ("auto", "classify", "embedding")


def resolve_task(task: str, outputs: np.ndarray, labels: np.ndarray | None, output_name: str | None = None) -> str:
    """``classify`` or ``embedding``. ``auto`` picks embedding when the data has no labels (y >= 0),
    the output is 2-D float [N, D], and either its rows have unit L2 norm (|norm - 1| < 1e-3, as a
    normalized sentence embedding has) or the output's name contains "embed"; else classify.
    Rows that are probability distributions (>= 0, summing to 1) are class scores even when a
    confident softmax has a norm close to 1."""
    if task not in TASKS:
        raise ConfigError(f"task must be one of {', '.join(TASKS)}, got {task!r}")
    if task != "auto":
        return task
    if labels is not None and (labels >= 0).any():
        return "classify"
    if outputs.ndim != 2 or not np.issubdtype(outputs.dtype, np.floating) or outputs.shape[0] == 0:
        return "classify"
    rows = outputs.astype(np.float64)
    if "embed" in (output_name or "").lower():
        return "embedding"
    if bool(np.all(rows >= 0)) and bool(np.all(np.abs(rows.sum(axis=1) - 1.0) < 1e-3)):
        return "classify"  # softmax scores
    norms = np.linalg.norm(rows, axis=1)
    return "embedding" if bool(np.all(np.abs(norms - 1.0) < 1e-3)) else "classify"


def _unit_rows(x: np.ndarray) -> np.ndarray:
    x = x.reshape(x.shape[0], -1).astype(np.float64)
    norms = np.linalg.norm(x, axis=1, keepdims=True)
    return x / np.where(norms > 0, norms, 1.0)


def nearest_neighbours(embeddings: np.ndarray, block: int = 1024) -> np.ndarray:
    """For each row, the index of the most cosine-similar *other* row (blockwise: no N x N matrix)."""
    e = _unit_rows(embeddings)
    n = e.shape[0]
    out = np.empty(n, dtype=np.int64)
    for start in range(0, n, block):
        sims = e[start:start + block] @ e.T
        rows = np.arange(sims.shape[0])
        sims[rows, start + rows] = -np.inf  # an input is not its own neighbour
        out[start:start + block] = sims.argmax(axis=1)
    return out


def embedding_agreement(reference: np.ndarray, candidate: np.ndarray) -> dict[str, Any]:
    """Per-input cosine between reference and candidate embeddings (mean, min and where), and
    nearest-neighbour agreement over the set (None with fewer than 2 inputs)."""
    if reference.shape != candidate.shape:
        raise RuntimeFailure(f"output shapes differ: reference {list(reference.shape)}, "
                             f"candidate {list(candidate.shape)}")
    if reference.ndim < 2 or reference.shape[0] == 0:
        raise InvalidModel(f"an embedding output must be [N, D], got shape {list(reference.shape)}")
    cosine = np.sum(_unit_rows(reference) * _unit_rows(candidate), axis=1)
    worst = int(cosine.argmin())
    out: dict[str, Any] = {"cosine_mean": float(cosine.mean()), "cosine_min": float(cosine[worst]),
                           "cosine_min_index": worst, "nn_agreement": None, "nn_matches": None}
    if reference.shape[0] >= 2:
        same = nearest_neighbours(reference) == nearest_neighbours(candidate)
        out["nn_agreement"] = float(same.mean())
        out["nn_matches"] = int(same.sum())
    diff = candidate.astype(np.float64) - reference
    norm = float(np.linalg.norm(reference))
    out["output_rel_err"] = float(np.linalg.norm(diff) / norm) if norm > 0 else float(np.linalg.norm(diff))
    return out


@dataclass
class Evaluator:
    """Evaluates candidate models on one dataset, against one reference model's outputs.

    ``task`` is ``classify`` (accuracy, argmax agreement), ``embedding`` (cosine and
    nearest-neighbour agreement) or ``auto`` (decided on the first outputs seen, see resolve_task).
    """

    dataset: Dataset
    reference: np.ndarray | None = None
    output: str | None = None
    batch_size: int = 256
    threads: int = 0
    fixed_batch: int | None = None
    baseline: dict[str, Any] = field(default_factory=dict)
    task: str = "classify"
    output_name: str | None = None  # the scored output's name, for resolve_task

    @classmethod
    def for_model(cls, reference_model: onnx.ModelProto, dataset: Dataset, *, output: str | None = None,
                  batch_size: int = 256, threads: int = 0, task: str = "classify") -> "Evaluator":
        ev = cls(dataset, None, output, batch_size, threads, _fixed_batch(reference_model), task=task,
                 output_name=output or (reference_model.graph.output[0].name if reference_model.graph.output
                                        else None))
        start = time.perf_counter()
        ev.reference = ev.predict(reference_model, "original")
        ev.baseline = {**ev.scores(ev.reference), "eval_seconds": time.perf_counter() - start}
        return ev

    def predict(self, model, label: str = "compressed") -> np.ndarray:
        return predict(model, self.dataset.feeds, output=self.output, batch_size=self.batch_size,
                       threads=self.threads, label=label, fixed_batch=self.fixed_batch)

    def scores(self, outputs: np.ndarray) -> dict[str, Any]:
        self.task = resolve_task(self.task, outputs, self.dataset.labels, self.output_name)
        out: dict[str, Any] = {"samples": self.dataset.samples, "labeled": self.dataset.labeled,
                               "top1": None, "top5": None, "task": self.task}
        labels = self.dataset.labels
        if self.task == "embedding":
            out["embedding_dim"] = int(np.prod(outputs.shape[1:]))
            norms = np.linalg.norm(outputs.reshape(outputs.shape[0], -1).astype(np.float64), axis=1)
            out["norm_mean"] = float(norms.mean()) if norms.size else None
        elif labels is not None and self.dataset.labeled:
            if outputs.shape[:-1] != labels.shape:
                raise InvalidModel(f"labels y of shape {list(labels.shape)} do not match the output's "
                                   f"shape {list(outputs.shape)} (expected y of shape {list(outputs.shape[:-1])})")
            out["top1"] = topk_accuracy(outputs, labels, 1)
            out["top5"] = topk_accuracy(outputs, labels, 5) if outputs.shape[-1] >= 5 else None
            out["correct"] = int(round(out["top1"] * self.dataset.labeled))
        return out

    def evaluate(self, model, label: str = "compressed") -> dict[str, Any]:
        start = time.perf_counter()
        outputs = self.predict(model, label)
        result = self.scores(outputs)
        if self.reference is not None:
            compare = embedding_agreement if self.task == "embedding" else agreement
            result.update(compare(self.reference, outputs))
        result["eval_seconds"] = time.perf_counter() - start
        return result


def evaluate_model(model_path: str | Path, data_path: str | Path, *, against: str | Path | None = None,
                   preprocess: Preprocess | None = None, batch_size: int = 256, samples: int | None = None,
                   output: str | None = None, threads: int = 0, task: str = "auto") -> dict[str, Any]:
    """What ``onnxvq eval`` reports: accuracy of MODEL, and its agreement with AGAINST if given
    (for an embedding output: cosine and nearest-neighbour agreement, see resolve_task)."""
    from .modelio import load_model

    model = load_model(model_path)
    dataset = load_dataset(model, data_path, preprocess, samples)
    report: dict[str, Any] = {"model": str(model_path), "data": str(data_path)}
    if against is not None:
        original = load_model(against)
        if [v.name for v in graph_inputs(original)] != [v.name for v in graph_inputs(model)]:
            raise InvalidModel(f"{against} and {model_path} have different inputs")
        ev = Evaluator.for_model(original, dataset, output=output, batch_size=batch_size, threads=threads,
                                 task=task)
        report["against"] = str(against)
        report["original"] = ev.baseline
        report["result"] = ev.evaluate(model)
    else:
        ev = Evaluator(dataset, None, output, batch_size, threads, _fixed_batch(model), task=task,
                       output_name=output or (model.graph.output[0].name if model.graph.output else None))
        report["result"] = ev.evaluate(model, "evaluated")
    return report
