"""What a file weighs after a general-purpose compressor: zstd -19 and zip (deflate -9).

The download is the size phones pay for, and users zip models anyway (TF-MOT's advice), so an
entropy-coded layout only earns its place if it beats them on the compressed file itself.
Both run single-threaded at the levels the command-line tools use for `zstd -19` and `zip -9`.
"""
from __future__ import annotations

import os
import tempfile
import zipfile
from pathlib import Path

ZSTD_LEVEL = 19
ZIP_LEVEL = 9
_CHUNK = 1 << 22


class _Counter:
    """A write-only sink that keeps only the byte count."""

    def __init__(self):
        self.count = 0

    def write(self, data) -> int:
        self.count += len(data)
        return len(data)


def zstd_bytes(path: str | Path, level: int = ZSTD_LEVEL) -> int:
    import zstandard

    sink = _Counter()
    compressor = zstandard.ZstdCompressor(level=level)
    with open(path, "rb") as src, compressor.stream_writer(sink, closefd=False,
                                                           size=os.path.getsize(path)) as writer:
        while chunk := src.read(_CHUNK):
            writer.write(chunk)
    return sink.count


def zip_bytes(path: str | Path, level: int = ZIP_LEVEL) -> int:
    path = Path(path)
    with tempfile.TemporaryDirectory() as tmp:
        archive = Path(tmp) / "model.zip"
        with zipfile.ZipFile(archive, "w", compression=zipfile.ZIP_DEFLATED, compresslevel=level) as z:
            z.write(path, arcname=path.name)
        return archive.stat().st_size


def archive_sizes(path: str | Path) -> dict[str, int]:
    """{"file": bytes, "zstd19": bytes, "zip": bytes} for ``path``."""
    return {"file": os.path.getsize(path), "zstd19": zstd_bytes(path), "zip": zip_bytes(path)}
