"""`onnxvq eval` and `onnxvq sweep` on tiny models built in code (fast: no model files, no downloads)."""
import csv
import json

import numpy as np
import onnx
import pytest
from click.testing import CliRunner
from onnx import TensorProto, helper, numpy_helper

from onnxvq.cli import main
from onnxvq.config import KMeansConfig, PQConfig, SVDConfig
from onnxvq.errors import ConfigError, ExitCode
from onnxvq.evaluate import Dataset, agreement, load_dataset, parse_preprocess, topk_accuracy

from . import builders


def invoke(*args):
    return CliRunner().invoke(main, [str(a) for a in args], catch_exceptions=False)


def conv_classifier(seed=0, classes=10):
    """Conv -> Relu -> Flatten -> Gemm(transB) -> Relu -> MatMul: a frozen conv trunk and two dense layers."""
    rng = np.random.default_rng(seed)
    conv = builders.rand(rng, 4, 1, 3, 3, scale=0.5)
    w1 = builders.rand(rng, 32, 4 * 8 * 8, scale=0.1)       # Gemm transB=1: [out, in]
    b1 = builders.rand(rng, 32, scale=0.1)
    w2 = builders.rand(rng, 32, classes, scale=0.3)        # MatMul: [in, out]
    nodes = [helper.make_node("Conv", ["x", "conv_w"], ["c"], name="conv", pads=[1, 1, 1, 1]),
             helper.make_node("Relu", ["c"], ["r"], name="relu0"),
             helper.make_node("Flatten", ["r"], ["f"], name="flatten"),
             helper.make_node("Gemm", ["f", "w1", "b1"], ["h"], name="fc1", transB=1),
             helper.make_node("Relu", ["h"], ["hr"], name="relu1"),
             helper.make_node("MatMul", ["hr", "w2"], ["logits"], name="fc2")]
    graph = helper.make_graph(
        nodes, "convnet", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", 1, 8, 8])],
        [helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["batch", classes])],
        [numpy_helper.from_array(conv, "conv_w"), numpy_helper.from_array(w1, "w1"),
         numpy_helper.from_array(b1, "b1"), numpy_helper.from_array(w2, "w2")])
    return builders._model(graph)


@pytest.fixture(scope="module")
def convnet(tmp_path_factory):
    """The model, and data labeled with the model's own predictions (so the original scores 100%)."""
    from onnxvq.evaluate import predict

    folder = tmp_path_factory.mktemp("convnet")
    model = conv_classifier()
    rng = np.random.default_rng(1)
    raw = rng.integers(0, 256, size=(200, 8, 8), dtype=np.uint8)
    x = ((raw / 255.0 - 0.5) / 0.25).astype(np.float32)[:, None]
    y = predict(model, {"x": x}).argmax(axis=1)
    y[:20] = -1  # unlabeled: counted in agreement only
    path = folder / "convnet.onnx"
    onnx.save(model, path)
    np.savez(folder / "data.npz", x=x, x_raw=raw, y=y)
    return path, folder / "data.npz", folder


def test_preprocess_spec_parses_and_matches_manual_normalization():
    p = parse_preprocess("key=x_raw, scale=1/255, mean=0.5, std=0.25, layout=nchw")
    raw = np.arange(2 * 4 * 4, dtype=np.uint8).reshape(2, 4, 4)
    out = p.apply(raw)
    assert out.shape == (2, 1, 4, 4) and out.dtype == np.float32
    np.testing.assert_allclose(out[:, 0], (raw / 255 - 0.5) / 0.25, rtol=1e-6)
    rgb = np.ones((1, 5, 5, 3), np.uint8) * 255
    q = parse_preprocess("scale=1/255,mean=0.485:0.456:0.406,std=0.229:0.224:0.225,layout=nchw").apply(rgb)
    assert q.shape == (1, 3, 5, 5)
    np.testing.assert_allclose(q[0, :, 0, 0], (1 - np.array([0.485, 0.456, 0.406])) / np.array([0.229, 0.224, 0.225]),
                               rtol=1e-5)
    assert parse_preprocess(None) is None and parse_preprocess("") is None


@pytest.mark.parametrize("spec", ["scale=abc", "bogus=1", "layout=chw", "std=0", "mean", "scale=1,scale=2"])
def test_bad_preprocess_specs_are_config_errors(spec):
    with pytest.raises(ConfigError):
        parse_preprocess(spec)


def test_accuracy_and_agreement_math():
    scores = np.array([[0.1, 0.9, 0.0], [0.8, 0.1, 0.1], [0.2, 0.3, 0.5], [0.3, 0.3, 0.4]])
    labels = np.array([1, 1, 2, -1])
    assert topk_accuracy(scores, labels, 1) == pytest.approx(2 / 3)
    assert topk_accuracy(scores, labels, 2) == pytest.approx(1.0)
    assert topk_accuracy(scores, np.array([-1, -1, -1, -1]), 1) is None
    other = scores.copy()
    other[3] = [0.9, 0.0, 0.1]
    a = agreement(scores, other)
    assert a["top1_agreement"] == pytest.approx(0.75)


def test_eval_reports_accuracy_with_unlabeled_excluded(convnet):
    model, data, _ = convnet
    r = invoke("eval", model, "--data", data, "--json", "-")
    assert r.exit_code == 0, r.output
    report = json.loads(r.output)["result"]
    assert report["samples"] == 200 and report["labeled"] == 180
    assert report["top1"] == 1.0 and report["correct"] == 180


def test_eval_against_compressed_model_and_raw_data(convnet, tmp_path):
    model, data, _ = convnet
    out = tmp_path / "c.onnx"
    r = invoke("compress", model, "-o", out, "--method", "kmeans", "--bits", "2", "--no-check", "--quiet")
    assert r.exit_code == 0, r.output
    r = invoke("eval", out, "--data", data, "--against", model, "--batch-size", "64",
               "--preprocess", "key=x_raw,scale=1/255,mean=0.5,std=0.25,layout=nchw", "--json", tmp_path / "e.json")
    assert r.exit_code == 0, r.output
    assert "agreement" in r.output and "original" in r.output
    report = json.loads((tmp_path / "e.json").read_text())
    assert report["original"]["top1"] == 1.0  # raw bytes normalized by the spec reproduce x
    res = report["result"]
    assert 0.5 < res["top1_agreement"] <= 1.0 and res["top1"] is not None
    # accuracy over labeled samples is consistent with agreement when the labels are the original's predictions
    assert abs(res["top1"] - res["top1_agreement"]) < 0.1


def test_eval_errors_are_one_line(convnet, tmp_path):
    model, data, _ = convnet
    r = invoke("eval", model, "--data", tmp_path / "missing.npz")
    assert r.exit_code == ExitCode.INPUT_NOT_FOUND and r.output.count("\n") == 1 and "not found" in r.output
    r = invoke("eval", model, "--data", data, "--preprocess", "scale=x")
    assert r.exit_code == ExitCode.USAGE and "scale" in r.output
    bad = tmp_path / "bad.npz"
    np.savez(bad, z=np.zeros((2, 1, 8, 8), np.float32))
    r = invoke("eval", model, "--data", bad)
    assert r.exit_code == ExitCode.INVALID_MODEL and "no array for input" in r.output
    raw = tmp_path / "raw.npz"
    np.savez(raw, x=np.zeros((2, 1, 8, 8), np.uint8))
    r = invoke("eval", model, "--data", raw)
    assert r.exit_code == ExitCode.INVALID_MODEL and "--preprocess" in r.output
    wrong = tmp_path / "wrong_labels.npz"
    np.savez(wrong, x=np.zeros((2, 1, 8, 8), np.float32), y=np.zeros((2, 3), np.int64))
    r = invoke("eval", model, "--data", wrong)
    assert r.exit_code == ExitCode.INVALID_MODEL and "labels" in r.output


def test_truncated_and_dense_twin_evaluation_match_the_real_compressed_model(convnet):
    from onnxvq.compress import compress_model
    from onnxvq.config import build_plan
    from onnxvq.evaluate import predict
    from onnxvq.sweep import EncodingCache, Grid, SweepRunner, select_layers

    model_path, data, _ = convnet
    model = onnx.load(model_path)
    dataset = load_dataset(model, data)
    # dense layers only: the conv trunk stays frozen, so the sweep can run it once
    layers = select_layers(model, Grid([KMeansConfig(bits=2)], min_elements=0, op_types=("Gemm", "MatMul")))
    assert [layer.name for layer in layers] == ["fc1", "fc2"]
    runner = SweepRunner(model, layers, dataset)
    assert runner.truncation is not None and "f" in runner.truncation.values  # the conv trunk ran once
    config = PQConfig(bits=3, dim=2, axis="in")
    cache = EncodingCache(layers)
    assignment = {layer.key: cache.get(layer.key, config) for layer in layers}
    # the same encodings through `compress` (same per-weight seeds) give the same model outputs
    result = compress_model(model, build_plan(None, {"method": "pq", "bits": 3, "dim": 2, "axis": "in",
                                                      "min_elements": 0}))
    real = predict(result.model, dataset.feeds)
    np.testing.assert_allclose(runner.outputs(assignment, "custom"), real, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(runner.outputs(assignment, "dense"), real, rtol=1e-4, atol=1e-4)
    full = SweepRunner(model, layers, dataset, truncate=False)
    assert full.truncation is None
    np.testing.assert_allclose(full.outputs(assignment, "dense"), real, rtol=1e-4, atol=1e-4)


def test_encodings_are_fitted_once_per_layer_and_config(convnet, monkeypatch):
    import onnxvq.sweep as sweep

    model_path, data, _ = convnet
    model = onnx.load(model_path)
    grid = sweep.Grid([KMeansConfig(bits=2), SVDConfig(ratio=4)], per_layer=True, min_elements=0,
                      op_types=("Gemm", "MatMul"))
    calls = []
    real_fit = sweep._fit
    monkeypatch.setattr(sweep, "_fit", lambda w, c, s, st=None: calls.append((w.shape, c)) or real_fit(w, c, s, st))
    result = sweep.run_sweep(model, load_dataset(model, data), grid)
    assert len(calls) == 4  # 2 layers x 2 configs, although they are used in 2 + 4 evaluations
    assert len(result.rows) == 2 and len(result.per_layer) == 4
    row = result.rows[0]
    assert row["label"] == "kmeans b2" and 14 < row["dense_ratio"] <= 16
    assert row["top1"] is not None and 0 <= row["top1_agreement"] <= 1


def test_grid_file_expands_lists_and_rejects_typos(tmp_path):
    from onnxvq.sweep import label, load_grid

    path = tmp_path / "grid.yaml"
    path.write_text("settings:\n  - {method: pq, bits: 3, dim: [1, 2], axis: [in, out]}\n"
                    "  - {method: svd, rank: 4}\nper_layer: [svd]\nmin_elements: 0\n")
    grid = load_grid(path)
    assert [label(c) for c in grid.configs] == ["pq b3 d1 in", "pq b3 d1 out", "pq b3 d2 in", "pq b3 d2 out",
                                                "svd r4"]
    assert [label(c) for c in grid.per_layer_configs()] == ["svd r4"]
    default = load_grid(None)
    labels = [label(c) for c in default.configs]
    for wanted in ["kmeans b1", "kmeans b5", "pq b3 d4 in", "pq b3 d1 out", "binary", "svd x8", "rq b3 d4 t2 out"]:
        assert wanted in labels
    path.write_text("settings:\n  - {method: pq, bitz: 3}\n")
    with pytest.raises(ConfigError, match="bitz"):
        load_grid(path)
    path.write_text("setings: []\n")
    with pytest.raises(ConfigError, match="setings"):
        load_grid(path)


def test_sweep_cli_writes_csv_json_and_plots(convnet, tmp_path):
    model, data, _ = convnet
    grid = tmp_path / "g.yaml"
    grid.write_text("settings:\n  - {method: kmeans, bits: [2, 4]}\n  - {method: pq, bits: 3, dim: 2, axis: out}\n"
                    "  - {method: binary}\nmin_elements: 0\nop_types: [Gemm, MatMul]\n")
    out = tmp_path / "sweep"
    r = invoke("sweep", model, "--data", data, "--out", out, "--grid", grid, "--quiet")
    assert r.exit_code == 0, r.output
    rows = list(csv.DictReader((out / "sweep.csv").open()))
    kinds = [row["kind"] for row in rows]
    assert kinds.count("baseline") == 1 and kinds.count("model") == 4 and kinds.count("layer") == 8
    model_rows = [row for row in rows if row["kind"] == "model"]
    for row in model_rows:
        assert float(row["dense_ratio"]) > 1 and float(row["file_ratio"]) > 1 and row["top1_agreement"]
    report = json.loads((out / "sweep.json").read_text())
    assert report["metric"] == "top1" and report["pareto"] and report["op_check"]["max_abs_diff"] < 1e-3
    try:
        import matplotlib  # noqa: F401
    except ImportError:
        assert "matplotlib" in report["plots_skipped"]
    else:
        assert (out / "accuracy_vs_rate.png").stat().st_size > 1000 and (out / "per_layer.png").exists()


def test_sweep_without_matplotlib_still_writes_tables(convnet, tmp_path, monkeypatch):
    import builtins

    model, data, _ = convnet
    real_import = builtins.__import__

    def no_matplotlib(name, *args, **kwargs):
        if name.startswith("matplotlib"):
            raise ImportError("No module named 'matplotlib'")
        return real_import(name, *args, **kwargs)

    monkeypatch.setattr(builtins, "__import__", no_matplotlib)
    grid = tmp_path / "g.json"
    grid.write_text(json.dumps({"settings": [{"method": "kmeans", "bits": 3}], "per_layer": False,
                                "min_elements": 0}))
    r = invoke("sweep", model, "--data", data, "--out", tmp_path / "s", "--grid", grid, "--quiet")
    assert r.exit_code == 0, r.output
    assert "plots skipped" in r.output and (tmp_path / "s" / "sweep.csv").exists()
    assert not (tmp_path / "s" / "accuracy_vs_rate.png").exists()


def test_sweep_on_unlabeled_data_uses_agreement(tmp_path):
    model = builders.mlp_model(k=64, hidden=48)
    path = tmp_path / "mlp.onnx"
    onnx.save(model, path)
    np.savez(tmp_path / "d.npz", x=np.random.default_rng(0).standard_normal((16, 3, 64)).astype(np.float32))
    from onnxvq.sweep import Grid, run_sweep

    result = run_sweep(model, load_dataset(model, tmp_path / "d.npz"),
                       Grid([KMeansConfig(bits=3)], per_layer=False, min_elements=0))
    assert result.metric == "top1_agreement" and result.rows[0]["top1"] is None
    assert result.rows[0]["top1_agreement"] > 0.5
    assert isinstance(result.baseline, dict) and isinstance(Dataset, type)


# ---------------------------------------------------------------- embedding outputs

def sentence_encoder(table, w):
    """Gather(table) -> MatMul(w) -> Tanh -> mean over attention_mask -> L2 normalize, like a tiny
    sentence-transformers model: inputs input_ids/attention_mask int64 [batch, seq]."""
    i64 = TensorProto.INT64
    nodes = [helper.make_node("Gather", ["table", "input_ids"], ["e"], name="embed"),
             helper.make_node("MatMul", ["e", "w"], ["h0"], name="proj"),
             helper.make_node("Tanh", ["h0"], ["h"]),
             helper.make_node("Cast", ["attention_mask"], ["m"], to=TensorProto.FLOAT),
             helper.make_node("Unsqueeze", ["m", "axis2"], ["m3"]),
             helper.make_node("Mul", ["h", "m3"], ["hm"]),
             helper.make_node("ReduceSum", ["hm", "axis1"], ["s"], keepdims=0),
             helper.make_node("ReduceSum", ["m3", "axis1"], ["c"], keepdims=0),
             helper.make_node("Div", ["s", "c"], ["pooled"]),
             helper.make_node("LpNormalization", ["pooled"], ["sentence_embedding"], axis=1, p=2)]
    graph = helper.make_graph(
        nodes, "encoder",
        [helper.make_tensor_value_info("input_ids", i64, ["batch", "seq"]),
         helper.make_tensor_value_info("attention_mask", i64, ["batch", "seq"])],
        [helper.make_tensor_value_info("sentence_embedding", TensorProto.FLOAT, ["batch", w.shape[1]])],
        [numpy_helper.from_array(table, "table"), numpy_helper.from_array(w, "w"),
         numpy_helper.from_array(np.array([2], np.int64), "axis2"),
         numpy_helper.from_array(np.array([1], np.int64), "axis1")])
    return builders._model(graph)


@pytest.fixture(scope="module")
def encoders(tmp_path_factory):
    """The encoder, a slightly and a strongly perturbed copy, and 60 padded 'sentences'."""
    folder = tmp_path_factory.mktemp("encoder")
    rng = np.random.default_rng(3)
    table, w = builders.rand(rng, 50, 16), builders.rand(rng, 16, 12, scale=0.4)
    paths = {}
    for name, noise in (("original", 0.0), ("slight", 0.02), ("strong", 0.6)):
        t = table + noise * builders.rand(rng, *table.shape)
        v = w + noise * 0.4 * builders.rand(rng, *w.shape)
        paths[name] = folder / f"{name}.onnx"
        onnx.save(sentence_encoder(t, v), paths[name])
    lengths = rng.integers(2, 9, size=60)
    ids = np.zeros((60, 8), np.int64)
    mask = (np.arange(8)[None] < lengths[:, None]).astype(np.int64)
    ids[mask == 1] = rng.integers(1, 50, size=int(mask.sum()))
    np.savez(folder / "sentences.npz", input_ids=ids, attention_mask=mask, text=np.array([f"s{i}" for i in range(60)]))
    return paths, folder / "sentences.npz"


def test_embedding_agreement_math():
    from onnxvq.evaluate import embedding_agreement, nearest_neighbours

    # three pairs of close vectors: (0, 1) along x, (2, 3) along y, (4, 5) along z
    ref = np.array([[1, 0, 0], [0.9, 0.1, 0], [0, 1, 0], [0.1, 0.9, 0], [0, 0, 1], [0, 0.1, 0.9]], np.float32)
    same = embedding_agreement(ref, ref * 3)  # scale does not matter to a cosine
    assert same["cosine_mean"] == pytest.approx(1) and same["cosine_min"] == pytest.approx(1)
    assert same["nn_agreement"] == 1.0 and same["nn_matches"] == 6
    assert nearest_neighbours(ref).tolist() == [1, 0, 3, 2, 5, 4]
    cand = ref.copy()
    cand[1] = [0.3, 0, 1]  # input 1 moves next to 4, though less close to it than 5 is
    r = embedding_agreement(ref, cand)
    cos1 = 0.9 * 0.3 / (np.hypot(0.9, 0.1) * np.hypot(0.3, 1.0))
    assert r["cosine_min"] == pytest.approx(cos1, rel=1e-6) and r["cosine_min_index"] == 1
    assert r["cosine_mean"] == pytest.approx((5 + cos1) / 6, rel=1e-6)
    # only input 1 changes its nearest neighbour (0 -> 4); 0 still finds 1 nearest, 4 and 5 each other
    assert nearest_neighbours(cand).tolist() == [1, 4, 3, 2, 5, 4]
    assert r["nn_agreement"] == pytest.approx(5 / 6) and r["nn_matches"] == 5
    # blockwise search gives the same neighbours as one block
    big = np.random.default_rng(0).standard_normal((50, 7))
    assert (nearest_neighbours(big, block=3) == nearest_neighbours(big)).all()
    assert embedding_agreement(ref[:1], cand[:1])["nn_agreement"] is None


def test_auto_task_picks_embedding_only_for_unlabeled_unit_vectors():
    from onnxvq.evaluate import resolve_task

    unit = np.random.default_rng(0).standard_normal((4, 6)).astype(np.float32)
    unit /= np.linalg.norm(unit, axis=1, keepdims=True)
    logits = np.arange(16, dtype=np.float32).reshape(4, 4)
    assert resolve_task("auto", unit, None) == "embedding"
    assert resolve_task("auto", unit, np.array([0, 1, -1, 2])) == "classify"
    assert resolve_task("auto", unit, np.full(4, -1)) == "embedding"  # -1 = unlabeled
    assert resolve_task("auto", logits, None) == "classify"
    assert resolve_task("auto", logits, None, "image_embeds") == "embedding"
    assert resolve_task("auto", unit[None], None) == "classify"  # 3-D: a sequence output
    confident = np.array([[0.9999, 0.0001, 0, 0], [0, 0, 0.00005, 0.99995]], np.float32)  # softmax, norm ~1
    assert resolve_task("auto", confident, None) == "classify"
    assert resolve_task("auto", np.eye(4, dtype=np.float32), None) == "classify"  # one-hot: probabilities
    assert resolve_task("embedding", logits, None) == "embedding"
    with pytest.raises(ConfigError):
        resolve_task("regress", unit, None)


def test_eval_embedding_identical_model_scores_perfectly(encoders):
    paths, data = encoders
    r = invoke("eval", paths["original"], "--data", data, "--against", paths["original"], "--json", "-")
    assert r.exit_code == 0, r.output
    res = json.loads(r.output)["result"]
    assert res["task"] == "embedding" and res["embedding_dim"] == 12  # picked by auto
    assert res["cosine_mean"] == pytest.approx(1, abs=1e-6) and res["cosine_min"] == pytest.approx(1, abs=1e-6)
    assert res["nn_agreement"] == 1.0 and res["nn_matches"] == 60 and res["top1"] is None
    assert "top1_agreement" not in res


def test_eval_embedding_perturbed_models_score_lower(encoders):
    paths, data = encoders
    slight = json.loads(invoke("eval", paths["slight"], "--data", data, "--against", paths["original"],
                               "--task", "embedding", "--json", "-").output)["result"]
    strong = json.loads(invoke("eval", paths["strong"], "--data", data, "--against", paths["original"],
                               "--json", "-").output)["result"]
    assert 0.99 < slight["cosine_mean"] < 1 - 1e-5 and slight["cosine_min"] < slight["cosine_mean"]
    assert strong["cosine_mean"] < slight["cosine_mean"] - 0.05 and strong["cosine_min"] < strong["cosine_mean"]
    assert strong["nn_agreement"] < 0.9 and strong["nn_agreement"] <= slight["nn_agreement"]
    assert strong["nn_matches"] == round(strong["nn_agreement"] * 60)
    r = invoke("eval", paths["strong"], "--data", data, "--against", paths["original"])
    assert r.exit_code == 0 and "cosine to original" in r.output and "nearest-neighbour agreement" in r.output
    # --task classify keeps the argmax report on the same data
    r = json.loads(invoke("eval", paths["strong"], "--data", data, "--against", paths["original"],
                          "--task", "classify", "--json", "-").output)["result"]
    assert r["task"] == "classify" and "top1_agreement" in r and "cosine_mean" not in r


def test_eval_embedding_without_reference_says_what_to_pass(encoders):
    paths, data = encoders
    r = invoke("eval", paths["original"], "--data", data)
    assert r.exit_code == 0 and "--against" in r.output and "12 values" in r.output
