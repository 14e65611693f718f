"""--jobs through joblib, and joblib's Dask backend on a local cluster: the layers of one model
spread over worker processes give the same bytes as one process."""
import numpy as np
import onnx
from dask.distributed import Client, LocalCluster
from joblib import parallel_config
from onnx import TensorProto, helper, numpy_helper

from onnxvq.compress import compress_model
from onnxvq.config import build_plan


def chain_model(widths=(96, 80, 72, 64, 48), seed=0) -> onnx.ModelProto:
    rng = np.random.default_rng(seed)
    nodes, inits, prev = [], [], "X"
    for i, (k, n) in enumerate(zip(widths, widths[1:])):
        inits.append(numpy_helper.from_array((rng.standard_normal((k, n)) * 0.1).astype(np.float32), f"W{i}"))
        nodes.append(helper.make_node("MatMul", [prev, f"W{i}"], [f"h{i}"], name=f"fc{i}"))
        prev = f"h{i}"
    graph = helper.make_graph(nodes, "chain", [helper.make_tensor_value_info("X", TensorProto.FLOAT, ["b", widths[0]])],
                              [helper.make_tensor_value_info(prev, TensorProto.FLOAT, ["b", widths[-1]])], inits)
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])


def test_dask_cluster_backend_gives_the_same_bytes():
    model = chain_model()
    plan = build_plan({"method": "pq", "bits": 4, "dim": 2, "min_elements": 0})
    local = compress_model(model, plan, jobs=1).model.SerializeToString()
    with LocalCluster(n_workers=2, threads_per_worker=1, processes=True, dashboard_address=None) as cluster, \
            Client(cluster) as client, parallel_config(backend="dask"):
        remote = compress_model(model, plan, jobs=-1).model.SerializeToString()
        assert len(client.scheduler_info()["workers"]) == 2
    assert remote == local
