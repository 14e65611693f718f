"""Smoke test of an installed onnxvq, run from an empty temp dir (fed on stdin, so nothing
from the source tree is importable): build a tiny model, compress it with the `onnxvq` CLI
next to this python, run it with onnxvq.session, compare with the numpy reference.

    cd /tmp/x && venv/bin/python - < scripts/aarch64/wheel_smoke.py [--save-only]

--save-only stops after writing tiny.vq.onnx and x.npy (for the aarch64 wheel check).
"""
import subprocess
import sys
from pathlib import Path

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper
from onnx.reference import ReferenceEvaluator

import onnxvq
from onnxvq.ops.reference import reference_ops


def tiny_model(path: Path) -> None:
    rng = np.random.default_rng(0)
    weight = (rng.standard_normal((24, 40)) * 0.2).astype(np.float32)
    node = helper.make_node("MatMul", ["X", "W"], ["Y"], name="fc")
    graph = helper.make_graph([node], "tiny", [helper.make_tensor_value_info("X", TensorProto.FLOAT, ["batch", 24])],
                              [helper.make_tensor_value_info("Y", TensorProto.FLOAT, ["batch", 40])],
                              [numpy_helper.from_array(weight, "W")])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.save(model, path)


def main() -> int:
    package = Path(onnxvq.__file__).resolve()
    print(f"onnxvq {onnxvq.__version__} from {package.parent}\nop library: {onnxvq.library_path()}")
    tiny_model(Path("tiny.onnx"))
    cli = Path(sys.executable).parent / "onnxvq"
    subprocess.run([str(cli), "compress", "tiny.onnx", "-o", "tiny.vq.onnx", "--min-elements", "0",
                    "--method", "pq", "--bits", "4", "--dim", "2", "-q"], check=True)
    x = np.random.default_rng(1).uniform(-1, 1, (3, 24)).astype(np.float32)
    np.save("x.npy", x)
    if "--save-only" in sys.argv:
        return 0

    if not package.is_relative_to(Path(sys.prefix).resolve()):
        print(f"FAIL: onnxvq was imported from {package}, not from this venv ({sys.prefix})")
        return 1
    ops = {n.op_type for n in onnx.load("tiny.vq.onnx").graph.node}
    y = onnxvq.session("tiny.vq.onnx").run(None, {"X": x})[0]
    expected = ReferenceEvaluator("tiny.vq.onnx", new_ops=reference_ops()).run(None, {"X": x})[0]
    error = float(np.max(np.abs(y - expected)) / max(1.0, np.max(np.abs(expected))))
    ok = "VQMatMul" in ops and y.shape == (3, 40) and error <= 1e-5
    print(f"{'PASS' if ok else 'FAIL'}: compressed model ops {sorted(ops)}, output {y.shape}, "
          f"max rel diff vs reference {error:.1e}")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
