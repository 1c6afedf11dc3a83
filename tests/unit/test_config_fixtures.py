"""Triton's config rules, case by case: every directory under tests/fixtures/config is a model
repository holding one model, with either `expected.pbtxt` (the normalized config Triton would
serve on a machine without GPUs) or `expected_error.txt` (a text the load error must contain),
and optionally `options.json` (ConfigOptions fields)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from google.protobuf import text_format

from pyserve.config import ConfigError, ConfigOptions, model_config, parse_config_json
from pyserve.protocol import pb

FIXTURES = Path(__file__).resolve().parent.parent / "fixtures" / "config"
CASES = sorted(p for p in FIXTURES.iterdir() if p.is_dir() and not p.name.startswith(("_", ".")))


def _model_dir(case: Path) -> Path:
    (model,) = [p for p in case.iterdir() if p.is_dir()]
    return model


def _options(case: Path) -> ConfigOptions:
    path = case / "options.json"
    return ConfigOptions(**json.loads(path.read_text())) if path.is_file() else ConfigOptions()


@pytest.mark.parametrize("case", CASES, ids=[c.name for c in CASES])
def test_fixture(case: Path):
    expected_path, error_path = case / "expected.pbtxt", case / "expected_error.txt"
    assert expected_path.is_file() != error_path.is_file(), "one of expected / expected_error"
    if error_path.is_file():
        with pytest.raises(ConfigError) as error:
            model_config(_model_dir(case), _options(case))
        assert error_path.read_text().strip() in error.value.message
        return
    config = model_config(_model_dir(case), _options(case))
    expected = text_format.Parse(expected_path.read_text(), pb.ModelConfig())
    assert config == expected, (
        f"got:\n{text_format.MessageToString(config)}\n"
        f"expected:\n{text_format.MessageToString(expected)}")


def test_there_are_enough_cases():
    assert len(CASES) >= 20


def test_override_replaces_the_file(tmp_path):
    model = tmp_path / "m"
    model.mkdir()
    (model / "config.pbtxt").write_text('platform: "onnxruntime_onnx" max_batch_size: 8')
    override = parse_config_json(
        '{"backend": "onnxruntime", "max_batch_size": 2, "input": [{"name": "A", '
        '"data_type": "TYPE_FP32", "dims": [3]}], "output": [{"name": "B", '
        '"data_type": "type_fp32", "dims": ["3"]}]}')
    config = model_config(model, ConfigOptions(), override)
    assert config.max_batch_size == 2 and config.platform == "onnxruntime_onnx"
    assert config.name == "m"


def test_override_is_validated(tmp_path):
    model = tmp_path / "m"
    model.mkdir()
    with pytest.raises(ConfigError) as error:
        override = parse_config_json('{"name": "x", "backend": "onnxruntime"}')
        model_config(model, ConfigOptions(), override)
    assert "unexpected directory name 'm' for model 'x'" in error.value.message


def test_gpu_machine_fills_gpus(tmp_path):
    model = tmp_path / "g"
    model.mkdir()
    (model / "config.pbtxt").write_text(
        'platform: "onnxruntime_onnx"\ninput { name: "A" data_type: TYPE_FP32 dims: 1 }\n'
        'output { name: "B" data_type: TYPE_FP32 dims: 1 }\n'
        'instance_group { kind: KIND_GPU count: 1 }\ninstance_group { gpus: [ 1 ] }')
    config = model_config(model, ConfigOptions(gpu_count=2))
    first, second = config.instance_group
    assert list(first.gpus) == [0, 1] and first.kind == first.Kind.Value("KIND_GPU")
    assert list(second.gpus) == [1] and second.kind == second.Kind.Value("KIND_GPU")
    assert second.count == 1  # the two-CPU-instance default is for KIND_CPU only
    with pytest.raises(ConfigError) as error:
        model_config(model, ConfigOptions(gpu_count=1))
    # gpu 1 is absent: KIND_AUTO falls back to CPU, which may not list GPUs
    assert "has kind KIND_CPU but specifies one or more GPUs" in error.value.message


def test_invalid_gpu_id(tmp_path):
    model = tmp_path / "g"
    model.mkdir()
    (model / "config.pbtxt").write_text(
        'backend: "onnxruntime"\ninput { name: "A" data_type: TYPE_FP32 dims: 1 }\n'
        'output { name: "B" data_type: TYPE_FP32 dims: 1 }\n'
        'instance_group { kind: KIND_GPU gpus: [ 3 ] }')
    with pytest.raises(ConfigError) as error:
        model_config(model, ConfigOptions(gpu_count=2))
    assert error.value.message == (
        "instance group g_0 of model g specifies invalid or unsupported gpu id 3. GPUs with at "
        "least the minimum required CUDA compute compatibility of 6.000000 are: 0, 1")


# --- parse_config_json ----------------------------------------------------------------------

def test_json_enums_are_case_insensitive():
    config = parse_config_json(
        '{"instance_group": [{"kind": "kind_cpu"}], "input": [{"name": "a", '
        '"data_type": "Type_Int64", "format": "format_nchw"}], '
        '"dynamic_batching": {"default_queue_policy": {"timeout_action": "delay"}, '
        '"priority_queue_policy": {"1": {"timeout_action": "Reject"}}}}')
    assert config.instance_group[0].kind == pb.ModelInstanceGroup.Kind.Value("KIND_CPU")
    assert config.input[0].data_type == 9 and config.input[0].format == 2
    assert config.dynamic_batching.default_queue_policy.timeout_action == 1
    assert config.dynamic_batching.priority_queue_policy[1].timeout_action == 0
    sequence = parse_config_json(
        '{"sequence_batching": {"control_input": [{"name": "s", "control": '
        '[{"kind": "control_sequence_end", "data_type": "type_bool"}]}]}}').sequence_batching
    assert sequence.control_input[0].control[0].kind == 2
    assert sequence.control_input[0].control[0].data_type == 1


def test_json_numbers_may_be_strings():
    config = parse_config_json(
        '{"max_batch_size": "16", "input": [{"name": "a", "dims": ["-1", 3]}], '
        '"dynamic_batching": {"max_queue_delay_microseconds": "100", "priority_levels": 2}}')
    assert config.max_batch_size == 16
    assert list(config.input[0].dims) == [-1, 3]
    assert config.dynamic_batching.max_queue_delay_microseconds == 100


def test_json_camel_case_names_are_accepted():
    assert parse_config_json('{"maxBatchSize": 3}').max_batch_size == 3


@pytest.mark.parametrize("text, fragment", [
    ('{"bogus": 1}', 'no field named "bogus"'),
    ('{"input": [{"name": "a", "bogus": 1}]}', 'no field named "bogus"'),
    ('{"input": [{"data_type": "TYPE_NOPE"}]}', "TYPE_NOPE"),
    ('{"max_batch_size": ', ""),
    ('[1, 2]', ""),
])
def test_json_errors(text, fragment):
    with pytest.raises(ConfigError) as error:
        parse_config_json(text)
    assert error.value.message.startswith("Invalid config override: ")
    assert fragment in error.value.message
