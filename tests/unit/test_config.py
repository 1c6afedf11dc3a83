"""config.pbtxt parsing, validation and Triton's normalization."""

from __future__ import annotations

import pytest

from pyserve.config import ConfigError, config_to_json, normalize, parse_config, read_config_file

SIMPLE = """
# Triton's example, in the forms real configs use
name: "simple"
platform: "onnxruntime_onnx"
max_batch_size : 8
input [ { name: "INPUT0", data_type: TYPE_INT32, dims: [ 16 ] } ]
input { name: "INPUT1"; data_type: TYPE_INT32; dims: [ 16 ] }
output [
  { name: "OUTPUT0" data_type: TYPE_INT32 dims: [ 16 ] },
  { name: "OUTPUT1" data_type: TYPE_INT32 dims: [ 16 ] }
]
dynamic_batching: { }
parameters { key: "x" value: { string_value: "5" } }
"""


def test_parse_and_normalize_like_triton():
    config = normalize(parse_config(SIMPLE), "simple")
    assert [i.name for i in config.input] == ["INPUT0", "INPUT1"]
    assert config.backend == "onnxruntime"
    assert config.default_model_filename == "model.onnx"
    assert config.version_policy.latest.num_versions == 1
    assert list(config.dynamic_batching.preferred_batch_size) == [8]
    assert config.optimization.input_pinned_memory.enable
    (group,) = config.instance_group
    assert (group.name, group.count) == ("simple", 2)  # onnxruntime CPU default is 2
    assert group.kind == group.Kind.Value("KIND_CPU")


def test_json_form_prints_int64_fields_as_numbers():
    config = normalize(parse_config(SIMPLE + "model_warmup { name: 'w' batch_size: 1 inputs { "
                                    "key: 'INPUT0' value { data_type: TYPE_INT32 dims: [16] "
                                    "zero_data: true } } }"), "simple")
    doc = config_to_json(config)
    assert doc["input"][0]["dims"] == [16]
    assert doc["dynamic_batching"]["max_queue_delay_microseconds"] == 0
    assert doc["dynamic_batching"]["preferred_batch_size"] == [8]
    assert doc["model_warmup"][0]["inputs"]["INPUT0"]["dims"] == [16]
    assert doc["max_batch_size"] == 8 and doc["name"] == "simple"


def test_parse_error_names_file_and_line():
    with pytest.raises(ConfigError) as error:
        parse_config('name: "m"\nplatform: "onnxruntime_onnx"\nbogus_field: 3\n', "m/config.pbtxt")
    assert error.value.message.startswith("failed to read text proto from m/config.pbtxt:3:1: ")
    assert "bogus_field" in error.value.message


@pytest.mark.parametrize("text, message", [
    ('platform: "onnxruntime_onnx" max_batch_size: -1', "'max_batch_size' must be non-negative"),
    ('max_batch_size: 1', "Invalid model name: Could not determine backend for model 'm'"),
    ('platform: "custom"', "unexpected platform type 'custom' for m"),
    ('platform: "onnxruntime_onnx" max_batch_size: 4 dynamic_batching { preferred_batch_size: 8 }',
     "dynamic batching preferred size must be <= max batch size"),
    ('name: "other" platform: "onnxruntime_onnx"',
     "unexpected directory name 'm' for model 'other', directory name must equal model name"),
    ('platform: "onnxruntime_onnx" instance_group { kind: KIND_GPU }', "no GPUs are available"),
])
def test_invalid_configs_are_refused(text, message):
    with pytest.raises(ConfigError) as error:
        normalize(parse_config(text), "m", gpu_count=0)
    assert message in error.value.message


@pytest.mark.parametrize("text, message", [
    ('instance_group { kind: 2147483648 }', "Value out of range: 2147483648"),
    ('input { name: "x" data_type: 99999999999 }', "Value out of range"),
], ids=["enum number past int32", "data_type number past int32"])
def test_enum_numbers_past_int32_are_config_errors(text, message):
    """protobuf's text format lets a ValueError out for these (found by fuzz/fuzz_config.py)."""
    with pytest.raises(ConfigError, match=message):
        parse_config(text)


def test_a_config_file_that_is_not_utf8_is_a_config_error(tmp_path):
    (tmp_path / "config.pbtxt").write_bytes(b'name: "m"\n\xc4')
    with pytest.raises(ConfigError, match="not UTF-8"):
        read_config_file(tmp_path / "config.pbtxt")


def test_model_name_with_backend_suffix_names_the_backend():
    config = normalize(parse_config("max_batch_size: 0"), "add.identity")
    assert (config.backend, config.default_model_filename, config.platform) == (
        "identity", "model.identity", "")
    assert config.instance_group[0].count == 1


def test_explicit_pinned_memory_setting_is_kept():
    config = normalize(parse_config(
        'platform: "onnxruntime_onnx" optimization { output_pinned_memory { enable: false } }'),
        "m")
    assert config.optimization.input_pinned_memory.enable
    assert not config.optimization.output_pinned_memory.enable
