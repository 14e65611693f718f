import json

import pytest

from onnxvq.config import KMeansConfig, PQConfig, SVDConfig, build_plan, load_config_file, make_method_config
from onnxvq.errors import ConfigError


def test_precedence_node_over_op_type_over_global():
    plan = build_plan({"method": "pq", "bits": 8, "dim": 4,
                       "op_types": {"Gemm": {"bits": 4}},
                       "nodes": {"fc2": {"method": "kmeans", "bits": 3}, "fc3": {"dim": 2}}})
    assert plan.config_for("fc1", "MatMul") == PQConfig(bits=8, dim=4)
    assert plan.config_for("fc1", "Gemm") == PQConfig(bits=4, dim=4)
    assert plan.config_for("fc2", "Gemm") == KMeansConfig(bits=3)  # a new method starts from its defaults
    assert plan.config_for("fc3", "Gemm") == PQConfig(bits=4, dim=2)  # node layered on op type


def test_cli_flags_override_the_file_global_section():
    plan = build_plan({"method": "pq", "bits": 8, "dim": 4, "min_elements": 10}, {"bits": 6, "dim": None})
    assert plan.config_for("x", "MatMul") == PQConfig(bits=6, dim=4)
    assert plan.min_elements == 10


def test_skip_and_patterns():
    plan = build_plan({"method": "svd", "rank": 4, "nodes": {"head": {"method": "skip"}},
                       "include": ["^fc"], "exclude": ["fc9"]})
    assert plan.config_for("head", "Gemm") is None
    assert plan.config_for("fc1", "Gemm") == SVDConfig(rank=4)
    assert plan.selected("fc1") and not plan.selected("fc9") and not plan.selected("conv")


@pytest.mark.parametrize("options,message", [
    ({"method": "pq", "bits": 9}, "bits"), ({"method": "nope"}, "unknown method"),
    ({"method": "kmeans", "dim": 4}, "no option"), ({"method": "svd"}, "rank"),
    ({"method": "pq", "axis": "sideways"}, "axis"), ({"method": "pq", "codebook_dtype": "int8"}, "codebook_dtype"),
])
def test_invalid_options_are_config_errors(options, message):
    with pytest.raises(ConfigError, match=message):
        make_method_config(options)


def test_errors_in_overrides_name_the_section():
    with pytest.raises(ConfigError, match="'fc1'"):
        build_plan({"method": "pq", "nodes": {"fc1": {"bits": 0}}})


def test_config_files_yaml_and_json(tmp_path):
    (tmp_path / "c.yaml").write_text("method: kmeans\nbits: 5\nnodes:\n  fc: {method: skip}\n")
    (tmp_path / "c.json").write_text(json.dumps({"method": "binary", "scaled": False}))
    (tmp_path / "bad.yaml").write_text("method: [unclosed\n")
    assert build_plan(load_config_file(tmp_path / "c.yaml")).config_for("x", "MatMul") == KMeansConfig(bits=5)
    assert build_plan(load_config_file(tmp_path / "c.json")).config_for("x", "MatMul").scaled is False
    with pytest.raises(ConfigError, match="cannot parse"):
        load_config_file(tmp_path / "bad.yaml")
    with pytest.raises(ConfigError, match="cannot read"):
        load_config_file(tmp_path / "missing.yaml")
