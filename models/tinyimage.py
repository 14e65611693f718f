"""Just enough image handling for fetch_demo.py without Pillow: a PNG reader and a resize.

read_png() decodes 8-bit, non-interlaced PNGs (grayscale, RGB, gray+alpha, RGBA), which is
what the scikit-image sample photos are. resize_bilinear() uses half-pixel centres, the
convention of OpenCV's INTER_LINEAR that the PP-OCR preprocessing uses.
"""

from __future__ import annotations

import struct
import zlib
from pathlib import Path

import numpy as np

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
CHANNELS_BY_COLOR_TYPE = {0: 1, 2: 3, 4: 2, 6: 4}


def _chunks(data: bytes):
    """Yield (type, payload) for each chunk after the signature."""
    pos = len(PNG_SIGNATURE)
    while pos < len(data):
        (length,) = struct.unpack(">I", data[pos : pos + 4])
        kind = data[pos + 4 : pos + 8]
        yield kind, data[pos + 8 : pos + 8 + length]
        pos += 12 + length  # length, type, payload, crc


def _paeth(a: int, b: int, c: int) -> int:
    p = a + b - c
    pa, pb, pc = abs(p - a), abs(p - b), abs(p - c)
    if pa <= pb and pa <= pc:
        return a
    return b if pb <= pc else c


def _unfilter_row(kind: int, row: np.ndarray, prev: np.ndarray, bpp: int) -> np.ndarray:
    """Undo one scanline's filter (PNG spec, section 9). Rows are int arrays."""
    if kind == 0:
        return row
    if kind == 2:  # Up
        return (row + prev) & 0xFF
    if kind == 1:  # Sub: running sum of each byte lane, modulo 256
        lanes = row.reshape(-1, bpp)
        return (np.cumsum(lanes, axis=0) & 0xFF).reshape(-1)
    out = row.copy()
    for i in range(len(out)):  # Average and Paeth depend on the bytes just decoded
        left = out[i - bpp] if i >= bpp else 0
        up_left = prev[i - bpp] if i >= bpp else 0
        if kind == 3:
            out[i] = (out[i] + ((left + prev[i]) >> 1)) & 0xFF
        elif kind == 4:
            out[i] = (out[i] + _paeth(left, prev[i], up_left)) & 0xFF
        else:
            raise ValueError(f"unknown PNG filter type {kind}")
    return out


def read_png(path: str | Path) -> np.ndarray:
    """Decode a PNG into a uint8 array of shape (H, W) or (H, W, C)."""
    data = Path(path).read_bytes()
    if not data.startswith(PNG_SIGNATURE):
        raise ValueError(f"{path}: not a PNG file")
    header, compressed = None, []
    for kind, payload in _chunks(data):
        if kind == b"IHDR":
            header = struct.unpack(">IIBBBBB", payload)
        elif kind == b"IDAT":
            compressed.append(payload)
        elif kind == b"IEND":
            break
    width, height, depth, color_type, _, _, interlace = header
    if depth != 8 or interlace or color_type not in CHANNELS_BY_COLOR_TYPE:
        raise ValueError(f"{path}: only 8-bit non-interlaced gray/RGB(A) PNGs are supported")
    channels = CHANNELS_BY_COLOR_TYPE[color_type]
    stride = width * channels
    raw = np.frombuffer(zlib.decompress(b"".join(compressed)), dtype=np.uint8)
    raw = raw.reshape(height, stride + 1).astype(np.int64)
    rows, prev = [], np.zeros(stride, dtype=np.int64)
    for line in raw:
        prev = _unfilter_row(int(line[0]), line[1:], prev, channels)
        rows.append(prev)
    image = np.stack(rows).astype(np.uint8).reshape(height, width, channels)
    return image[:, :, 0] if channels == 1 else image


def _linear_weights(n_in: int, n_out: int):
    """Source indices and weights for 1-D linear interpolation with half-pixel centres."""
    pos = (np.arange(n_out) + 0.5) * (n_in / n_out) - 0.5
    pos = np.clip(pos, 0, n_in - 1)
    lo = np.floor(pos).astype(np.int64)
    hi = np.minimum(lo + 1, n_in - 1)
    return lo, hi, (pos - lo).astype(np.float32)


def resize_bilinear(image: np.ndarray, height: int, width: int) -> np.ndarray:
    """Resize an (H, W) or (H, W, C) array to (height, width), returning float32."""
    img = image.astype(np.float32)
    lo, hi, w = _linear_weights(img.shape[0], height)
    w = w.reshape(-1, *([1] * (img.ndim - 1)))
    img = img[lo] * (1 - w) + img[hi] * w
    lo, hi, w = _linear_weights(img.shape[1], width)
    w = w.reshape(1, -1, *([1] * (img.ndim - 2)))
    return img[:, lo] * (1 - w) + img[:, hi] * w


# ---------------------------------------------------------------- augmentation (seeded, numpy only)

def random_resized_crop_box(height: int, width: int, rng: np.random.Generator,
                            scale=(0.35, 1.0), ratio=(3 / 4, 4 / 3)) -> tuple[int, int, int, int]:
    """(top, left, h, w) of a crop covering `scale` of the area at aspect `ratio`, as torchvision's
    RandomResizedCrop picks it (10 tries, then the largest centred crop that fits the ratio range)."""
    area = height * width
    log_ratio = np.log(ratio)
    for _ in range(10):
        target = area * rng.uniform(*scale)
        aspect = np.exp(rng.uniform(*log_ratio))
        w = int(round(np.sqrt(target * aspect)))
        h = int(round(np.sqrt(target / aspect)))
        if 0 < w <= width and 0 < h <= height:
            return int(rng.integers(0, height - h + 1)), int(rng.integers(0, width - w + 1)), h, w
    aspect = width / height
    if aspect < ratio[0]:
        w, h = width, int(round(width / ratio[0]))
    elif aspect > ratio[1]:
        h, w = height, int(round(height * ratio[1]))
    else:
        h, w = height, width
    return (height - h) // 2, (width - w) // 2, h, w


def color_jitter(image: np.ndarray, rng: np.random.Generator, strength: float = 0.15) -> np.ndarray:
    """Brightness, contrast and saturation each scaled by a factor in [1-s, 1+s]; values 0..255."""
    x = image.astype(np.float32)
    x = x * rng.uniform(1 - strength, 1 + strength)
    gray = x.mean(axis=-1, keepdims=True) if x.ndim == 3 else x
    x = gray.mean() + (x - gray.mean()) * rng.uniform(1 - strength, 1 + strength)
    if x.ndim == 3:
        gray = x.mean(axis=-1, keepdims=True)
        x = gray + (x - gray) * rng.uniform(1 - strength, 1 + strength)
    return np.clip(x, 0, 255)


def augment(image: np.ndarray, rng: np.random.Generator, height: int, width: int,
            scale=(0.35, 1.0), jitter: float = 0.15) -> np.ndarray:
    """Random resized crop to (height, width), horizontal flip with p = 0.5, small colour jitter.

    `image` is (H, W) or (H, W, C) with values 0..255; returns float32 in 0..255.
    """
    top, left, h, w = random_resized_crop_box(image.shape[0], image.shape[1], rng, scale)
    out = resize_bilinear(image[top:top + h, left:left + w], height, width)
    if rng.random() < 0.5:
        out = out[:, ::-1]
    return color_jitter(out, rng, jitter).astype(np.float32)
