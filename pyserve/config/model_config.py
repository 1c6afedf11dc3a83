"""Read `config.pbtxt` into Triton's ModelConfig message, validate it and normalize it the way
Triton does, so that ModelConfig (gRPC) and GET .../config (HTTP) return what Triton would.

The rules and the error texts follow Triton core's model_config_utils.cc (NormalizeModelConfig,
NormalizeInstanceGroup, ValidateModelConfig, ValidateInstanceGroup, ValidateModelIOConfig) and
model_repository_manager.cc; the texts are Triton's so that scripts matching on them keep working.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

from google.protobuf import json_format, text_format
from google.protobuf.descriptor import FieldDescriptor

from pyserve.errors import ServerError
from pyserve.protocol import pb

CONFIG_FILENAME = "config.pbtxt"
SEQUENCE_IDLE_DEFAULT_MICROSECONDS = 1_000_000
# Triton's default --min-supported-compute-capability (TRITON_MIN_COMPUTE_CAPABILITY), printed
# with std::to_string in the invalid-gpu message.
MIN_COMPUTE_CAPABILITY = 6.0
WILDCARD_DIM = -1

ENSEMBLE_PLATFORM = "ensemble"
TENSORRT_PLATFORM = "tensorrt_plan"

# Backends whose CPU instance groups default to two instances (SetDefaultInstanceCount).
_TWO_CPU_INSTANCES = {"onnxruntime", "tensorflow"}

# GetBackendType / GetBackendTypeFromPlatform: a known backend must be paired with one of its
# platforms (or none, which autofill completes first); unknown backends accept any platform.
_BACKEND_PLATFORMS = {
    "tensorflow": {"tensorflow_graphdef", "tensorflow_savedmodel"},
    "tensorrt": {"tensorrt_plan"},
    "onnxruntime": {"onnxruntime_onnx"},
    "pytorch": {"pytorch_libtorch", "libtorch", "torch_aoti"},
}


class ConfigError(ServerError):
    """An invalid model configuration (the model fails to load, the server keeps running)."""


# --- reading ------------------------------------------------------------------------------

_LOCATION = re.compile(r"^\d+:\d+ : ")


def parse_config(text: str, source: str = CONFIG_FILENAME) -> pb.ModelConfig:
    """Parse protobuf text format (what Triton's ReadTextProto accepts); errors name the source,
    line and column."""
    config = pb.ModelConfig()
    try:
        text_format.Parse(text, config)
    except text_format.ParseError as e:
        detail = _LOCATION.sub("", str(e))
        where = f"{source}:{e.GetLine()}:{e.GetColumn()}" if e.GetLine() else source
        raise ConfigError(f"failed to read text proto from {where}: {detail}") from None
    except ValueError as e:  # upb's own, e.g. an enum given as a number past int32
        raise ConfigError(f"failed to read text proto from {source}: {e}") from None
    return config


def read_config_file(path: Path) -> pb.ModelConfig:
    try:
        data = path.read_bytes()
    except OSError as e:
        raise ConfigError(
            f"failed to open text file for read {path}: {e.strerror or e}") from None
    try:
        text = data.decode("utf-8")  # protobuf's text format is UTF-8, whatever the locale
    except UnicodeDecodeError as e:
        raise ConfigError(f"failed to read text proto from {path}: not UTF-8 ({e})") from None
    return parse_config(text, str(path))


def load_config(model_dir: Path) -> pb.ModelConfig:
    """config.pbtxt of `model_dir`, parsed but not normalized."""
    return read_config_file(Path(model_dir) / CONFIG_FILENAME)


def parse_config_json(text: str) -> pb.ModelConfig:
    """A load-API config override (Triton's JsonToModelConfig: enums case-insensitive, unknown
    fields rejected, 64-bit integers as numbers or strings)."""
    try:
        doc = json.loads(text)
    except (ValueError, TypeError) as e:
        raise ConfigError(f"Invalid config override: {e}") from None
    config = pb.ModelConfig()
    try:
        if not isinstance(doc, dict):
            raise json_format.ParseError(
                f"Expected a JSON object for {config.DESCRIPTOR.full_name}, "
                f"got {type(doc).__name__}")
        _fold_enum_case(doc, config.DESCRIPTOR)
        json_format.ParseDict(doc, config, ignore_unknown_fields=False)
    except json_format.ParseError as e:
        raise ConfigError(f"Invalid config override: {str(e).splitlines()[0]}") from None
    return config


def _fold_enum_case(node: dict, descriptor) -> None:
    """Rewrite enum names to their declared spelling, in place, wherever the JSON names an enum
    by a string that matches one case-insensitively (protobuf's case_insensitive_enum_parsing)."""
    fields = {}
    for field in descriptor.fields:
        fields[field.name] = field
        fields[field.json_name] = field
    for key, value in node.items():
        field = fields.get(key)
        if field is None:
            continue  # json_format reports the unknown field
        if _is_map(field):
            value_field = field.message_type.fields_by_name["value"]
            if isinstance(value, dict):
                for map_key, item in value.items():
                    value[map_key] = _fold_value(value_field, item)
        elif _is_repeated(field) and isinstance(value, list):
            node[key] = [_fold_value(field, item) for item in value]
        else:
            node[key] = _fold_value(field, value)


def _fold_value(field, value):
    if field.type == FieldDescriptor.TYPE_ENUM and isinstance(value, str):
        names = {v.name.lower(): v.name for v in field.enum_type.values}
        return names.get(value.lower(), value)
    if field.type == FieldDescriptor.TYPE_MESSAGE and isinstance(value, dict):
        _fold_enum_case(value, field.message_type)
    return value


def _is_repeated(field) -> bool:
    repeated = getattr(field, "is_repeated", None)  # protobuf >= 6 deprecates `label`
    if repeated is None:
        return field.label == FieldDescriptor.LABEL_REPEATED
    return repeated() if callable(repeated) else bool(repeated)


def _is_map(field) -> bool:
    return (field.type == FieldDescriptor.TYPE_MESSAGE
            and field.message_type.GetOptions().map_entry)


# --- normalization ------------------------------------------------------------------------

def normalize_model_config(config: pb.ModelConfig) -> None:
    """Triton's NormalizeModelConfig, in place."""
    if not config.HasField("version_policy"):
        config.version_policy.latest.num_versions = 1
    if config.HasField("dynamic_batching"):
        batching = config.dynamic_batching
        if not batching.preferred_batch_size and config.max_batch_size > 0:
            batching.preferred_batch_size.append(config.max_batch_size)
    if config.HasField("sequence_batching"):
        sequence = config.sequence_batching
        if sequence.max_sequence_idle_microseconds == 0:
            sequence.max_sequence_idle_microseconds = SEQUENCE_IDLE_DEFAULT_MICROSECONDS
        if sequence.HasField("oldest"):
            if not sequence.oldest.preferred_batch_size and config.max_batch_size > 0:
                sequence.oldest.preferred_batch_size.append(config.max_batch_size)
    if not config.HasField("ensemble_scheduling"):
        optimization = config.optimization
        if not optimization.HasField("input_pinned_memory"):
            optimization.input_pinned_memory.enable = True
        if not optimization.HasField("output_pinned_memory"):
            optimization.output_pinned_memory.enable = True


_Kind = pb.ModelInstanceGroup.Kind
KIND_AUTO, KIND_GPU, KIND_CPU, KIND_MODEL = (
    _Kind.Value("KIND_AUTO"), _Kind.Value("KIND_GPU"), _Kind.Value("KIND_CPU"),
    _Kind.Value("KIND_MODEL"))


def normalize_instance_group(config: pb.ModelConfig, gpu_count: int) -> None:
    """Triton's NormalizeInstanceGroup (no backend preferred groups), in place."""
    if config.HasField("ensemble_scheduling"):
        return
    supported = set(range(gpu_count))
    if not config.instance_group:
        config.instance_group.add().name = config.name
    for index, group in enumerate(config.instance_group):
        if not group.name:
            group.name = f"{config.name}_{index}"
        if group.kind == KIND_AUTO:
            if not supported or any(gpu not in supported for gpu in group.gpus):
                group.kind = KIND_CPU
            else:
                group.kind = KIND_GPU
        if group.count < 1:
            two = group.kind == KIND_CPU and config.backend in _TWO_CPU_INSTANCES
            group.count = 2 if two else 1
        if group.kind == KIND_GPU and not group.gpus:
            group.gpus.extend(sorted(supported))


# --- validation ---------------------------------------------------------------------------

def validate_model_config(config: pb.ModelConfig) -> None:
    """Triton's ValidateModelConfig."""
    name = config.name
    if not name:
        raise ConfigError("model configuration must specify 'name'")
    if not config.backend:
        if config.platform != ENSEMBLE_PLATFORM:
            raise ConfigError(f"unexpected platform type '{config.platform}' for {name}")
    elif config.platform == ENSEMBLE_PLATFORM:
        raise ConfigError(
            f"Ensemble model '{name}' must have platform type '{config.platform}' and empty "
            "backend type")
    if not config.platform and not config.backend:
        raise ConfigError(f"must specify 'platform' or 'backend' for '{name}'")
    platforms = _BACKEND_PLATFORMS.get(config.backend)
    if platforms is not None and config.platform not in platforms:
        raise ConfigError(
            f"unexpected 'platform' and 'backend' pair, got:{config.platform}, {config.backend}")
    if config.max_batch_size < 0:
        raise ConfigError(f"'max_batch_size' must be non-negative value for {name}")
    if not config.HasField("version_policy"):
        raise ConfigError(f"must specify 'version policy' for {name}")

    if config.HasField("dynamic_batching"):
        _validate_dynamic_batching(config)
    if config.HasField("sequence_batching"):
        _validate_sequence_batching(config)

    if config.HasField("ensemble_scheduling"):
        _validate_ensemble(config)
    elif config.platform == ENSEMBLE_PLATFORM:
        raise ConfigError(
            f"ensemble scheduling must be set for ensemble {name} whose platform is "
            f"{ENSEMBLE_PLATFORM}")

    if config.model_transaction_policy.decoupled and config.response_cache.enable:
        raise ConfigError(
            f"Response Cache does not currently support model {name} with 'decoupled' "
            "transaction policy. Please disable the response cache.")
    if config.HasField("model_metrics"):
        for control in config.model_metrics.metric_control:
            if not control.HasField("metric_identifier"):
                raise ConfigError("metric control must specify 'metric_identifier'")
            if not control.metric_identifier.family:
                raise ConfigError("metric identifier must specify non-empty 'family'")
            if not control.HasField("histogram_options"):
                raise ConfigError("metric control must specify 'histogram_options'")
            if not control.histogram_options.buckets:
                raise ConfigError("histogram options must specify non-empty 'buckets'")


def _validate_dynamic_batching(config: pb.ModelConfig) -> None:
    name = config.name
    batching = config.dynamic_batching
    for size in batching.preferred_batch_size:
        if size <= 0:
            raise ConfigError(f"dynamic batching preferred size must be positive for {name}")
        if size > config.max_batch_size:
            raise ConfigError(
                f"dynamic batching preferred size must be <= max batch size for {name}")
    levels = batching.priority_levels
    if levels != 0:
        if batching.default_priority_level == 0 or batching.default_priority_level > levels:
            raise ConfigError(
                f"default priority level must be in range [1, {levels}] for {name}")
        for level in batching.priority_queue_policy:
            if level == 0 or level > levels:
                raise ConfigError(
                    "priority queue policy must have priority level in range "
                    f"[1, {levels}] for {name}")
    if batching.preserve_ordering:
        if levels > 1:
            raise ConfigError(
                f"Only one priority level is allowed when 'preserve_ordering' is true for {name}")
        delay = pb.ModelQueuePolicy.TimeoutAction.Value("DELAY")
        policies = [batching.default_queue_policy, *batching.priority_queue_policy.values()]
        for policy in policies:
            if policy.default_timeout_microseconds != 0 and policy.timeout_action == delay:
                raise ConfigError(
                    "Queue policy can not have DELAY as timeout action when "
                    f"'preserve_ordering' is true for {name}")


_Control = pb.ModelSequenceBatching.Control
_DataType = pb.ModelInput.DESCRIPTOR.fields_by_name["data_type"].enum_type


def _validate_sequence_batching(config: pb.ModelConfig) -> None:
    name = config.name
    if config.response_cache.enable:
        raise ConfigError(
            f"Response Cache does not currently support model {name} with sequence batching "
            "scheduler. Please disable the response cache.")
    batcher = config.sequence_batching
    for kind in ("CONTROL_SEQUENCE_START", "CONTROL_SEQUENCE_END", "CONTROL_SEQUENCE_READY"):
        _check_control(batcher, name, kind, boolean=True)
    corrid_type = _check_control(batcher, name, "CONTROL_SEQUENCE_CORRID", boolean=False)
    allowed = {_DataType.values_by_name[t].number for t in (
        "TYPE_UINT64", "TYPE_INT64", "TYPE_UINT32", "TYPE_INT32", "TYPE_STRING")}
    if corrid_type is not None and corrid_type not in allowed:
        raise ConfigError(
            f"unexpected data type for control CONTROL_SEQUENCE_CORRID for {name}. Allowed "
            "data types are TYPE_UINT64, TYPE_INT64, TYPE_UINT32, TYPE_INT32 and TYPE_STRING")
    if batcher.HasField("oldest"):
        for size in batcher.oldest.preferred_batch_size:
            if size <= 0:
                raise ConfigError(
                    f"sequence batching preferred batch size must be positive for {name}")
            if size > config.max_batch_size:
                raise ConfigError(
                    f"sequence batching preferred batch size must be <= max batch size for {name}")
    if batcher.HasField("direct"):
        utilization = batcher.direct.minimum_slot_utilization
        if utilization < 0.0 or utilization > 1.0:
            raise ConfigError(
                "sequence batching minimum slot utilization must be in range (0.0, 1.0] for "
                f"{name}")


def _check_control(batcher, name: str, kind_name: str, boolean: bool) -> int | None:
    """GetBooleanSequenceControlProperties / GetTypedSequenceControlProperties: returns the
    control's data type when the control is present."""
    kind = _Control.Kind.Value(kind_name)
    seen_tensors: set[str] = set()
    found: int | None = None
    for control_input in batcher.control_input:
        if not control_input.name:
            raise ConfigError(f"sequence batching control tensor must have a name for {name}")
        if control_input.name in seen_tensors:
            raise ConfigError(
                f"sequence batching control tensor '{control_input.name}' is specified for "
                f"multiple control kinds for {name}")
        seen_tensors.add(control_input.name)
        for control in control_input.control:
            if control.kind != kind:
                continue
            if found is not None:
                raise ConfigError(
                    f"sequence batching specifies multiple {kind_name} tensors for {name}")
            given = [bool(control.int32_false_true), bool(control.fp32_false_true),
                     bool(control.bool_false_true)]
            if boolean:
                if not any(given):
                    raise ConfigError(
                        "sequence batching must specify either 'int32_false_true', "
                        f"'fp32_false_true' or 'bool_false_true' for {kind_name} for {name}")
                if sum(given) > 1:
                    raise ConfigError(
                        "sequence batching specifies more than one from 'int32_false_true', "
                        f"'fp32_false_true' and 'bool_false_true' for {kind_name} for {name}")
                for field, values, dtype in (
                        ("int32_false_true", control.int32_false_true, "TYPE_INT32"),
                        ("fp32_false_true", control.fp32_false_true, "TYPE_FP32"),
                        ("bool_false_true", control.bool_false_true, "TYPE_BOOL")):
                    if values:
                        if len(values) != 2:
                            raise ConfigError(
                                f"sequence batching control '{field}' must have exactly 2 "
                                f"entries for {kind_name} for {name}")
                        found = _DataType.values_by_name[dtype].number
            else:
                if any(given):
                    raise ConfigError(
                        "sequence batching must not specify either 'int32_false_true', "
                        f"'fp32_false_true' or 'bool_false_true' for {kind_name} for {name}")
                found = control.data_type
    return found


def _validate_ensemble(config: pb.ModelConfig) -> None:
    """ValidateEnsembleSchedulingConfig (what the composing models' configs must agree with
    is checked when they are loaded: config/ensemble.py)."""
    name = config.name
    if config.platform != ENSEMBLE_PLATFORM:
        raise ConfigError(
            f"ensemble scheduling cannot be set for model '{name}' whose platform is not "
            f"{ENSEMBLE_PLATFORM}")
    if config.instance_group:
        raise ConfigError(f"instance group should not be specified for ensemble '{name}'")
    if config.HasField("optimization"):
        raise ConfigError(f"optimization should not be specified for ensemble '{name}'")
    if config.model_warmup:
        raise ConfigError(f"model_warmup can not be specified for ensemble '{name}'")
    if not config.ensemble_scheduling.step:
        raise ConfigError(f"must specify 'step' for ensemble '{name}'")
    from pyserve.config.ensemble import validate_data_flow  # it imports this module

    validate_data_flow(config)


def validate_instance_group(config: pb.ModelConfig, gpu_count: int) -> None:
    """Triton's ValidateInstanceGroup, for a server built with GPU support."""
    if config.HasField("ensemble_scheduling"):
        return
    name = config.name
    if not config.instance_group:
        raise ConfigError(f"must specify one or more 'instance group's for {name}")
    supported = list(range(gpu_count))
    for group in config.instance_group:
        prefix = f"instance group {group.name} of model {name}"
        if group.kind == KIND_MODEL:
            if group.gpus:
                raise ConfigError(f"{prefix} has kind KIND_MODEL but specifies one or more GPUs")
        elif group.kind == KIND_GPU:
            if not group.gpus:
                if not supported:
                    raise ConfigError(f"{prefix} has kind KIND_GPU but no GPUs are available")
                raise ConfigError(f"{prefix} has kind KIND_GPU but specifies no GPUs")
            for gpu in group.gpus:
                if gpu not in supported:
                    raise ConfigError(
                        f"{prefix} specifies invalid or unsupported gpu id {gpu}. GPUs with at "
                        "least the minimum required CUDA compute compatibility of "
                        f"{MIN_COMPUTE_CAPABILITY:.6f} are: {', '.join(map(str, supported))}")
        elif group.kind == KIND_CPU:
            if group.gpus:
                raise ConfigError(f"{prefix} has kind KIND_CPU but specifies one or more GPUs")
        else:
            raise ConfigError(f"{prefix} has unexpected kind KIND_AUTO")
        if config.platform != TENSORRT_PLATFORM and group.profile:
            # Triton's text, missing space included.
            raise ConfigError(
                f"{prefix} and platform {config.platform}specifies profile field which is only "
                "supported for TensorRT models")
        for profile in group.profile:
            if not profile.lstrip("-").isdigit() or int(profile) < 0:
                raise ConfigError(
                    f"{prefix} and platform {config.platform} specifies invalid profile "
                    f"{profile}. The field should contain the string representation of a "
                    "non-negative integer.")


def validate_io(config: pb.ModelConfig) -> None:
    """Triton's ValidateModelIOConfig (plus unique tensor names, which Triton checks when it
    builds the model's input and output maps)."""
    name = config.name
    try:
        seen: set[str] = set()
        for io in config.input:
            _validate_io_shape(io, config.max_batch_size, "model input ")
            if io.format in (1, 2) and len(io.dims) != 3:  # FORMAT_NHWC / FORMAT_NCHW
                raise ConfigError("model input NHWC/NCHW require 3 dims")
            if config.platform != TENSORRT_PLATFORM and io.is_shape_tensor:
                raise ConfigError("shape tensors are only supported for TensorRT platform")
            _validate_non_linear(io, config.platform, "input")
            if io.name in seen:
                raise ConfigError(f"duplicate input name '{io.name}'")
            seen.add(io.name)
        seen = set()
        for io in config.output:
            _validate_io_shape(io, config.max_batch_size, "model output ")
            if config.platform != TENSORRT_PLATFORM and io.is_shape_tensor:
                raise ConfigError("shape tensors are only supported for TensorRT platform")
            _validate_non_linear(io, config.platform, "output")
            if io.name in seen:
                raise ConfigError(f"duplicate output name '{io.name}'")
            seen.add(io.name)
        _validate_batch_io(config)
    except ConfigError as e:
        raise ConfigError(f"{e.message} for {name}") from None


def _validate_io_shape(io, max_batch_size: int, prefix: str) -> None:
    if not io.name:
        raise ConfigError(f"{prefix}must specify 'name'")
    prefix = f"{prefix}'{io.name}' "
    if io.data_type == 0:
        raise ConfigError(f"{prefix}must specify 'data_type'")
    if not io.dims:
        raise ConfigError(f"{prefix}must specify 'dims'")
    if io.HasField("reshape") and not io.reshape.shape and max_batch_size == 0:
        raise ConfigError(
            f"{prefix}cannot have empty reshape for non-batching model as scalar tensors are "
            "not supported")
    for dim in io.dims:
        if dim < 1 and dim != WILDCARD_DIM:
            raise ConfigError(
                f"{prefix}dimension must be integer >= 1, or {WILDCARD_DIM} to indicate a "
                "variable-size dimension")
    if not io.HasField("reshape"):
        return
    for dim in io.reshape.shape:
        if dim < 1 and dim != WILDCARD_DIM:
            raise ConfigError(
                f"{prefix}reshape dimensions must be integer >= 1, or {WILDCARD_DIM} to "
                "indicate a variable-size dimension")
    dims_size = _element_count(io.dims)
    reshape_size = _element_count(io.reshape.shape)
    # Equal counts, or both variable; an empty reshape needs dims with one element.
    if dims_size != reshape_size and (reshape_size != 0 or dims_size != 1):
        raise ConfigError(f"{prefix}has different size for dims and reshape")
    if dims_size == WILDCARD_DIM:
        dims_chunks = _chunks(io.dims)
        reshape_chunks = _chunks(io.reshape.shape)
        if len(dims_chunks) != len(reshape_chunks):
            raise ConfigError(
                f"{prefix}has different number of variable-size dimensions for dims and reshape")
        if dims_chunks != reshape_chunks:
            raise ConfigError(f"{prefix}has different size for dims and reshape")


def _element_count(dims) -> int:
    """GetElementCount: -1 when any dimension is variable; an empty shape counts 0."""
    if not dims:
        return 0
    count = 1
    for dim in dims:
        if dim == WILDCARD_DIM:
            return WILDCARD_DIM
        count *= dim
    return count


def _chunks(dims) -> list[int]:
    """Element counts of the runs between variable-size dimensions."""
    chunks, current = [], 1
    for dim in dims:
        if dim == WILDCARD_DIM:
            chunks.append(current)
            current = 1
        else:
            current *= dim
    chunks.append(current)
    return chunks


def _validate_non_linear(io, platform: str, which: str) -> None:
    if not io.is_non_linear_format_io:
        return
    if platform != TENSORRT_PLATFORM:
        raise ConfigError("Non-linear IO format is only supported for the TensorRT platform")
    if len(io.dims) != 3:
        raise ConfigError(f"Non-linear IO format {which} requires 3 dims")


def _validate_batch_io(config: pb.ModelConfig) -> None:
    inputs = {io.name for io in config.input}
    outputs = {io.name for io in config.output}
    int32 = _DataType.values_by_name["TYPE_INT32"].number
    fp32 = _DataType.values_by_name["TYPE_FP32"].number
    for batch_input in config.batch_input:
        kind = pb.BatchInput.Kind.Name(batch_input.kind)
        if len(batch_input.source_input) != 1:
            raise ConfigError(
                f"batch input kind '{kind}' expects 1 source input, got "
                f"{len(batch_input.source_input)}")
        if batch_input.data_type not in (int32, fp32):
            raise ConfigError("batch input data type must be TYPE_INT32 or TYPE_FP32")
        for source in batch_input.source_input:
            if source not in inputs:
                raise ConfigError(f"unknown source input name '{source}'")
    for batch_output in config.batch_output:
        kind = pb.BatchOutput.Kind.Name(batch_output.kind)
        if len(batch_output.source_input) != 1:
            raise ConfigError(
                f"batch output kind '{kind}' expects 1 source input, got "
                f"{len(batch_output.source_input)}")
        for source in batch_output.source_input:
            if source not in inputs:
                raise ConfigError(f"unknown source input name '{source}'")
        targets: set[str] = set()
        for target in batch_output.target_name:
            if target not in outputs:
                raise ConfigError(f"unknown target output name '{target}'")
            if target in targets:
                raise ConfigError(f"target output name '{target}' can only be specified once")
            targets.add(target)


def validate_warmup(config: pb.ModelConfig) -> None:
    """The checks Triton makes when it generates warmup samples (GenerateWarmupData), made at
    config time so that a bad warmup setting fails the load with a clear message."""
    name = config.name
    inputs = {io.name for io in config.input}
    for warmup in config.model_warmup:
        if config.max_batch_size == 0 and warmup.batch_size > 1:
            raise ConfigError(
                f"warmup setting '{warmup.name}' has batch_size {warmup.batch_size} but model "
                f"{name} does not support batching")
        if config.max_batch_size > 0 and warmup.batch_size > config.max_batch_size:
            raise ConfigError(
                f"warmup setting '{warmup.name}' has batch_size {warmup.batch_size} larger than "
                f"max_batch_size {config.max_batch_size} for {name}")
        for input_name, spec in warmup.inputs.items():
            if _element_count(spec.dims) == WILDCARD_DIM:
                raise ConfigError(
                    "warmup setting expects all variable-size dimensions are specified for "
                    f"input '{input_name}'")
            known = inputs | _control_and_state_inputs(config)
            if input_name not in known:
                raise ConfigError(
                    f"warmup setting '{warmup.name}' specifies unknown input '{input_name}' "
                    f"for {name}")


def _control_and_state_inputs(config: pb.ModelConfig) -> set[str]:
    names = set()
    if config.HasField("sequence_batching"):
        names |= {c.name for c in config.sequence_batching.control_input}
        names |= {s.input_name for s in config.sequence_batching.state}
    return names


def check_name(config: pb.ModelConfig, directory_name: str) -> None:
    if config.name != directory_name:
        raise ConfigError(
            f"unexpected directory name '{directory_name}' for model '{config.name}', "
            "directory name must equal model name")


# --- compatibility entry point ------------------------------------------------------------

def normalize(config: pb.ModelConfig, model_name: str, gpu_count: int = 0) -> pb.ModelConfig:
    """Validate an already complete `config` for the model directory `model_name` and fill
    Triton's defaults (no files are consulted; `model_config` is the full pipeline)."""
    from pyserve.config.autofill import autocomplete_backend_fields

    config = copy_config(config)
    autocomplete_backend_fields(model_name, None, config)
    normalize_model_config(config)
    validate_model_config(config)
    check_name(config, model_name)
    normalize_instance_group(config, gpu_count)
    validate_instance_group(config, gpu_count)
    validate_io(config)
    validate_warmup(config)
    return config


def copy_config(config: pb.ModelConfig) -> pb.ModelConfig:
    out = pb.ModelConfig()
    out.CopyFrom(config)
    return out


# --- JSON ---------------------------------------------------------------------------------

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
