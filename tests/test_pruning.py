"""Pruning into a zero codeword (quantizers/pruning.py), data-free and data-aware (OBS)."""
from __future__ import annotations

import json

import numpy as np
import onnx
import pytest
from click.testing import CliRunner

from onnxvq.cli import main
from onnxvq.config import ConfigError, KMeansConfig, PQConfig, RQConfig, build_plan, make_method_config
from onnxvq.quantizers import quantize
from onnxvq.quantizers.base import quantize_data_aware, subvectors
from onnxvq.quantizers.pruning import ZERO_CODE, magnitude_keep, sparsity

from . import builders
from .test_data_aware import correlated_inputs, output_error, stats_from

PRUNED = [
    KMeansConfig(bits=4, prune=0.5), KMeansConfig(bits=3, group_size=1, codebook_dtype="float16", prune=0.7),
    KMeansConfig(bits=1, group_size=5, prune=0.4), PQConfig(bits=4, dim=4, prune=0.5),
    PQConfig(bits=3, dim=3, axis="out", codebook_dtype="float16", prune=0.6), RQConfig(bits=3, dim=2, stages=2, prune=0.3),
    RQConfig(bits=2, dim=5, stages=3, axis="out", prune=0.5),
]


def _units(config, weight):
    dim = getattr(config, "dim", 1)
    return subvectors(weight, dim, getattr(config, "axis", "in"))  # [S, R, d]


def _label(config):
    return "-".join(f"{v}" for v in config.options().values())


@pytest.mark.parametrize("config", PRUNED, ids=_label)
def test_zero_codeword_decodes_to_exact_zeros_and_covers_the_pruned_units(config):
    rng = np.random.default_rng(3)
    weight = rng.normal(size=(45, 38)).astype(np.float32)  # odd: padded subspaces, short groups
    enc = quantize(weight, config, 0)
    assert enc.zero_codeword
    assert np.all(enc.codebooks[:, :, :, ZERO_CODE] == 0)  # every stage, subspace and row group
    along = 0 if getattr(config, "axis", "in") == "out" else 1
    keep = magnitude_keep(_units(config, weight), config.prune, outputs_along=along)  # [S, R]
    pruned_codes = enc.codes.transpose(0, 2, 1)[:, ~keep]  # [T, pruned units]
    assert np.all(pruned_codes == ZERO_CODE)
    # The same share of every output (row of M for axis in, subspace for axis out).
    per_output = (~keep).sum(axis=1 - along)
    assert np.all(per_output == round(config.prune * keep.shape[1 - along]))
    w_hat = enc.decode()
    # The pruned units decode to exact zeros: the decoded weight is at least that sparse.
    units_hat = _units(config, w_hat)
    assert np.all(units_hat[~keep] == 0)
    padded = (~keep).sum() * units_hat.shape[2] - (units_hat.size - w_hat.size)
    assert sparsity(w_hat) * w_hat.size >= padded


def test_magnitude_pruning_removes_the_smallest_weights_of_every_output():
    rng = np.random.default_rng(4)
    # Outputs whose scales differ 1000x (a BatchNorm-folded conv): each still keeps 40% of its weights.
    weight = (rng.normal(size=(64, 32)) * np.logspace(-3, 0, 32)[None, :]).astype(np.float32)
    keep = magnitude_keep(weight[..., None], 0.6)  # [K, N]: units along K, outputs along N
    assert np.all(keep.sum(axis=0) == round(0.4 * 64))
    for n in range(32):
        assert np.abs(weight[~keep[:, n], n]).max() <= np.abs(weight[keep[:, n], n]).min()


def test_unpruned_kept_weights_still_fit_well():
    """The codewords are fitted to the kept weights: the error on them is small."""
    rng = np.random.default_rng(5)
    weight = rng.normal(size=(128, 64)).astype(np.float32)
    enc = quantize(weight, KMeansConfig(bits=5, prune=0.5), 0)
    keep = magnitude_keep(weight[..., None], 0.5)  # [K, N]
    kept_err = np.linalg.norm((enc.decode() - weight)[keep]) / np.linalg.norm(weight[keep])
    plain = quantize(weight, KMeansConfig(bits=5), 0)
    assert kept_err < 2.5 * np.linalg.norm(plain.decode() - weight) / np.linalg.norm(weight)


@pytest.mark.parametrize("config", PRUNED, ids=_label)
def test_data_aware_pruning_beats_magnitude_pruning_and_keeps_the_zero_codeword(config):
    rng = np.random.default_rng(6)
    k_in, n_out = 43, 37
    weight = rng.normal(size=(k_in, n_out)).astype(np.float32)
    rows = correlated_inputs(rng, 3000, k_in)
    calib, held_out = rows[:1500], rows[1500:]
    free = quantize(weight, config, 0)
    fit = quantize_data_aware(weight, config, stats_from(calib), 0)
    enc = fit.encoded
    assert enc.zero_codeword and np.all(enc.codebooks[:, :, :, ZERO_CODE] == 0)
    for x in (calib, held_out):
        assert output_error(x, weight, enc.decode()) < output_error(x, weight, free.decode())
    # OBS pruning: about the asked share of units is coded 0 in every stage (kept ones may add a few).
    units_zero = np.all(enc.codes == ZERO_CODE, axis=0)  # [R, S]
    assert units_zero.mean() >= config.prune - 0.05


def test_prune_needs_a_zero_codeword_and_a_fraction():
    with pytest.raises(ConfigError, match="has no option"):
        make_method_config({"method": "binary", "prune": 0.5})
    with pytest.raises(ConfigError, match="prune must be a fraction"):
        KMeansConfig(prune=1.0)
    with pytest.raises(ConfigError, match="zero codeword"):
        build_plan(None, {"method": "svd", "rank": 4, "prune": 0.5}).options_for("n", "MatMul")
    plan = build_plan(None, {"prune": 0.3})
    assert plan.config_for("n", "Conv").prune == 0.3  # the per-kind defaults stay, pruned
    assert plan.config_for("n", "Conv").bits == 5


def test_unpruned_options_read_as_before():
    assert "prune" not in KMeansConfig().options()
    assert KMeansConfig(prune=0.25).options()["prune"] == 0.25


def test_cli_prune_reports_sparsity_and_the_file_runs(tmp_path):
    src, out, report = tmp_path / "m.onnx", tmp_path / "o.onnx", tmp_path / "r.json"
    onnx.save(builders.mlp_model(k=128, hidden=96), src)
    before = src.read_bytes()
    result = CliRunner().invoke(main, ["compress", str(src), "-o", str(out), "--method", "kmeans", "--bits", "4",
                                       "--prune", "0.6", "--json", str(report), "-q"], catch_exceptions=False)
    assert result.exit_code == 0, result.output
    assert src.read_bytes() == before
    data = json.loads(report.read_text())
    assert data["pruning"]["sparsity"] >= 0.6
    rows = [r for r in data["layers"] if not r.get("skipped_reason")]
    assert rows and all(r["sparsity"] >= 0.6 and r["options"]["prune"] == 0.6 for r in rows)
    assert data["archive_sizes"]["zstd19"] < data["archive_sizes"]["file"]
    assert data["parity"]["cosine"] > 0.5  # the check ran the written file against the original


def test_config_prunes_per_op_type(tmp_path):
    src, out, report, cfg = tmp_path / "m.onnx", tmp_path / "o.onnx", tmp_path / "r.json", tmp_path / "c.yaml"
    onnx.save(builders.cnn_model(), src)
    cfg.write_text("method: kmeans\nbits: 4\nop_types:\n  Conv: {prune: 0.5}\nprotect: []\nmin_elements: 16\n")
    result = CliRunner().invoke(main, ["compress", str(src), "-o", str(out), "--config", str(cfg), "--json",
                                       str(report), "-q", "--no-check"], catch_exceptions=False)
    assert result.exit_code == 0, result.output
    rows = [r for r in json.loads(report.read_text())["layers"] if not r.get("skipped_reason")]
    assert {r["op_type"] for r in rows} >= {"Conv"}
    for r in rows:
        assert (r["sparsity"] is not None and r["sparsity"] >= 0.44) == (r["op_type"] == "Conv")  # 4 of 9 per output


def test_a_budget_refuses_pruning_rather_than_dropping_it(tmp_path):
    src, calib = tmp_path / "m.onnx", tmp_path / "c.npz"
    onnx.save(builders.mlp_model(k=128, hidden=96), src)
    np.savez(calib, x=np.random.default_rng(0).normal(size=(16, 128)).astype(np.float32))
    result = CliRunner().invoke(main, ["compress", str(src), "-o", str(tmp_path / "o.onnx"), "--prune", "0.5",
                                       "--calibration", str(calib), "--target-ratio", "4"])
    assert result.exit_code != 0 and "do not combine" in result.output
    assert not (tmp_path / "o.onnx").exists()
