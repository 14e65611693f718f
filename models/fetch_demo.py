"""Fetch the demo model (PP-OCRv4 text recognizer) and a few real inputs for it.

Needs only numpy and onnx (onnxruntime, when present, is used to check the inputs).

Writes, under models/cache/:
  rapidocr/*.onnx          the three ONNX models shipped in rapidocr-onnxruntime 1.4.4
  demo.onnx                the model with the most weight in dense MatMul/Gemm layers
                           (the PP-OCRv4 recognizer), Constant-node weights moved to initializers
  demo_inputs.npz          {input name: float32 [N, 3, 48, 320]} text crops from a photographed
                           book page (scikit-image's page.png), preprocessed as PP-OCR does
  demo_reference.json      what demo.onnx reads in each crop (only with onnxruntime)
  demo_eval.npz            {input name: float32 [246, 3, 48, 320], source: str}: every phrase of
                           consecutive words that fits (41) on page lines 0, 1, 3, 5, as cut and
                           in 5 perturbed copies (edges moved by a few pixels, width x0.9-1.1,
                           contrast, brightness)
  demo_calib.npz           the same for lines 2, 4, 6 (50 phrases x 3 = 150): no line in both

Usage: python models/fetch_demo.py [--force] [--keep-constant-nodes]
"""

from __future__ import annotations

import argparse
import json

import numpy as np
import onnx

from common import CACHE, extract, log, pip_download, rel, run_main, save_atomic
from onnx_inventory import (
    constant_nodes_to_initializers, graph_input_name, print_inventories,
)
from tinyimage import read_png, resize_bilinear

RAPIDOCR = "rapidocr-onnxruntime==1.4.4"
SKIMAGE = "scikit-image==0.26.0"  # ships skimage/data/page.png
REC_HEIGHT, REC_WIDTH = 48, 320  # rec_img_shape [3, 48, 320] in rapidocr's config.yaml
MAX_CROPS = 24

DEMO_ONNX = CACHE / "demo.onnx"
DEMO_INPUTS = CACHE / "demo_inputs.npz"
DEMO_REFERENCE = CACHE / "demo_reference.json"
DEMO_EVAL = CACHE / "demo_eval.npz"
DEMO_CALIB = CACHE / "demo_calib.npz"
# Held-out sets split by text line of page.png: eval and calibration share no line (so no
# word and no pixel of ink). (lines, variants per phrase, seed)
EVAL_LINES, EVAL_VARIANTS, EVAL_SEED = (0, 1, 3, 5), 6, 1
CALIB_LINES, CALIB_VARIANTS, CALIB_SEED = (2, 4, 6), 3, 2


# ---------------------------------------------------------------- models

def fetch_rapidocr_models():
    wheel = pip_download(RAPIDOCR)
    return extract(wheel, "rapidocr_onnxruntime/models/*.onnx", CACHE / "rapidocr")


def write_demo_model(source, keep_constant_nodes: bool) -> None:
    model = onnx.load(str(source))
    if not keep_constant_nodes:
        moved = constant_nodes_to_initializers(model)
        log(f"moved {moved} Constant nodes into initializers (same names, same results)")
    onnx.checker.check_model(model)
    save_atomic(DEMO_ONNX, lambda tmp: onnx.save(model, str(tmp)))
    log(f"wrote {rel(DEMO_ONNX)} (from {source.name})")


# ---------------------------------------------------------------- text crops

def box_mean(image: np.ndarray, radius: int) -> np.ndarray:
    """Mean over a (2r+1)^2 window around each pixel (edges replicated)."""
    k = 2 * radius + 1
    padded = np.pad(image, radius, mode="edge")
    sums = np.pad(padded.cumsum(0).cumsum(1), ((1, 0), (1, 0)))
    h, w = image.shape
    return (sums[k:k + h, k:k + w] - sums[:h, k:k + w] - sums[k:k + h, :w] + sums[:h, :w]) / k**2


def runs(mask: np.ndarray, min_length: int = 1) -> list[tuple[int, int]]:
    """[start, end) of each run of True values at least min_length long."""
    edges = np.diff(np.concatenate([[0], mask.astype(np.int8), [0]]))
    starts, ends = np.flatnonzero(edges == 1), np.flatnonzero(edges == -1)
    return [(int(a), int(b)) for a, b in zip(starts, ends) if b - a >= min_length]


def word_spans(ink_columns: np.ndarray, line_height: int) -> list[tuple[int, int]]:
    """Column spans of words: ink columns joined across gaps narrower than a word space."""
    joined = ink_columns.copy()
    for a, b in runs(~ink_columns):
        if a > 0 and b < len(joined) and b - a < max(3, line_height // 3):
            joined[a:b] = True
    return runs(joined, 2)


def group_words(words, max_width: float) -> list[tuple[int, int]]:
    """Greedily join neighbouring words into phrases no wider than max_width."""
    phrases = []
    for start, end in words:
        if phrases and end - phrases[-1][0] <= max_width:
            phrases[-1] = (phrases[-1][0], end)
        else:
            phrases.append((start, end))
    return phrases


def text_lines(gray: np.ndarray) -> list[tuple[int, int, int, list[tuple[int, int]]]]:
    """(top, bottom, margin, word column spans) of each text line on a page photo.

    Dark-on-light ink is found against a local background; text lines are bands of rows
    with enough ink, taken with a margin of a fifth of their height; words are cut at gaps.
    """
    ink = gray < box_mean(gray, 15) - 20
    lines = []
    for y0, y1 in runs(ink.mean(axis=1) > 0.06, min_length=8):
        margin = max(2, (y1 - y0) // 5)
        top, bottom = max(0, y0 - margin), min(gray.shape[0], y1 + margin)
        lines.append((top, bottom, margin, word_spans(ink[y0:y1].any(axis=0), y1 - y0)))
    return lines


def max_phrase_width(top: int, bottom: int, margin: int) -> float:
    """Widest phrase that fits the recognizer's width once scaled to its height."""
    return (bottom - top) * REC_WIDTH / REC_HEIGHT - 2 * margin


def text_boxes(gray: np.ndarray) -> list[tuple[int, int, int, int]]:
    """(y0, y1, x0, x1) boxes of short phrases on a page photo, in reading order.

    Each line is cut at word gaps into phrases that fit the recognizer's width once scaled
    to its height, like the boxes a text detector would hand it.
    """
    boxes = []
    for top, bottom, margin, words in text_lines(gray):
        for x0, x1 in group_words(words, max_phrase_width(top, bottom, margin)):
            boxes.append((top, bottom, max(0, x0 - margin), min(gray.shape[1], x1 + margin)))
    return boxes


def ppocr_preprocess(crop: np.ndarray) -> np.ndarray:
    """PP-OCR recognizer input for one grayscale crop: [3, 48, 320], values in [-1, 1].

    As rapidocr's TextRecognizer.resize_norm_img: keep the aspect ratio at height 48,
    scale to (x/255 - 0.5)/0.5 and zero-pad on the right to the full width.
    """
    width = min(REC_WIDTH, int(np.ceil(REC_HEIGHT * crop.shape[1] / crop.shape[0])))
    resized = resize_bilinear(crop, REC_HEIGHT, width) / 255.0
    out = np.zeros((3, REC_HEIGHT, REC_WIDTH), dtype=np.float32)
    out[:, :, :width] = (resized - 0.5) / 0.5
    return out


def page_gray() -> np.ndarray:
    wheel = pip_download(SKIMAGE)
    (page,) = extract(wheel, "skimage/data/page.png", CACHE / "skimage")
    gray = read_png(page).astype(np.float32)
    return gray[..., :3].mean(axis=2) if gray.ndim == 3 else gray


def page_crops() -> np.ndarray:
    gray = page_gray()
    boxes = text_boxes(gray)[:MAX_CROPS]
    return np.stack([ppocr_preprocess(gray[y0:y1, x0:x1]) for y0, y1, x0, x1 in boxes])


# ---------------------------------------------------------------- held-out sets of crops

def phrase_boxes(gray: np.ndarray, line_numbers) -> list[tuple[int, tuple[int, int, int, int], str]]:
    """Every run of consecutive words of the given lines that fits the recognizer (single words
    always): (line, box, description). Many more phrases than the demo's greedy cut."""
    out = []
    for number, (top, bottom, margin, words) in enumerate(text_lines(gray)):
        if number not in line_numbers:
            continue
        widest = max_phrase_width(top, bottom, margin)
        for first in range(len(words)):
            for last in range(first, len(words)):
                x0, x1 = words[first][0], words[last][1]
                if last > first and x1 - x0 > widest:
                    break
                box = (top, bottom, max(0, x0 - margin), min(gray.shape[1], x1 + margin))
                out.append((number, box, f"line {number} words {first}-{last}"))
    return out


def crop_variant(gray: np.ndarray, box, rng: np.random.Generator | None) -> np.ndarray:
    """A crop, or (with rng) a perturbed one: each edge moved by a few pixels (at most 2 up or
    down, which stays clear of the next line's ink, and 4 sideways), width rescaled by 0.9-1.1,
    contrast x0.7-1.3 about the crop's mean and brightness +-20 grey levels."""
    y0, y1, x0, x1 = box
    if rng is None:
        return ppocr_preprocess(gray[y0:y1, x0:x1])
    h, w = gray.shape
    y0, y1 = max(0, y0 + int(rng.integers(-2, 3))), min(h, y1 + int(rng.integers(-2, 3)))
    x0, x1 = max(0, x0 + int(rng.integers(-4, 5))), min(w, x1 + int(rng.integers(-4, 5)))
    crop = gray[y0:y1, x0:x1]
    crop = resize_bilinear(crop, crop.shape[0], max(4, int(round(crop.shape[1] * rng.uniform(0.9, 1.1)))))
    crop = crop.mean() + (crop - crop.mean()) * rng.uniform(0.7, 1.3) + rng.uniform(-20, 20)
    return ppocr_preprocess(np.clip(crop, 0, 255))


def crop_set(lines, variants: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Each phrase of `lines` as cut (variant 0) and `variants - 1` perturbed copies, seeds
    (seed, phrase, variant). Returns the crops and a description of each."""
    gray = page_gray()
    crops, sources = [], []
    for index, (_, box, what) in enumerate(phrase_boxes(gray, lines)):
        for v in range(variants):
            rng = None if v == 0 else np.random.default_rng([seed, index, v])
            crops.append(crop_variant(gray, box, rng))
            sources.append(f"{SKIMAGE}:skimage/data/page.png {what} box {list(box)} variant {v}")
    return np.stack(crops), np.array(sources)


# ---------------------------------------------------------------- optional check

def ctc_decode(probs: np.ndarray, characters: list[str]) -> list[tuple[str, float]]:
    """Greedy CTC decoding of [N, T, C] scores: class 0 is blank, the last one a space."""
    vocab = ["", *characters, " "]
    results = []
    for row in probs:
        best, score = row.argmax(axis=1), row.max(axis=1)
        keep = (best != 0) & np.concatenate([[True], best[1:] != best[:-1]])
        text = "".join(vocab[i] for i in best[keep])
        results.append((text, float(score[keep].mean()) if keep.any() else 0.0))
    return results


def write_reference(model_path, inputs: dict) -> None:
    """Run the model with onnxruntime (if installed) and save what it reads in each crop."""
    try:
        import onnxruntime as ort
    except ImportError:
        log("onnxruntime not installed: skipped the recognition check")
        return
    model = onnx.load(str(model_path))
    meta = {p.key: p.value for p in model.metadata_props}
    session = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    (probs,) = session.run(None, inputs)
    read = ctc_decode(probs, meta["character"].splitlines())
    log("the recognizer reads the demo inputs as:")
    for i, (text, conf) in enumerate(read):
        log(f"  [{i:2d}] {text!r} (confidence {conf:.3f})")
    payload = {"model": model_path.name, "texts": [t for t, _ in read],
               "confidences": [round(c, 4) for _, c in read]}
    DEMO_REFERENCE.write_text(json.dumps(payload, indent=1, ensure_ascii=False) + "\n")
    log(f"wrote {rel(DEMO_REFERENCE)}")


# ---------------------------------------------------------------- main

def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--force", action="store_true", help="rebuild even if cached")
    parser.add_argument("--keep-constant-nodes", action="store_true",
                        help="write demo.onnx exactly as shipped, weights in Constant nodes "
                             "(add --force if demo.onnx exists)")
    args = parser.parse_args()

    sources = fetch_rapidocr_models()
    invs = print_inventories(sources)
    best = max(invs, key=lambda inv: inv.dense_weights)
    source = sources[invs.index(best)]

    if args.force or not DEMO_ONNX.exists():
        write_demo_model(source, args.keep_constant_nodes)
    else:
        log(f"{rel(DEMO_ONNX)} is cached (use --force to rebuild)")

    if args.force or not DEMO_INPUTS.exists():
        name = graph_input_name(onnx.load(str(source), load_external_data=False))
        inputs = {name: page_crops()}
        save_atomic(DEMO_INPUTS, lambda tmp: np.savez_compressed(tmp, **inputs))
        log(f"wrote {rel(DEMO_INPUTS)}: {name} {list(inputs[name].shape)} float32")
        write_reference(DEMO_ONNX, inputs)
    else:
        log(f"{rel(DEMO_INPUTS)} is cached (use --force to rebuild)")

    name = graph_input_name(onnx.load(str(source), load_external_data=False))
    for path, lines, variants, seed in ((DEMO_EVAL, EVAL_LINES, EVAL_VARIANTS, EVAL_SEED),
                                        (DEMO_CALIB, CALIB_LINES, CALIB_VARIANTS, CALIB_SEED)):
        if args.force or not path.exists():
            crops, sources = crop_set(lines, variants, seed)
            arrays = {name: crops, "source": sources}
            save_atomic(path, lambda tmp: np.savez_compressed(tmp, **arrays))
            log(f"wrote {rel(path)}: {name} {list(crops.shape)} float32, {len(crops) // variants} phrases "
                f"of page lines {list(lines)} x {variants} variants")
        else:
            log(f"{rel(path)} is cached (use --force to rebuild)")


if __name__ == "__main__":
    run_main(main)
