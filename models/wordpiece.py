"""BERT's uncased WordPiece tokenizer, read from a tokenizer.json, in plain Python.

Enough for all-MiniLM-L6-v2 (BertNormalizer with lowercase, BertPreTokenizer, WordPiece with
"##" continuations, [CLS] ... [SEP] template), so build_minilm.py needs neither `tokenizers`
nor `transformers`. When the `tokenizers` package is importable, build_minilm.py checks this
against it.
"""

from __future__ import annotations

import json
import unicodedata
from pathlib import Path

import numpy as np


def _is_control(ch: str) -> bool:
    if ch in "\t\n\r":
        return False
    return unicodedata.category(ch) in ("Cc", "Cf")


def _is_whitespace(ch: str) -> bool:
    return ch in " \t\n\r" or unicodedata.category(ch) == "Zs"


def _is_punctuation(ch: str) -> bool:
    cp = ord(ch)
    # BERT counts all non-alphanumeric ASCII as punctuation, e.g. "$" and "^"
    if 33 <= cp <= 47 or 58 <= cp <= 64 or 91 <= cp <= 96 or 123 <= cp <= 126:
        return True
    return unicodedata.category(ch).startswith("P")


def _is_cjk(cp: int) -> bool:
    return (0x4E00 <= cp <= 0x9FFF or 0x3400 <= cp <= 0x4DBF or 0x20000 <= cp <= 0x2A6DF
            or 0x2A700 <= cp <= 0x2B73F or 0x2B740 <= cp <= 0x2B81F or 0x2B820 <= cp <= 0x2CEAF
            or 0xF900 <= cp <= 0xFAFF or 0x2F800 <= cp <= 0x2FA1F)


class WordPiece:
    def __init__(self, vocab: dict[str, int], unk: str = "[UNK]", prefix: str = "##",
                 max_chars: int = 100, lowercase: bool = True, strip_accents: bool | None = None):
        self.vocab = vocab
        self.unk, self.prefix, self.max_chars = unk, prefix, max_chars
        self.lowercase = lowercase
        # tokenizers' BertNormalizer: strip_accents None follows lowercase
        self.strip_accents = lowercase if strip_accents is None else strip_accents
        self.cls_id, self.sep_id, self.pad_id = vocab["[CLS]"], vocab["[SEP]"], vocab["[PAD]"]

    @classmethod
    def from_file(cls, path: str | Path) -> "WordPiece":
        spec = json.loads(Path(path).read_text(encoding="utf-8"))
        model, norm = spec["model"], spec.get("normalizer") or {}
        if model.get("type") != "WordPiece":
            raise ValueError(f"{path}: not a WordPiece tokenizer ({model.get('type')})")
        return cls(model["vocab"], model.get("unk_token", "[UNK]"),
                   model.get("continuing_subword_prefix", "##"),
                   model.get("max_input_chars_per_word", 100),
                   norm.get("lowercase", True), norm.get("strip_accents"))

    def normalize(self, text: str) -> str:
        out = []
        for ch in text:
            cp = ord(ch)
            if cp == 0 or cp == 0xFFFD or _is_control(ch):
                continue
            if _is_whitespace(ch):
                out.append(" ")
            elif _is_cjk(cp):
                out.append(f" {ch} ")
            else:
                out.append(ch)
        text = "".join(out)
        if self.strip_accents:
            text = "".join(c for c in unicodedata.normalize("NFD", text) if unicodedata.category(c) != "Mn")
        return text.lower() if self.lowercase else text

    def words(self, text: str) -> list[str]:
        """Whitespace split, then every punctuation character is a word of its own."""
        words = []
        for chunk in self.normalize(text).split():
            current = ""
            for ch in chunk:
                if _is_punctuation(ch):
                    if current:
                        words.append(current)
                    words.append(ch)
                    current = ""
                else:
                    current += ch
            if current:
                words.append(current)
        return words

    def pieces(self, word: str) -> list[str]:
        """Greedy longest-match-first; a word with any unknown part becomes [UNK] whole."""
        if len(word) > self.max_chars:
            return [self.unk]
        pieces, start = [], 0
        while start < len(word):
            end = len(word)
            while end > start:
                piece = word[start:end] if start == 0 else self.prefix + word[start:end]
                if piece in self.vocab:
                    break
                end -= 1
            if end == start:
                return [self.unk]
            pieces.append(piece)
            start = end
        return pieces

    def encode(self, text: str, max_length: int = 128) -> list[int]:
        """[CLS] tokens [SEP] ids, truncated to max_length in all."""
        ids = [self.vocab[p] for w in self.words(text) for p in self.pieces(w)]
        return [self.cls_id, *ids[:max_length - 2], self.sep_id]

    def batch(self, texts: list[str], max_length: int = 128) -> dict[str, np.ndarray]:
        """input_ids and attention_mask, int64, right-padded to the longest text of the batch."""
        encoded = [self.encode(t, max_length) for t in texts]
        width = max(len(e) for e in encoded)
        ids = np.full((len(texts), width), self.pad_id, dtype=np.int64)
        mask = np.zeros((len(texts), width), dtype=np.int64)
        for i, e in enumerate(encoded):
            ids[i, :len(e)] = e
            mask[i, :len(e)] = 1
        return {"input_ids": ids, "attention_mask": mask}
