"""A large model and its external data are saved as a pair (issue 11, part B).

An interrupted save leaves the old model with its old data, or the new model with its new data;
never a model pointing at data it was not written with, and no temp file behind. A ~1 MB model
stands in for a 2 GB one by lowering EXTERNAL_DATA_THRESHOLD.
"""
from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path

import onnx
import pytest
from click.testing import CliRunner
from onnx import numpy_helper

import onnxvq.modelio as modelio
from onnxvq.cli import main
from onnxvq.errors import OutputError
from onnxvq.modelio import check_output_path, file_bytes, load_model, save_model

from . import builders


@pytest.fixture(autouse=True)
def small_threshold(monkeypatch):
    monkeypatch.setattr(modelio, "EXTERNAL_DATA_THRESHOLD", 100_000)


def big_model(seed: int) -> onnx.ModelProto:
    return builders.mlp_model(k=512, hidden=512, seed=seed)  # W1 alone is 1 MB


def tensors(model: onnx.ModelProto) -> dict[str, bytes]:
    return {t.name: numpy_helper.to_array(t).tobytes() for t in model.graph.initializer}


def snapshot(folder: Path) -> dict[str, str]:
    return {p.name: hashlib.sha256(p.read_bytes()).hexdigest() if p.is_file() else "dir"
            for p in sorted(folder.iterdir())}


def data_files(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir() if p.name.endswith(".data"))


def locations(path: Path) -> set[str]:
    model = onnx.load(str(path), load_external_data=False)
    return {e.value for t in model.graph.initializer for e in t.external_data if e.key == "location"}


def assert_loads_as(path: Path, model: onnx.ModelProto) -> None:
    """Both onnx.load and our load_model read the file back bit for bit."""
    assert tensors(onnx.load(str(path))) == tensors(model)
    assert tensors(load_model(path)) == tensors(model)


def test_save_loads_back_bit_identical(tmp_path):
    model, out = big_model(0), tmp_path / "out.onnx"
    expected = tensors(model)
    written = save_model(model, out)
    assert data_files(tmp_path) == ["out.onnx.data"] and locations(out) == {"out.onnx.data"}
    assert out.stat().st_size < 100_000  # the tensors are in the data file
    assert written == file_bytes(out) == out.stat().st_size + (tmp_path / "out.onnx.data").stat().st_size
    assert tensors(model) == expected  # the in-memory model holds its data again
    assert_loads_as(out, model)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out.onnx", "out.onnx.data"]


def test_overwrite_leaves_no_stale_data(tmp_path):
    out = tmp_path / "out.onnx"
    names = []
    for seed in (0, 1, 2):
        model = big_model(seed)
        written = save_model(model, out)
        assert_loads_as(out, model)
        (name,) = data_files(tmp_path)  # exactly one data file: the new model's
        assert locations(out) == {name} and written == file_bytes(out)
        names.append(name)
        assert sorted(p.name for p in tmp_path.iterdir()) == sorted(["out.onnx", name])
    # the taken name is never reused in place: the pair alternates between two names
    assert names[0] == names[2] == "out.onnx.data" and names[1] != names[0]
    # a small model replacing a large one takes the old data with it
    small = builders.mlp_model(k=8, hidden=4)
    save_model(small, out)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out.onnx"]
    assert_loads_as(out, small)


def test_data_another_model_reads_is_kept(tmp_path):
    out, backup = tmp_path / "out.onnx", tmp_path / "backup.onnx"
    first = big_model(0)
    save_model(first, out)
    backup.write_bytes(out.read_bytes())  # a copy of the model file: it reads out.onnx.data too
    save_model(big_model(1), out)
    assert (tmp_path / "out.onnx.data").exists()
    assert_loads_as(backup, first)


def test_unrelated_files_are_left_alone(tmp_path):
    out = tmp_path / "out.onnx"
    (tmp_path / "out.onnx.notes.data").write_bytes(b"mine")
    (tmp_path / "out.onnx.0123abcd.data").write_bytes(b"not referenced by out.onnx")
    save_model(big_model(0), out)
    save_model(big_model(1), out)
    assert (tmp_path / "out.onnx.notes.data").read_bytes() == b"mine"
    assert (tmp_path / "out.onnx.0123abcd.data").read_bytes() == b"not referenced by out.onnx"


class Boom(OSError):
    def __init__(self):
        super().__init__(5, "Input/output error")


def _fail_nth_replace(monkeypatch, n, exc):
    real, calls = os.replace, []

    def replace(src, dst, **kw):
        calls.append(dst)
        if len(calls) == n:
            raise exc
        return real(src, dst, **kw)

    monkeypatch.setattr(modelio.os, "replace", replace)


def _fail_reserve(monkeypatch, exc):
    real = os.open

    def opener(path, flags, *a, **k):
        if flags & os.O_EXCL:
            raise exc
        return real(path, flags, *a, **k)

    monkeypatch.setattr(modelio.os, "open", opener)


def _fail_after_save(monkeypatch, exc):
    real = onnx.save_model

    def save(*a, **k):
        real(*a, **k)  # the data and the model are fully written in the temp folder
        raise exc

    monkeypatch.setattr(modelio.onnx, "save_model", save)


def _fail_mid_save(monkeypatch, exc):
    import onnx.external_data_helper as helper

    real = helper.save_external_data
    count = []

    def save_tensor(tensor, base_path):
        count.append(1)
        if len(count) == 2:  # the first tensor is out, the second dies
            raise exc
        real(tensor, base_path)

    monkeypatch.setattr(helper, "save_external_data", save_tensor)


FAILURES = {
    "reserve": _fail_reserve,
    "mid-save": _fail_mid_save,
    "after-save": _fail_after_save,
    "place-data": lambda m, exc: _fail_nth_replace(m, 1, exc),
    "commit": lambda m, exc: _fail_nth_replace(m, 2, exc),
}


@pytest.mark.parametrize("previous", ["external", "inline", "none"])
@pytest.mark.parametrize("exc", [Boom, KeyboardInterrupt], ids=["OSError", "KeyboardInterrupt"])
@pytest.mark.parametrize("step", list(FAILURES))
def test_interrupted_save_keeps_the_old_pair(tmp_path, monkeypatch, step, exc, previous):
    out = tmp_path / "out.onnx"
    old = big_model(0) if previous == "external" else builders.mlp_model(k=8, hidden=4)
    if previous != "none":
        save_model(old, out)
    before = snapshot(tmp_path)
    new = big_model(1)
    with monkeypatch.context() as m:
        FAILURES[step](m, exc())
        with pytest.raises(OutputError if exc is Boom else KeyboardInterrupt):
            save_model(new, out)
    assert snapshot(tmp_path) == before  # old model and old data byte for byte, nothing new
    if previous != "none":
        assert_loads_as(out, old)


@pytest.mark.parametrize("exc", [Boom, KeyboardInterrupt], ids=["OSError", "KeyboardInterrupt"])
def test_interrupted_cleanup_leaves_the_new_pair(tmp_path, monkeypatch, exc):
    """Past the commit point the new pair is complete; only the old data may be left over."""
    out = tmp_path / "out.onnx"
    save_model(big_model(0), out)
    new = big_model(1)
    real_unlink = Path.unlink

    def unlink(self, *a, **k):
        if self.name == "out.onnx.data":
            raise exc()
        return real_unlink(self, *a, **k)

    with monkeypatch.context() as m:
        m.setattr(modelio.Path, "unlink", unlink)
        if exc is KeyboardInterrupt:
            with pytest.raises(KeyboardInterrupt):
                save_model(new, out)
        else:
            assert save_model(new, out) == file_bytes(out)
    assert_loads_as(out, new)
    assert not [p.name for p in tmp_path.iterdir() if p.name.startswith(".")]  # no temp folder
    assert set(data_files(tmp_path)) <= {"out.onnx.data"} | locations(out)


def external_input(folder: Path, name: str, data_name: str) -> Path:
    path = folder / name
    onnx.save(big_model(5), path, save_as_external_data=True, location=data_name, size_threshold=1024)
    return path


@pytest.mark.parametrize("data_name", ["out.onnx.data", "out.onnx.89abcdef.data"])
def test_output_whose_save_could_touch_the_input_data_is_refused(tmp_path, data_name):
    src = external_input(tmp_path, "in.onnx", data_name)
    before = snapshot(tmp_path)
    with pytest.raises(OutputError, match="external data"):
        check_output_path(src, tmp_path / "out.onnx")
    assert snapshot(tmp_path) == before


def test_input_data_is_never_touched_end_to_end(tmp_path):
    """Compress an external-data input twice into an external-data output next to it."""
    src = external_input(tmp_path, "in.onnx", "in.onnx.data")
    keep = snapshot(tmp_path)
    out, report = tmp_path / "out.onnx", tmp_path / "r.json"
    for seed in ("1", "2"):
        r = CliRunner().invoke(main, ["compress", str(src), "-o", str(out), "--method", "kmeans", "--bits", "8",
                                      "--min-elements", "0", "--seed", seed, "--quiet", "--no-check",
                                      "--json", str(report)])
        assert r.exit_code == 0, r.output
        after = snapshot(tmp_path)
        assert {n: after[n] for n in keep} == keep
        (name,) = [n for n in data_files(tmp_path) if n.startswith("out.onnx")]
        assert locations(out) == {name}
        assert json.loads(report.read_text())["compressed_file_bytes"] == file_bytes(out)
        assert tensors(onnx.load(str(out))) == tensors(load_model(out))
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(["in.onnx", "in.onnx.data", "out.onnx", name, "r.json"])


@pytest.mark.parametrize("step", ["mid-save", "after-save", "commit"])
def test_the_model_in_memory_survives_a_failed_save(tmp_path, monkeypatch, step):
    model = big_model(3)
    expected = tensors(model)
    with monkeypatch.context() as m:
        FAILURES[step](m, Boom())
        with pytest.raises(OutputError):
            save_model(model, tmp_path / "out.onnx")
    assert tensors(model) == expected
    assert not any(t.external_data for t in model.graph.initializer)
    assert list(tmp_path.iterdir()) == []
