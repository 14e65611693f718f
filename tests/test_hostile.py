"""Hostile input (issue 8): a battery of broken models and bad situations.

Every case must end with one clear line on stderr and the exit code onnxvq/errors.py gives its
kind of problem: never a traceback, never a changed input, never a partial output or a temp
file left behind. Crafted compressed models go to onnxruntime in a child process, so a crash
(segfault, abort) is seen as a failure rather than taking the test run down.
"""
from __future__ import annotations

import hashlib
import json
import os
import resource
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import onnx
import pytest
from click.testing import CliRunner
from onnx import TensorProto, helper, numpy_helper

from onnxvq.cli import main
from onnxvq.errors import ExitCode

from . import builders

ANY_CODE = set(ExitCode)
REPO = Path(__file__).resolve().parents[1]


# --- harness ------------------------------------------------------------------------------

def snapshot(folder: Path) -> dict[str, str]:
    """name -> sha256 of every file under ``folder`` (hidden temp files included)."""
    out = {}
    for p in sorted(folder.rglob("*")):
        if p.is_file() and not p.is_symlink():
            out[str(p.relative_to(folder))] = hashlib.sha256(p.read_bytes()).hexdigest()
        elif p.is_symlink():
            out[str(p.relative_to(folder))] = "symlink->" + os.readlink(p)
    return out


class Outcome:
    def __init__(self, code: int, stderr: str, exception: BaseException | None = None):
        self.code, self.stderr, self.exception = code, stderr, exception

    def __repr__(self):
        return f"Outcome(code={self.code}, stderr={self.stderr!r}, exception={self.exception!r})"


def _runner() -> CliRunner:
    try:  # click < 8.2 mixes stderr into stdout unless told not to
        return CliRunner(mix_stderr=False)
    except TypeError:  # click >= 8.2 always keeps stderr apart
        return CliRunner()


def cli(*args) -> Outcome:
    """Run the CLI in this process, as a user would see it (stderr only, exit code)."""
    result = _runner().invoke(main, [str(a) for a in args])
    exc = result.exception
    if isinstance(exc, SystemExit):
        exc = None
    return Outcome(result.exit_code, result.stderr, exc)


def cli_process(*args, **kwargs) -> Outcome:
    """Run the CLI in a child process (real signals, real limits, real tracebacks)."""
    proc = subprocess.run([sys.executable, "-m", "onnxvq.cli", *map(str, args)], capture_output=True,
                          text=True, timeout=120, cwd=REPO, **kwargs)
    return Outcome(proc.returncode, proc.stderr)


def assert_clean(outcome: Outcome, codes, *words: str, allow_ok: bool = False) -> None:
    """One line naming the problem, an exit code from errors.py, no traceback."""
    codes = {codes} if isinstance(codes, int) else set(codes)
    if allow_ok:
        codes.add(ExitCode.OK)
    assert outcome.exception is None, f"uncaught {outcome.exception!r}: {outcome}"
    assert "Traceback" not in outcome.stderr, outcome
    assert outcome.code in codes, outcome
    if outcome.code == ExitCode.OK:
        assert outcome.stderr.strip() == "", outcome  # no warnings either
        return
    lines = [line for line in outcome.stderr.splitlines() if line.strip()]
    # --check may print one "check failed" line per failing output
    assert len(lines) == 1 or all(l.startswith("onnxvq: check failed") for l in lines), outcome
    assert lines[0].startswith(("onnxvq: error:", "onnxvq: check failed", "onnxvq: interrupted")), outcome
    assert "internal error" not in lines[0], outcome
    for w in words:
        assert w in outcome.stderr, (w, outcome)


def assert_untouched(before: dict, folder: Path, allowed_new: set[str] = frozenset()) -> None:
    """Inputs byte-for-byte unchanged; nothing new but ``allowed_new`` (no temp files)."""
    after = snapshot(folder)
    for name, digest in before.items():
        assert after.get(name) == digest, f"{name} changed or vanished"
    new = set(after) - set(before)
    assert new <= set(allowed_new), f"left behind: {sorted(new - set(allowed_new))}"


def compress_args(model, out, *extra):
    return ("compress", model, "-o", out, "--min-elements", "0", "--quiet", *extra)


def run_compress_case(folder: Path, model: Path, codes, *words, allow_ok=False, extra=()) -> Outcome:
    out = folder / "out.onnx"
    before = snapshot(folder)
    outcome = cli(*compress_args(model, out, *extra))
    assert_clean(outcome, codes, *words, allow_ok=allow_ok)
    if outcome.code in (ExitCode.OK, ExitCode.CHECK_FAILED, ExitCode.RUNTIME_ERROR) and out.exists():
        onnx.load(str(out))  # whatever was written is a whole model
        assert_untouched(before, folder, {"out.onnx"})
    else:
        assert_untouched(before, folder)
    return outcome


@pytest.fixture(scope="module")
def good_bytes() -> bytes:
    return builders.mlp_model(k=64, hidden=48).SerializeToString()


@pytest.fixture()
def work(tmp_path) -> Path:
    folder = tmp_path / "work"
    folder.mkdir()
    return folder


# --- 1. files that are not (whole) ONNX models ----------------------------------------------

@pytest.mark.parametrize("seed,size", [(0, 1), (1, 7), (2, 64), (3, 300), (4, 4096), (5, 65536),
                                       (6, 13), (7, 1000)])
def test_random_bytes(work, seed, size):
    path = work / "random.onnx"
    path.write_bytes(np.random.default_rng(seed).integers(0, 256, size, dtype=np.uint8).tobytes())
    run_compress_case(work, path, ExitCode.INVALID_MODEL, "random.onnx")


@pytest.mark.parametrize("fraction", [0.0005, 0.01, 0.1, 0.25, 0.33, 0.5, 0.66, 0.75, 0.9, 0.99, 0.999, -1])
def test_truncated_protobuf(work, good_bytes, fraction):
    cut = len(good_bytes) - 1 if fraction == -1 else max(1, int(len(good_bytes) * fraction))
    path = work / "truncated.onnx"
    path.write_bytes(good_bytes[:cut])
    run_compress_case(work, path, ExitCode.INVALID_MODEL, "truncated.onnx")


@pytest.mark.parametrize("seed", range(24))
def test_bit_flipped_protobuf(work, good_bytes, seed):
    """Flipped bits may still parse: whatever happens must be a clean outcome."""
    rng = np.random.default_rng(1000 + seed)
    data = bytearray(good_bytes)
    # Half the seeds hit the structure (the first bytes and the tail hold names, dims and
    # attributes), half hit anywhere.
    for _ in range(int(rng.integers(1, 9))):
        if seed % 2:
            pos = int(rng.integers(0, len(data)))
        else:
            pos = int(rng.choice([rng.integers(0, 200), rng.integers(max(0, len(data) - 600), len(data))]))
        data[pos] ^= 1 << int(rng.integers(0, 8))
    path = work / "flipped.onnx"
    path.write_bytes(bytes(data))
    run_compress_case(work, path, ANY_CODE - {ExitCode.USAGE})
    for command in (("inspect", path), ("check", path, path, "--samples", "2")):
        assert_clean(cli(*command), ANY_CODE - {ExitCode.USAGE}, allow_ok=True)


def test_not_a_model_at_all(work):
    cases = {
        "empty.onnx": b"",
        "text.onnx": b"this is not a model\n",
        "json.onnx": json.dumps({"graph": {"node": []}}).encode(),
        "zip.onnx": b"PK\x03\x04" + bytes(60),
        "pickle.onnx": b"\x80\x04\x95" + bytes(40),
        "tensor.onnx": numpy_helper.from_array(np.ones((4, 4), np.float32), "W").SerializeToString(),
    }
    for name, data in cases.items():
        (work / name).write_bytes(data)
        run_compress_case(work, work / name, ExitCode.INVALID_MODEL, name)
    assert_clean(cli(*compress_args(work / "missing.onnx", work / "o.onnx")), ExitCode.INPUT_NOT_FOUND, "no such file")
    (work / "folder.onnx").mkdir()
    assert_clean(cli(*compress_args(work / "folder.onnx", work / "o.onnx")), ExitCode.INPUT_NOT_FOUND, "folder")
    assert sorted(p.name for p in work.iterdir()) == sorted([*cases, "folder.onnx"])


# --- 2. models with broken or unusable tensors ---------------------------------------------

def gemm_with(mutate) -> onnx.ModelProto:
    model = builders.gemm_model(k=16, n=8)
    mutate(model.graph.initializer[0], model)
    return model


def save(model: onnx.ModelProto, path: Path) -> Path:
    path.write_bytes(model.SerializeToString())  # no checker: these models are broken on purpose
    return path


def _set(**fields):
    def mutate(t, _model):
        for key, value in fields.items():
            if key == "dims":
                del t.dims[:]
                t.dims.extend(value)
            else:
                setattr(t, key, value)
    return mutate


def _values(array):
    def mutate(t, _model):
        t.CopyFrom(numpy_helper.from_array(np.asarray(array), t.name))
    return mutate


W = np.random.default_rng(0).standard_normal((8, 16)).astype(np.float32)
BROKEN_TENSORS = {
    # name: (mutation, expected exit code, a word the message must hold)
    "nan_weight": (_values(np.where(np.arange(W.size).reshape(W.shape) == 5, np.nan, W)), ExitCode.INVALID_WEIGHTS, "NaN"),
    "inf_weight": (_values(np.where(np.arange(W.size).reshape(W.shape) == 9, np.inf, W)), ExitCode.INVALID_WEIGHTS, "'W'"),
    "neg_inf_weight": (_values(np.full_like(W, -np.inf)), ExitCode.INVALID_WEIGHTS, "'W'"),
    "huge_weight": (_values(W * np.float32(1e37)), ExitCode.INVALID_WEIGHTS, "values up to"),
    "float32_max_weight": (_values(np.full_like(W, np.finfo(np.float32).max)), ExitCode.INVALID_WEIGHTS, "'W'"),
    "float64_weight": (_values(W.astype(np.float64)), ExitCode.NOTHING_TO_DO, "double"),
    # float16 weights are supported now; this one is too small to shrink (and mismatches X's float32).
    "float16_weight": (_values(W.astype(np.float16)), {ExitCode.NOTHING_TO_DO, ExitCode.RUNTIME_ERROR}, "onnxvq"),
    "int32_weight": (_values(W.astype(np.int32)), ExitCode.NOTHING_TO_DO, "int32"),
    "dtype_99": (_set(data_type=99), {ExitCode.INVALID_MODEL, ExitCode.NOTHING_TO_DO}, "'W'"),
    "dtype_undefined": (_set(data_type=0), {ExitCode.INVALID_MODEL, ExitCode.NOTHING_TO_DO}, "'W'"),
    "raw_data_short": (_set(raw_data=W.tobytes()[:-4]), ExitCode.INVALID_MODEL, "'W'"),
    "raw_data_long": (_set(raw_data=W.tobytes() + b"\0" * 12), ExitCode.INVALID_MODEL, "'W'"),
    "raw_data_odd": (_set(raw_data=W.tobytes()[:-1]), ExitCode.INVALID_MODEL, "'W'"),
    "zero_rows": (_values(np.zeros((0, 16), np.float32)), {ExitCode.INVALID_MODEL, ExitCode.NOTHING_TO_DO}, "'W'"),
    "zero_cols": (_values(np.zeros((8, 0), np.float32)), {ExitCode.INVALID_MODEL, ExitCode.NOTHING_TO_DO}, "'W'"),
    "huge_dims": (_set(dims=[2**40, 2**40]), ExitCode.INVALID_MODEL, "'W'"),
    "overflowing_dims": (_set(dims=[2**62, 8]), ExitCode.INVALID_MODEL, "'W'"),
    "negative_dims": (_set(dims=[-8, -16]), ExitCode.INVALID_MODEL, "'W'"),
    "rank_3_dims": (_set(dims=[2, 4, 16]), ExitCode.NOTHING_TO_DO, "rank"),
}


@pytest.mark.parametrize("case", sorted(BROKEN_TENSORS))
def test_broken_weight(work, case):
    mutation, codes, word = BROKEN_TENSORS[case]
    path = save(gemm_with(mutation), work / f"{case}.onnx")
    run_compress_case(work, path, codes, word)
    assert_clean(cli("inspect", path), {ExitCode.OK, ExitCode.INVALID_MODEL})


def test_nan_bias_and_broken_bias(work):
    model = builders.gemm_model(k=16, n=8)
    bias = numpy_helper.to_array(model.graph.initializer[1]).copy()
    bias[2] = np.nan
    model.graph.initializer[1].CopyFrom(numpy_helper.from_array(bias, "C"))
    run_compress_case(work, save(model, work / "nan_bias.onnx"), ExitCode.INVALID_WEIGHTS, "bias")
    model.graph.initializer[1].raw_data = b"\0" * 3
    run_compress_case(work, save(model, work / "short_bias.onnx"), ExitCode.INVALID_MODEL, "'C'")


def test_hostile_node_attributes(work):
    """Attributes with the wrong type (what a flipped type byte gives) are reported, not crashed on."""
    for name, attr in {"alpha_string": helper.make_attribute("alpha", b"big"),
                       "transB_float": helper.make_attribute("transB", 0.5),
                       "transB_tensor": helper.make_attribute("transB", numpy_helper.from_array(np.ones(2, np.float32))),
                       "beta_ints": helper.make_attribute("beta", [1, 2])}.items():
        model = builders.gemm_model(k=16, n=8)
        node = model.graph.node[0]
        kept = [a for a in node.attribute if a.name != attr.name]
        del node.attribute[:]
        node.attribute.extend(kept + [attr])
        run_compress_case(work, save(model, work / f"{name}.onnx"),
                          {ExitCode.INVALID_MODEL, ExitCode.NOTHING_TO_DO}, attr.name)


def test_already_compressed(work):
    src, out = work / "m.onnx", work / "m.vq.onnx"
    save(builders.mlp_model(k=64, hidden=48), src)
    assert cli(*compress_args(src, out, "--no-check")).code == ExitCode.OK
    run_compress_case(work, out, ExitCode.NOTHING_TO_DO, "already compressed")


def test_huge_declared_input_dims(work):
    """Generated check inputs from declared shapes must not try to allocate terabytes."""
    model = builders.gemm_model(k=16, n=8)
    model.graph.input[0].type.tensor_type.shape.dim[0].dim_value = 10**12
    path = save(model, work / "huge_input.onnx")
    run_compress_case(work, path, ExitCode.INVALID_MODEL, "--input-dim", allow_ok=False)


# --- 3. external data -------------------------------------------------------------------

def external_model(folder: Path, location: str, *, offset=None, length=None, data_name="weights.bin") -> Path:
    model = builders.gemm_model(k=64, n=48)
    weight = model.graph.initializer[0]
    data = weight.raw_data or numpy_helper.to_array(weight).tobytes()
    (folder / data_name).write_bytes(data)
    weight.ClearField("raw_data")
    weight.data_location = TensorProto.EXTERNAL
    entries = {"location": location, "offset": offset, "length": length}
    for key, value in entries.items():
        if value is not None:
            e = weight.external_data.add()
            e.key, e.value = key, str(value)
    return save(model, folder / "ext.onnx")


def test_external_data_good_then_hostile(tmp_path):
    folder = tmp_path / "models"
    folder.mkdir()
    (tmp_path / "secret.bin").write_bytes(b"\1" * 12288)
    path = external_model(folder, "weights.bin")
    outcome = run_compress_case(folder, path, ExitCode.OK)
    assert outcome.code == ExitCode.OK
    (folder / "out.onnx").unlink()
    (folder / "inside_link.bin").symlink_to(tmp_path / "secret.bin")
    cases = {
        "missing.bin": (ExitCode.INVALID_MODEL, "does not exist"),
        "../secret.bin": (ExitCode.INVALID_MODEL, "outside"),
        str(tmp_path / "secret.bin"): (ExitCode.INVALID_MODEL, "outside"),
        "/etc/passwd": (ExitCode.INVALID_MODEL, "outside"),
        "sub/../../secret.bin": (ExitCode.INVALID_MODEL, "outside"),
        "inside_link.bin": (ExitCode.INVALID_MODEL, "outside"),
        "": (ExitCode.INVALID_MODEL, "ext.onnx"),
        ".": (ExitCode.INVALID_MODEL, "ext.onnx"),
    }
    for location, (code, word) in cases.items():
        run_compress_case(folder, external_model(folder, location), code, word)
    for offset, length in ((10**9, None), (0, 10), (0, 10**15), (-5, None), (None, -1), ("x", None)):
        model = external_model(folder, "weights.bin", offset=offset, length=length)
        run_compress_case(folder, model, ExitCode.INVALID_MODEL, "'W'" if length == 10 else "ext.onnx")
    # The output (or the .data file saving may put next to it) must not be the input's data.
    for out, data_name in ((folder / "weights.bin", "weights.bin"), (folder / "weights", "weights.data")):
        model = external_model(folder, data_name, data_name=data_name)
        before = snapshot(folder)
        outcome = cli(*compress_args(model, out, "--no-check"))
        assert_clean(outcome, ExitCode.OUTPUT_ERROR, "external data")
        assert_untouched(before, folder)


# --- 4. where the output goes ----------------------------------------------------------------

def test_output_is_the_input_by_any_name(work, good_bytes):
    src = work / "model.onnx"
    src.write_bytes(good_bytes)
    (work / "sub").mkdir()
    (work / "link.onnx").symlink_to(src)
    os.link(src, work / "hard.onnx")
    for out in (src, work / "link.onnx", work / "hard.onnx", work / "sub" / ".." / "model.onnx"):
        before = snapshot(work)
        outcome = cli("compress", src, "-o", out, "--min-elements", "0", "-q")
        assert_clean(outcome, ExitCode.OUTPUT_ERROR, "input model")
        assert_untouched(before, work)
    # and the other way round: the input named through the link
    before = snapshot(work)
    assert_clean(cli("compress", work / "link.onnx", "-o", src, "-q"), ExitCode.OUTPUT_ERROR, "input model")
    assert_untouched(before, work)


def test_json_report_never_overwrites_a_model(work, good_bytes):
    src, out = work / "model.onnx", work / "out.onnx"
    src.write_bytes(good_bytes)
    for json_path in (src, out):
        before = snapshot(work)
        outcome = cli(*compress_args(src, out, "--no-check", "--json", json_path))
        assert_clean(outcome, ExitCode.OUTPUT_ERROR, "--json")
        assert_untouched(before, work)
    before = snapshot(work)
    assert_clean(cli("inspect", src, "--json", src), ExitCode.OUTPUT_ERROR, "--json")
    assert_untouched(before, work)


def test_output_is_a_folder_a_fifo_or_missing_folder(work, good_bytes):
    src = work / "model.onnx"
    src.write_bytes(good_bytes)
    (work / "dir.onnx").mkdir()
    os.mkfifo(work / "fifo.onnx")
    for out, word in ((work / "dir.onnx", "folder"), (work / "fifo.onnx", "not a regular file"),
                      (work / "nofolder" / "o.onnx", "does not exist"), (src / "o.onnx", "does not exist")):
        before = snapshot(work)
        assert_clean(cli(*compress_args(src, out)), ExitCode.OUTPUT_ERROR, word)
        assert_untouched(before, work)
    assert (work / "fifo.onnx").is_fifo()


def test_read_only_folder_simulated(work, good_bytes, monkeypatch):
    """As root os.access says yes and chmod does not stop writes: simulate both refusals."""
    import onnxvq.modelio as modelio

    src = work / "model.onnx"
    src.write_bytes(good_bytes)
    locked = work / "locked"
    locked.mkdir()
    real_access = os.access
    with monkeypatch.context() as m:
        m.setattr(modelio.os, "access", lambda p, mode, **k: False if Path(p) == locked else real_access(p, mode, **k))
        before = snapshot(work)
        assert_clean(cli(*compress_args(src, locked / "o.onnx")), ExitCode.OUTPUT_ERROR, "not writable")
        assert_untouched(before, work)

    def refuse(*a, **k):
        raise PermissionError(13, "Permission denied")

    with monkeypatch.context() as m:  # access() lies: the write itself is refused
        m.setattr(modelio.tempfile, "mkdtemp", refuse)
        before = snapshot(work)
        assert_clean(cli(*compress_args(src, locked / "o.onnx")), ExitCode.OUTPUT_ERROR, "Permission denied")
        assert_untouched(before, work)


def _limit_file_size(limit: int):
    def apply():
        resource.setrlimit(resource.RLIMIT_FSIZE, (limit, limit))
    return apply


def test_disk_full_for_real(work):
    """A file-size limit makes the write fail half way (EFBIG), as a full disk would (ENOSPC)."""
    src, out = work / "model.onnx", work / "out.onnx"
    save(builders.mlp_model(k=64, hidden=48), src)
    out.write_bytes(b"previous result")
    before = snapshot(work)
    outcome = cli_process("compress", src, "-o", out, "--method", "pq", "--bits", "5", "--dim", "2",
                          "--min-elements", "0", "-q", "--no-check", preexec_fn=_limit_file_size(8192))
    assert_clean(outcome, ExitCode.OUTPUT_ERROR, "too large")
    assert_untouched(before, work)


@pytest.mark.parametrize("failure", ["ENOSPC", "EIO", "KeyboardInterrupt", "RuntimeError", "MemoryError"])
def test_write_dies_half_way(work, good_bytes, monkeypatch, failure):
    """The model write fails after some bytes are out: old output untouched, no temp left."""
    import onnxvq.modelio as modelio

    src, out = work / "model.onnx", work / "out.onnx"
    src.write_bytes(good_bytes)
    out.write_bytes(b"previous result")
    real_write = Path.write_bytes

    def dying_write(self, data):
        real_write(self, data[: len(data) // 2])
        raise {"ENOSPC": OSError(28, "No space left on device"), "EIO": OSError(5, "Input/output error"),
               "KeyboardInterrupt": KeyboardInterrupt(), "RuntimeError": RuntimeError("boom"),
               "MemoryError": MemoryError()}[failure]

    monkeypatch.setattr(modelio.Path, "write_bytes", dying_write)
    before = snapshot(work)
    outcome = cli(*compress_args(src, out, "--no-check"))
    expected = {"ENOSPC": (ExitCode.OUTPUT_ERROR, "No space left"), "EIO": (ExitCode.OUTPUT_ERROR, "Input/output"),
                "KeyboardInterrupt": (ExitCode.INTERRUPTED, "interrupted"),
                "RuntimeError": (ExitCode.OUTPUT_ERROR, "boom"),
                "MemoryError": (ExitCode.RUNTIME_ERROR, "out of memory")}[failure]
    monkeypatch.undo()
    assert_clean(outcome, expected[0], expected[1])
    assert_untouched(before, work)


def test_interrupted_by_a_real_signal(work):
    """SIGINT while compressing: exit 130, one line, nothing written."""
    import signal
    import time

    src, out = work / "model.onnx", work / "out.onnx"
    save(builders.mlp_model(k=1024, hidden=1024), src)
    before = snapshot(work)
    # How long the CLI takes to start (imports) before it runs a command: signal well after that.
    t0 = time.monotonic()
    cli_process("compress", work / "missing.onnx", "-o", out)
    startup = time.monotonic() - t0
    proc = subprocess.Popen([sys.executable, "-m", "onnxvq.cli", *map(str, compress_args(src, out, "--method", "kmeans", "--bits", "8"))],
                            stderr=subprocess.PIPE, text=True, cwd=REPO)
    time.sleep(startup + 0.5)
    proc.send_signal(signal.SIGINT)
    _, stderr = proc.communicate(timeout=60)
    outcome = Outcome(proc.returncode, stderr)
    if proc.returncode == ExitCode.OK:  # finished before the signal: nothing to test
        pytest.skip("compression finished before the signal")
    assert_clean(outcome, ExitCode.INTERRUPTED, "interrupted")
    assert_untouched(before, work)


def test_check_and_data_hostile(work, good_bytes):
    src = work / "model.onnx"
    src.write_bytes(good_bytes)
    (work / "bad.npz").write_bytes(b"not an npz")
    np.savez(work / "wrong_shape.npz", X=np.ones((2, 3, 5), np.float32))
    np.savez(work / "wrong_name.npz", Y=np.ones((2, 3, 64), np.float32))
    np.savez(work / "wrong_dtype.npz", X=np.ones((2, 3, 64), np.int64))
    for data, code in (("missing.npz", ExitCode.INVALID_MODEL), ("bad.npz", ExitCode.INVALID_MODEL),
                       ("wrong_name.npz", ExitCode.INVALID_MODEL), ("wrong_shape.npz", ExitCode.RUNTIME_ERROR),
                       ("wrong_dtype.npz", ExitCode.RUNTIME_ERROR)):
        before = snapshot(work)
        word = data if code == ExitCode.INVALID_MODEL else "X"
        assert_clean(cli("check", src, src, "--data", work / data), code, word)
        assert_untouched(before, work)


# --- 5. crafted compressed models in onnxruntime (child process: a crash is a failure) -------

CRAFT_SCRIPT = textwrap.dedent(r"""
    import json, sys
    import numpy as np
    import onnx
    from onnx import helper, numpy_helper, TensorProto
    import onnxvq
    from onnxvq.ops.schema import ATTRIBUTE_NAMES, DOMAIN, OP_TYPE, VQLayout

    layout = VQLayout.for_weight(24, 10, bits=3, subvector_len=4)
    good = layout.attributes()
    rng = np.random.default_rng(0)
    codes = rng.integers(0, 256, layout.packed_nbytes, dtype=np.uint8)
    books = rng.standard_normal(layout.codebooks_shape).astype(np.float32)
    bias = rng.standard_normal(10).astype(np.float32)

    def model(attrs, codes=codes, books=books, bias=bias, drop=()):
        inits = [numpy_helper.from_array(codes, "codes"), numpy_helper.from_array(books, "books")]
        inputs = ["X", "codes", "books"]
        if bias is not None:
            inits.append(numpy_helper.from_array(bias, "bias"))
            inputs.append("bias")
        attrs = {k: v for k, v in attrs.items() if k not in drop}
        node = helper.make_node(OP_TYPE, inputs, ["Y"], domain=DOMAIN, name="vq", **attrs)
        graph = helper.make_graph([node], "g", [helper.make_tensor_value_info("X", TensorProto.FLOAT, None)],
                                  [helper.make_tensor_value_info("Y", TensorProto.FLOAT, None)], inits)
        m = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17), helper.make_opsetid(DOMAIN, 1)])
        m.ir_version = 8
        return m.SerializeToString()

    def attrs(**over):
        return {**good, **over}

    X = rng.standard_normal((3, 24)).astype(np.float32)
    cases = {
        "control": (model(good), X),
        "codes_too_short": (model(good, codes=codes[:-1]), X),
        "codes_too_long": (model(good, codes=np.concatenate([codes, codes[:3]])), X),
        "codes_empty": (model(good, codes=codes[:0]), X),
        "codes_2d": (model(good, codes=codes.reshape(1, -1)), X),
        "codes_int8": (model(good, codes=codes.view(np.int8)), X),
        "codes_float": (model(good, codes=codes.astype(np.float32)), X),
        "codebooks_short": (model(good, books=books[..., :-1, :]), X),
        "codebooks_rank4": (model(good, books=books.reshape(books.shape[1:]) if books.shape[0] == 1 else books[0]), X),
        "codebooks_float64": (model(good, books=books.astype(np.float64)), X),
        "codebooks_int32": (model(good, books=books.astype(np.int32)), X),
        "codebooks_empty": (model(good, books=books[:0]), X),
        "bias_wrong_len": (model(good, bias=bias[:-1]), X),
        "bias_float64": (model(good, bias=bias.astype(np.float64)), X),
        "bias_2d": (model(good, bias=bias.reshape(1, -1)), X),
        "x_wrong_k": (model(good), X[:, :-1]),
        "x_scalar": (model(good), np.array(1.0, np.float32)),
        "x_float64": (model(good), X.astype(np.float64)),
        "format_version_99": (model(attrs(format_version=99)), X),
        "format_version_0": (model(attrs(format_version=0)), X),
        "format_version_neg": (model(attrs(format_version=-1)), X),
        "bits_0": (model(attrs(bits=0)), X),
        "bits_9": (model(attrs(bits=9)), X),
        "bits_64": (model(attrs(bits=64)), X),
        "bits_huge": (model(attrs(bits=2**62)), X),
        "group_size_0": (model(attrs(group_size=0)), X),
        "group_size_neg": (model(attrs(group_size=-3)), X),
        "group_size_too_big": (model(attrs(group_size=11)), X),
        "K_negative": (model(attrs(in_features=-24)), X),
        "K_huge": (model(attrs(in_features=2**62)), X),
        "N_huge": (model(attrs(out_features=2**62)), X),
        "N_int64_max": (model(attrs(out_features=2**63 - 1)), X),
        "S_mismatch": (model(attrs(num_subspaces=5)), X),
        "S_huge": (model(attrs(num_subspaces=2**40)), X),
        "d_zero": (model(attrs(subvector_len=0)), X),
        "d_huge": (model(attrs(subvector_len=2**62, num_subspaces=1)), X),
        "stages_0": (model(attrs(stages=0)), X),
        "stages_huge": (model(attrs(stages=2**61)), X),
        "axis_2": (model(attrs(axis=2)), X),
        "axis_neg": (model(attrs(axis=-1)), X),
        "per_subspace_5": (model(attrs(codebook_per_subspace=5)), X),
        "missing_bits": (model(good, drop=("bits",)), X),
        "missing_version": (model(good, drop=("format_version",)), X),
        "bits_as_float": (model({**good, "bits": 3.0}), X),
        "bits_as_string": (model({**good, "bits": "3"}), X),
        "everything_overflows": (model(attrs(in_features=2**62, out_features=2**62, num_subspaces=2**60,
                                              stages=2**40)), X),
    }
    only = sys.argv[1:]
    for name, (payload, x) in cases.items():
        if only and name not in only:
            continue
        print(json.dumps({"case": name, "stage": "start"}), flush=True)
        result = {"case": name}
        try:
            sess = onnxvq.session(payload)
            result["stage"] = "run"
            y = sess.run(None, {"X": x})[0]
            result["ok"] = True
            result["shape"] = list(y.shape)
        except Exception as exc:
            result["ok"] = False
            result["error"] = type(exc).__name__ + ": " + str(exc)
        print(json.dumps(result), flush=True)
""")


def test_crafted_compressed_models_never_crash_onnxruntime(tmp_path):
    script = tmp_path / "craft.py"
    script.write_text(CRAFT_SCRIPT)
    proc = subprocess.run([sys.executable, str(script)], capture_output=True, text=True, timeout=300, cwd=REPO)
    records = [json.loads(line) for line in proc.stdout.splitlines() if line.startswith("{")]
    last = records[-1] if records else {}
    assert proc.returncode == 0, (f"the process died (status {proc.returncode}) in case {last.get('case')!r}: "
                                  f"{proc.stderr[-2000:]}")
    results = {r["case"]: r for r in records if "ok" in r}
    assert len(results) >= 45, sorted(results)
    assert results["control"]["ok"] and results["control"]["shape"] == [3, 10], results["control"]
    for name, r in results.items():
        if name == "control":
            continue
        assert not r["ok"], f"{name}: onnxruntime accepted a broken model and ran it: {r}"
        assert "VQMatMul" in r["error"] or "Type Error" in r["error"] or "INVALID_ARGUMENT" in r["error"] \
            or "Invalid" in r["error"], f"{name}: unclear error {r['error']!r}"
    # Our own messages name what is wrong, with the expected and the actual value.
    expectations = {
        "codes_too_short": ("codes", "got"), "codebooks_short": ("codebooks", "got"),
        "bias_wrong_len": ("bias", "got"), "x_wrong_k": ("X", "expected"),
        "format_version_99": ("format_version", "99"), "bits_9": ("bits", "got 9"),
        "group_size_0": ("group_size", "got 0"), "group_size_too_big": ("group_size", "exceeds"),
        "S_mismatch": ("num_subspaces", "got 5"), "axis_2": ("axis", "got 2"),
        "missing_bits": ("bits", "missing"), "K_huge": ("VQMatMul",), "stages_huge": ("too large",),
    }
    for name, words in expectations.items():
        for w in words:
            assert w in results[name]["error"], (name, w, results[name]["error"])


# --- 6. crafted compressed models through the CLI (check / inspect / compress) ----------------

def _crafted_variants(compressed: onnx.ModelProto) -> dict[str, onnx.ModelProto]:
    from onnxvq.ops.schema import DOMAIN

    def variant(edit):
        m = onnx.ModelProto()
        m.CopyFrom(compressed)
        node = next(n for n in m.graph.node if n.domain == DOMAIN)
        edit(m, node)
        return m

    def set_attr(name, value):
        def edit(_m, node):
            kept = [a for a in node.attribute if a.name != name]
            del node.attribute[:]
            node.attribute.extend(kept + ([helper.make_attribute(name, value)] if value is not None else []))
        return edit

    def short_codes(m, node):
        init = next(t for t in m.graph.initializer if t.name == node.input[1])
        data = numpy_helper.to_array(init)
        init.CopyFrom(numpy_helper.from_array(data[:-3].copy(), init.name))

    return {
        "format_version_99": variant(set_attr("format_version", 99)),
        "bits_missing": variant(set_attr("bits", None)),
        "bits_graph": variant(set_attr("bits", helper.make_graph([], "g", [], []))),
        "bits_string": variant(set_attr("bits", b"eight")),
        "group_size_0": variant(set_attr("group_size", 0)),
        "codes_short": variant(short_codes),
    }


def test_crafted_compressed_models_through_the_cli(work):
    src, out = work / "m.onnx", work / "m.vq.onnx"
    save(builders.mlp_model(k=64, hidden=48), src)
    assert cli(*compress_args(src, out, "--no-check")).code == ExitCode.OK
    for name, model in _crafted_variants(onnx.load(str(out))).items():
        path = save(model, work / f"{name}.onnx")
        before = snapshot(work)
        assert_clean(cli("check", src, path, "--samples", "2"), ExitCode.RUNTIME_ERROR, "compressed model")
        assert_clean(cli("inspect", path), {ExitCode.OK, ExitCode.INVALID_MODEL})
        assert_clean(cli(*compress_args(path, work / "again.onnx")), ExitCode.NOTHING_TO_DO, "already compressed")
        assert_untouched(before, work)


def test_onnxruntime_log_noise_stays_off_stderr(work):
    """A model onnxruntime warns about (declared output shape wrong) still gives a silent run
    (-q) in a real process: onnxruntime's own log lines must not reach the user's stderr."""
    model = builders.gemm_model(k=16, n=8)
    model.graph.output[0].type.tensor_type.shape.dim[1].dim_value = 99
    src = save(model, work / "noisy.onnx")
    outcome = cli_process(*compress_args(src, work / "out.onnx"))
    assert outcome.code == ExitCode.OK and outcome.stderr == "", outcome
    model.opset_import[0].version = 1000  # unknown opset: onnxruntime refuses it, in one line of ours
    src = save(model, work / "opset.onnx")
    outcome = cli_process("check", src, src)
    assert_clean(outcome, ExitCode.RUNTIME_ERROR, "onnxruntime")
