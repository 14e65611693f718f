"""Load models with clear errors; save them atomically (temp files in the target folder, then rename;
a large model and its external data as a pair)."""
from __future__ import annotations

import os
import re
import secrets
import shutil
import tempfile
from pathlib import Path

import numpy as np
import onnx
from google.protobuf.message import DecodeError

from .errors import InputNotFound, InvalidModel, OutputError

# protobuf cannot serialize one message over 2 GiB; stay well below with external data.
EXTERNAL_DATA_THRESHOLD = 1_800_000_000


def load_model(path: str | os.PathLike) -> onnx.ModelProto:
    """Read an ONNX model and its external data; every failure becomes one clear InputNotFound/InvalidModel."""
    path = Path(path)
    if not path.exists():
        raise InputNotFound(f"{path}: no such file")
    if path.is_dir():
        raise InputNotFound(f"{path}: is a folder, not an ONNX file")
    if not os.access(path, os.R_OK):
        raise InputNotFound(f"{path}: not readable (permission denied)")
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise InputNotFound(f"{path}: cannot read: {exc.strerror or exc}") from None
    if not data:
        raise InvalidModel(f"{path}: empty file, not an ONNX model")
    try:
        model = onnx.ModelProto()
        model.ParseFromString(data)
    except (DecodeError, RuntimeError, ValueError) as exc:
        raise InvalidModel(f"{path}: not a valid ONNX protobuf (truncated or corrupt?): {exc}") from None
    if not model.HasField("graph") or (not model.graph.node and not model.graph.output):
        raise InvalidModel(f"{path}: parsed, but holds no ONNX graph (is it an ONNX model?)")
    bad = _first_non_utf8_string(model)
    if bad is not None:
        raise InvalidModel(f"{path}: {bad} is not valid UTF-8 text (corrupt file?)")
    _load_external_data(model, path)
    return model


def _first_non_utf8_string(message, where: str = "model"):
    """Where a string field holds bytes that are not UTF-8, or None.

    protobuf hands such proto2 strings back as ``bytes``; everything downstream expects ``str``.
    Tensor payloads are not visited (they are bytes by design, and large)."""
    from google.protobuf.descriptor import FieldDescriptor

    if isinstance(message, onnx.TensorProto):
        values = [("name", message.name), ("doc_string", message.doc_string)]
        values += [("external_data", e.key) for e in message.external_data]
        values += [("external_data", e.value) for e in message.external_data]
        for field, value in values:
            if not isinstance(value, str):
                return f"{where}.{field}"
        return None
    for field, value in message.ListFields():
        label = f"{where}.{field.name}"
        repeated = getattr(field, "is_repeated", None)  # newer protobuf; older ones have `label`
        if repeated is None:
            repeated = field.label == FieldDescriptor.LABEL_REPEATED
        items = value if repeated else [value]
        if field.type == FieldDescriptor.TYPE_STRING:
            for item in items:
                if not isinstance(item, str):
                    return f"{label} {item[:40]!r}"
        elif field.type == FieldDescriptor.TYPE_MESSAGE:
            for index, item in enumerate(items):
                found = _first_non_utf8_string(item, f"{label}[{index}]" if len(items) > 1 else label)
                if found is not None:
                    return found
    return None


def _load_external_data(model: onnx.ModelProto, path: Path) -> None:
    from onnx.external_data_helper import _get_all_tensors, uses_external_data

    base = path.resolve().parent
    for tensor in _get_all_tensors(model):
        if not uses_external_data(tensor):
            continue
        info = {e.key: e.value for e in tensor.external_data}
        location = info.get("location", "")
        target = (base / location).resolve()
        if not location or os.path.isabs(location) or base not in target.parents:
            raise InvalidModel(f"{path}: tensor {tensor.name!r} points at external data {location!r} "
                               f"outside the model's folder; refusing to read it")
        if not target.is_file():
            raise InvalidModel(f"{path}: tensor {tensor.name!r} needs external data file {location!r}, "
                               f"which does not exist next to the model")
        _check_external_range(path, tensor.name, location, info, target.stat().st_size)
    try:
        onnx.load_external_data_for_model(model, str(base))
    except Exception as exc:  # noqa: BLE001
        raise InvalidModel(f"{path}: cannot load external data: {exc}") from None


def _check_external_range(path: Path, name: str, location: str, info: dict, file_size: int) -> None:
    """offset/length must be non-negative integers inside the data file."""
    values = {}
    for key in ("offset", "length"):
        if key in info:
            try:
                values[key] = int(info[key])
            except ValueError:
                values[key] = -1
            if values[key] < 0:
                raise InvalidModel(f"{path}: tensor {name!r} has external-data {key} {info[key]!r}; "
                                   f"expected a non-negative integer")
    offset = values.get("offset", 0)
    end = offset + values.get("length", max(0, file_size - offset))
    if end > file_size:
        raise InvalidModel(f"{path}: tensor {name!r} reads bytes [{offset}, {end}) of {location!r}, "
                           f"which holds {file_size} bytes (truncated or corrupt external data?)")


def _external_files(input_path: Path) -> list[Path]:
    """Files holding the input model's external data (read without loading them)."""
    from onnx.external_data_helper import _get_all_tensors, uses_external_data

    try:
        model = onnx.load(str(input_path), load_external_data=False)
    except Exception:  # noqa: BLE001 - load_model reports unreadable inputs
        return []
    files = []
    for tensor in _get_all_tensors(model):
        if uses_external_data(tensor):
            location = {e.key: e.value for e in tensor.external_data}.get("location")
            if location:
                files.append(input_path.resolve().parent / location)
    return files


def _same_file(a: Path, b: Path) -> bool:
    try:
        return a.resolve() == b.resolve() or (a.exists() and b.exists() and os.path.samefile(a, b))
    except OSError:
        return False


def _data_name_pattern(output_name: str) -> re.Pattern:
    """Names save_model gives external data next to ``output_name``: ``<name>.data`` or ``<name>.<token>.data``."""
    return re.compile(re.escape(output_name) + r"(\.[0-9a-f]{" + str(2 * _TOKEN_BYTES) + r"})?\.data")


_TOKEN_BYTES = 4


def _our_data_files(path: Path) -> list[Path]:
    """Existing files next to ``path`` named as save_model names external data for it."""
    pattern = _data_name_pattern(path.name)
    folder = path.absolute().parent.resolve()
    try:
        names = os.listdir(folder)
    except OSError:
        return []
    return [folder / n for n in names if pattern.fullmatch(n)]


def check_output_path(input_path: str | os.PathLike, output_path: str | os.PathLike) -> Path:
    """Refuse to overwrite the input; make sure the folder exists and is writable."""
    src, dst = Path(input_path), Path(output_path)
    # resolve() catches symlinks and "..", samefile() hard links
    if dst.resolve() == src.resolve() or (dst.exists() and src.exists() and os.path.samefile(src, dst)):
        raise OutputError(f"{dst}: output path is the input model; choose another output path")
    folder = dst.absolute().parent.resolve()
    if not folder.is_dir():
        raise OutputError(f"{dst}: output folder {folder} does not exist")
    if not os.access(folder, os.W_OK | os.X_OK):
        raise OutputError(f"{dst}: output folder {folder} is not writable")
    if dst.is_dir():
        raise OutputError(f"{dst}: is a folder; give a file path for the output model")
    if dst.exists() and not dst.is_file():
        # a FIFO, socket or device (e.g. /dev/null): renaming over it would replace the node itself
        raise OutputError(f"{dst}: exists and is not a regular file; give a file path for the output model")
    # Saving replaces <output> and may create or remove <output>.data / <output>.<token>.data: none
    # of them may be a file the input model reads its external data from. (Names that do not exist
    # yet cannot be: the input's data files exist.)
    touched = ([dst] if dst.exists() else []) + _our_data_files(dst)
    if touched:
        for used in _external_files(src):
            for target in touched:
                if _same_file(target, used):
                    raise OutputError(f"{dst}: writing it could replace or remove {target.name}, which holds the "
                                      f"input model's external data; choose another output path")
    return dst


def save_model(model: onnx.ModelProto, path: str | os.PathLike) -> int:
    """Write ``model`` to ``path`` atomically; large models get an external-data file next to it.

    Returns the bytes written (model + external data). Nothing is left behind on failure.

    A large model and its data are replaced as a pair: the data goes to a name no existing file has
    (``<name>.data`` when free, else ``<name>.<token>.data``), then the model file is renamed over
    the old one, the single commit point. Before it, the old model and its data are untouched; after
    it, the new model points at its own data. Only then is the old model's data file removed.
    """
    path = Path(path)
    # The folder of the output's own name (not of a symlink's target): the model and its data land together.
    folder = path.absolute().parent.resolve()
    size = model.ByteSize() if _fits_protobuf(model) else EXTERNAL_DATA_THRESHOLD + 1
    try:
        tmpdir = tempfile.mkdtemp(prefix=f".{path.name}.", suffix=".tmp", dir=folder)
    except OSError as exc:
        raise OutputError(f"{path}: cannot write to {folder}: {exc.strerror or exc}") from None
    reserved = None  # our data file in the folder, removed again if the commit does not happen
    committed = False
    try:
        tmp_model = Path(tmpdir) / path.name
        if size > EXTERNAL_DATA_THRESHOLD:
            reserved = _reserve_data_name(path, folder)
            try:
                onnx.save_model(model, str(tmp_model), save_as_external_data=True, all_tensors_to_one_file=True,
                                location=reserved.name, size_threshold=1024)
            finally:
                # Saving turns the in-memory tensors into external references, also when it fails half
                # way: read the data back from the temp folder while it is there.
                _restore_inline(model, tmpdir)
        else:
            tmp_model.write_bytes(model.SerializeToString())
        written = sum(f.stat().st_size for f in Path(tmpdir).iterdir())
        if reserved is not None:
            tmp_data = Path(tmpdir) / reserved.name
            _fsync(tmp_data)
            os.replace(tmp_data, reserved)  # over our own empty placeholder, never someone's file
            _fsync(tmp_model)
            _fsync(folder)  # the data's name is durable before a model can point at it
        # Read just before the commit: the data the model being replaced points at.
        previous = _previous_data_files(path)
        os.replace(tmp_model, path)
        committed = True
        if reserved is not None:
            _fsync(folder)
        _remove_unreferenced(previous, path, keep={reserved} if reserved else set())
        return written
    except OSError as exc:
        raise OutputError(f"{path}: writing failed: {exc.strerror or exc}") from None
    except MemoryError:
        raise
    except Exception as exc:  # noqa: BLE001 - e.g. protobuf refusing to serialize: one line, no partial file
        raise OutputError(f"{path}: writing failed: {type(exc).__name__}: {exc}") from None
    finally:
        # Also on KeyboardInterrupt: before the commit the new data file is nobody's.
        if reserved is not None and not committed:
            try:
                reserved.unlink(missing_ok=True)
            except OSError:
                pass
        shutil.rmtree(tmpdir, ignore_errors=True)


def _restore_inline(model: onnx.ModelProto, tmpdir: str) -> None:
    """Put tensor data back into ``model`` after onnx.save_model moved it out (written or not)."""
    from onnx.external_data_helper import _get_all_tensors, load_external_data_for_tensor, uses_external_data

    for tensor in _get_all_tensors(model):
        if not uses_external_data(tensor):
            continue
        if not tensor.HasField("raw_data"):  # already written to the data file: read it back
            try:
                load_external_data_for_tensor(tensor, tmpdir)
                continue
            except Exception:  # noqa: BLE001 - a failed save may not have written it; the save has failed anyway
                pass
        tensor.data_location = onnx.TensorProto.DEFAULT
        del tensor.external_data[:]


def _reserve_data_name(path: Path, folder: Path) -> Path:
    """Create an empty placeholder under a data name no file has; O_EXCL makes the claim atomic."""
    first = folder / (path.name + ".data")
    for attempt in range(16):
        target = first if attempt == 0 else folder / f"{path.name}.{secrets.token_hex(_TOKEN_BYTES)}.data"
        try:
            os.close(os.open(target, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644))
            return target
        except FileExistsError:
            continue
    raise OutputError(f"{path}: cannot find a free name for its external data in {folder}")


def _fsync(path: Path) -> None:
    """Flush to disk so a power cut cannot reorder the renames; not every filesystem allows it."""
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def _data_locations(model_path: Path) -> set[str] | None:
    """External-data locations a model file references (None if it is not a readable model)."""
    from onnx.external_data_helper import _get_all_tensors, uses_external_data

    try:
        model = onnx.load(str(model_path), load_external_data=False)
    except Exception:  # noqa: BLE001 - not a model (or not ours to judge): references nothing
        return None
    locations = set()
    for tensor in _get_all_tensors(model):
        if uses_external_data(tensor):
            location = {e.key: e.value for e in tensor.external_data}.get("location")
            if location:
                locations.add(location)
    return locations


def _previous_data_files(path: Path) -> list[Path]:
    """Data files of ours that the model at ``path`` (about to be replaced) references."""
    candidates = _our_data_files(path)
    if not candidates or not path.is_file():
        return []  # nothing of ours to clean up: do not parse a possibly huge old model for nothing
    locations = _data_locations(path) or set()
    return [c for c in candidates if c.name in locations]


#: Sibling models larger than this are not parsed when looking for other users of a data file
#: (a model that keeps its tensors in external data is small).
_SIBLING_SCAN_LIMIT = 64 << 20


def _remove_unreferenced(previous: list[Path], path: Path, keep: set[Path]) -> None:
    """Remove the replaced model's data files unless another model in the folder still reads them."""
    doomed = [p for p in previous if p not in keep]
    if not doomed:
        return
    folder = path.absolute().parent.resolve()
    try:
        siblings = [folder / n for n in os.listdir(folder) if n != path.name and n.endswith(".onnx")]
    except OSError:
        return
    for sibling in siblings:
        try:
            if not sibling.is_file() or sibling.stat().st_size > _SIBLING_SCAN_LIMIT:
                continue
        except OSError:
            continue
        used = _data_locations(sibling) or set()
        doomed = [p for p in doomed if p.name not in used]
        if not doomed:
            return
    for p in doomed:
        try:
            p.unlink(missing_ok=True)
        except OSError:
            pass  # the new pair is complete; a stale data file is only wasted space


def _fits_protobuf(model: onnx.ModelProto) -> bool:
    try:
        return model.ByteSize() < EXTERNAL_DATA_THRESHOLD
    except Exception:  # noqa: BLE001 - ByteSize overflows past 2 GiB on some protobuf builds
        return False


def file_bytes(path: str | os.PathLike, model: onnx.ModelProto | None = None) -> int:
    """Bytes a model occupies on disk: the file plus the external-data files it references.

    ``model``, if given, must still hold its external-data references (not loaded)."""
    path = Path(path)
    total = path.stat().st_size
    if model is None:
        try:
            model = onnx.load(str(path), load_external_data=False)
        except Exception:  # noqa: BLE001 - size of the file alone is still right
            return total
    if model is not None:
        from onnx.external_data_helper import _get_all_tensors, uses_external_data

        seen = set()
        for tensor in _get_all_tensors(model):
            if uses_external_data(tensor):
                loc = {e.key: e.value for e in tensor.external_data}.get("location")
                if loc and loc not in seen and (path.parent / loc).is_file():
                    seen.add(loc)
                    total += (path.parent / loc).stat().st_size
    return total


def has_nonfinite(array: np.ndarray) -> bool:
    return array.dtype.kind == "f" and not np.isfinite(array).all()
