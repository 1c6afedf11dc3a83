"""Read `config.pbtxt` into Triton's ModelConfig message, validate it and normalize it the way
Triton does, so that ModelConfig (gRPC) and GET .../config (HTTP) return what Triton would."""

from __future__ import annotations

from pathlib import Path

from google.protobuf import json_format, text_format

from pyserve.errors import ServerError
from pyserve.protocol import pb

CONFIG_FILENAME = "config.pbtxt"

# Backends whose CPU instance groups default to two instances (Triton's rule).
_TWO_CPU_INSTANCES = {"onnxruntime", "tensorflow"}

_PLATFORM_BACKEND = {
    "onnxruntime_onnx": "onnxruntime",
    "pytorch_libtorch": "pytorch",
    "torch_aoti": "pytorch",
    "tensorrt_plan": "tensorrt",
    "tensorflow_savedmodel": "tensorflow",
    "tensorflow_graphdef": "tensorflow",
}
_DEFAULT_FILENAME = {
    "onnxruntime": "model.onnx",
    "pytorch": "model.pt",
    "tensorrt": "model.plan",
    "tensorflow": "model.savedmodel",
    "python": "model.py",
    "openvino": "model.xml",
}


class ConfigError(ServerError):
    """An invalid model configuration (the model fails to load, the server keeps running)."""


def parse_config(text: str, source: str = CONFIG_FILENAME) -> pb.ModelConfig:
    """Parse protobuf text format; errors name the source, line and column."""
    config = pb.ModelConfig()
    try:
        text_format.Parse(text, config)
    except text_format.ParseError as e:
        where = f"{source}:{e.GetLine()}:{e.GetColumn()}" if e.GetLine() else source
        raise ConfigError(f"failed to parse {where}: {e}") from None
    return config


def load_config(model_dir: Path) -> pb.ModelConfig:
    path = model_dir / CONFIG_FILENAME
    if not path.is_file():
        raise ConfigError(f"failed to load model '{model_dir.name}': no {CONFIG_FILENAME}")
    return parse_config(path.read_text(), str(path))


def normalize(config: pb.ModelConfig, model_name: str, gpu_count: int = 0) -> pb.ModelConfig:
    """Validate `config` for the model directory `model_name` and fill Triton's defaults."""
    config = _copy(config)
    if config.name and config.name != model_name:
        raise ConfigError(
            f"unexpected 'name' field in model configuration: '{config.name}', "
            f"expected '{model_name}' (the model directory name)")
    config.name = model_name
    if config.max_batch_size < 0:
        raise ConfigError(f"'max_batch_size' must be non-negative value for {model_name}")

    backend = _PLATFORM_BACKEND.get(config.platform, "")
    if not config.platform and not config.backend:
        raise ConfigError(f"must specify 'platform' or 'backend' for '{model_name}'")
    if not config.backend:
        config.backend = backend
    if not config.default_model_filename:
        config.default_model_filename = _DEFAULT_FILENAME.get(config.backend, "")

    if not config.HasField("version_policy"):
        config.version_policy.latest.num_versions = 1

    if config.HasField("dynamic_batching"):
        batching = config.dynamic_batching
        if not batching.preferred_batch_size and config.max_batch_size > 0:
            batching.preferred_batch_size.append(config.max_batch_size)
        for size in batching.preferred_batch_size:
            if size < 1 or size > max(config.max_batch_size, 1):
                raise ConfigError(
                    f"dynamic batching preferred size must be <= max batch size for {model_name}")

    config.optimization.input_pinned_memory.enable = True
    config.optimization.output_pinned_memory.enable = True
    _normalize_instance_groups(config, gpu_count)
    return config


def _normalize_instance_groups(config: pb.ModelConfig, gpu_count: int) -> None:
    group_kind = pb.ModelInstanceGroup.Kind
    if not config.instance_group:
        group = config.instance_group.add()
        group.name = config.name
    for index, group in enumerate(config.instance_group):
        if not group.name:
            group.name = f"{config.name}_{index}"
        if group.kind == group_kind.Value("KIND_AUTO"):
            group.kind = group_kind.Value("KIND_GPU" if gpu_count else "KIND_CPU")
        if group.kind == group_kind.Value("KIND_GPU"):
            if gpu_count == 0:
                raise ConfigError(
                    f"instance group {group.name} of model {config.name} has kind KIND_GPU "
                    "but no GPUs are available")
            if not group.gpus:
                group.gpus.extend(range(gpu_count))
            for gpu in group.gpus:
                if gpu < 0 or gpu >= gpu_count:
                    raise ConfigError(
                        f"instance group {group.name} of model {config.name} specifies invalid "
                        f"or unsupported gpu id {gpu}")
        elif group.gpus:
            raise ConfigError(
                f"instance group {group.name} of model {config.name} has kind "
                f"{group_kind.Name(group.kind)} but specifies one or more GPUs")
        if group.count < 1:
            two = group.kind == group_kind.Value("KIND_CPU") and config.backend in _TWO_CPU_INSTANCES
            group.count = 2 if two else 1


def _copy(config: pb.ModelConfig) -> pb.ModelConfig:
    out = pb.ModelConfig()
    out.CopyFrom(config)
    return out


# 64-bit fields that Triton prints as JSON numbers rather than protobuf's strings, as paths of
# keys; "*" walks every element of a list or every value of a map.
_NUMERIC_INT64_PATHS = [
    ("input", "*", "dims"), ("input", "*", "reshape", "shape"),
    ("output", "*", "dims"), ("output", "*", "reshape", "shape"),
    ("version_policy", "specific", "versions"),
    ("dynamic_batching", "max_queue_delay_microseconds"),
    ("dynamic_batching", "priority_levels"),
    ("dynamic_batching", "default_priority_level"),
    ("dynamic_batching", "default_queue_policy", "default_timeout_microseconds"),
    ("dynamic_batching", "priority_queue_policy", "*", "default_timeout_microseconds"),
    ("sequence_batching", "max_sequence_idle_microseconds"),
    ("sequence_batching", "direct", "max_queue_delay_microseconds"),
    ("sequence_batching", "oldest", "max_queue_delay_microseconds"),
    ("sequence_batching", "state", "*", "dims"),
    ("ensemble_scheduling", "step", "*", "model_version"),
    ("model_warmup", "*", "inputs", "*", "dims"),
]


def config_to_json(config: pb.ModelConfig) -> dict:
    """ModelConfig as Triton's HTTP config endpoint prints it (field names as in the proto,
    defaults included, listed 64-bit fields as numbers)."""
    try:
        doc = json_format.MessageToDict(
            config, preserving_proto_field_name=True, always_print_fields_with_no_presence=True)
    except TypeError:  # protobuf < 5.26 names the option differently
        doc = json_format.MessageToDict(
            config, preserving_proto_field_name=True, including_default_value_fields=True)
    for path in _NUMERIC_INT64_PATHS:
        doc = _to_numbers(doc, path)
    return doc


def _to_numbers(node: object, path: tuple) -> object:
    if not path:
        if isinstance(node, list):
            return [int(v) for v in node]
        return int(node) if isinstance(node, str) else node
    key, rest = path[0], path[1:]
    if key == "*":
        if isinstance(node, list):
            return [_to_numbers(v, rest) for v in node]
        if isinstance(node, dict):
            return {k: _to_numbers(v, rest) for k, v in node.items()}
    elif isinstance(node, dict) and key in node:
        node[key] = _to_numbers(node[key], rest)
    return node
