"""What pyserve reads of a TensorRT engine (EngineInfo), and Triton's configuration rules
over it: auto-complete, the checks at load, the optimization profile of an instance. Plain
data and no tensorrt import, so that the rules hold, and are tested, on any machine."""

from __future__ import annotations

from dataclasses import dataclass

from pyserve.errors import ErrorCode, ServerError
from pyserve.protocol import pb

_DATA_TYPE = pb.ModelInput.DESCRIPTOR.fields_by_name["data_type"].enum_type
_GPU = pb.ModelInstanceGroup.Kind.Value("KIND_GPU")
# A boolean control's false/true field -> the data type of its tensor.
_CONTROL_TYPES = (("int32_false_true", "TYPE_INT32"), ("fp32_false_true", "TYPE_FP32"),
                  ("bool_false_true", "TYPE_BOOL"))


@dataclass(frozen=True)
class EngineTensor:
    name: str
    is_input: bool
    type_name: str  # the config's data type, e.g. "TYPE_FP32"
    shape: tuple[int, ...]  # -1 where dynamic
    is_shape_tensor: bool = False
    profile_max: tuple[tuple[int, ...], ...] = ()  # inputs: the largest shape per profile


@dataclass(frozen=True)
class EngineInfo:
    tensors: tuple[EngineTensor, ...]
    num_profiles: int = 1

    @property
    def inputs(self) -> list[EngineTensor]:
        return [t for t in self.tensors if t.is_input]

    @property
    def by_name(self) -> dict[str, EngineTensor]:
        return {t.name: t for t in self.tensors}

    def max_batch(self, profile: int) -> int:
        """The largest batch a profile allows: the smallest first dimension of its inputs'
        largest shapes."""
        return min(t.profile_max[profile][0] for t in self.inputs)


def batching_dims(config: pb.ModelConfig, tensor: EngineTensor) -> list[int]:
    """The engine's dims as the config writes them: without the batch dimension when the
    model batches."""
    return list(tensor.shape[1:] if config.max_batch_size > 0 else tensor.shape)


@dataclass(frozen=True)
class ConfigTensor:
    """A tensor the engine must have as the config describes it: a config input or output,
    or one the sequence batcher adds (a control input, an implicit state's input or output)."""
    kind: str  # how errors name it: "input", "output", "control input", "state input", ...
    name: str
    type_name: str
    dims: list[int]
    is_input: bool


def sequence_tensors(config: pb.ModelConfig) -> list[ConfigTensor]:
    """The engine bindings the sequence batcher feeds and takes back: each control input
    (dims [1], as Triton's InitializeSequenceControlInputBindings), each state's input and
    output (its data_type and dims, as InitializeSequenceState*Bindings)."""
    if not config.HasField("sequence_batching"):
        return []
    batcher = config.sequence_batching
    tensors = []
    for control_input in batcher.control_input:
        for control in control_input.control:
            type_name = next((type_name for field, type_name in _CONTROL_TYPES
                              if getattr(control, field)),
                             _DATA_TYPE.values_by_number[control.data_type].name)
            tensors.append(ConfigTensor("control input", control_input.name, type_name, [1],
                                        True))
    for state in batcher.state:
        type_name = _DATA_TYPE.values_by_number[state.data_type].name
        tensors.append(ConfigTensor("state input", state.input_name, type_name,
                                    list(state.dims), True))
        tensors.append(ConfigTensor("state output", state.output_name, type_name,
                                    list(state.dims), False))
    return tensors


def returned_outputs(config: pb.ModelConfig) -> list[str]:
    """The engine outputs an execution hands back: the config's outputs and the state
    outputs, which the core keeps for each sequence's next request whatever the client asked."""
    return list(dict.fromkeys([o.name for o in config.output]
                              + [s.output_name for s in config.sequence_batching.state]))


def check_config(config: pb.ModelConfig, info: EngineInfo) -> None:
    """Every config input and output, and every tensor the sequence batcher feeds or takes
    back, must be an engine tensor of the same kind, type and (compatible) dims, and every
    engine input must be fed."""
    listed = [ConfigTensor(kind, io.name, _DATA_TYPE.values_by_number[io.data_type].name,
                           list(io.reshape.shape) if io.HasField("reshape") else list(io.dims),
                           kind == "input")
              for kind, ios in (("input", config.input), ("output", config.output))
              for io in ios]
    for wanted in listed + sequence_tensors(config):
        _check_tensor(config, info, wanted)
    fed = {t.name for t in listed + sequence_tensors(config) if t.is_input}
    unfed = sorted(t.name for t in info.tensors if t.is_input and t.name not in fed)
    if unfed:
        raise ServerError(f"model '{config.name}': the engine's inputs {unfed} are missing from "
                          "the configuration")


def _check_tensor(config: pb.ModelConfig, info: EngineInfo, wanted: ConfigTensor) -> None:
    kind = wanted.kind
    tensor = info.by_name.get(wanted.name)
    if tensor is None or tensor.is_input != wanted.is_input:
        names = sorted(t.name for t in info.tensors if t.is_input == wanted.is_input)
        side = "input" if wanted.is_input else "output"
        raise ServerError(f"model '{config.name}': configuration {kind} '{wanted.name}' is "
                          f"not an {side} of the engine (it has {names})")
    if wanted.type_name != tensor.type_name:
        raise ServerError(f"model '{config.name}': {kind} '{wanted.name}' is "
                          f"{wanted.type_name} in the configuration but {tensor.type_name} in "
                          "the engine")
    if config.max_batch_size > 0 and (not tensor.shape or tensor.shape[0] != -1):
        raise ServerError(
            f"model '{config.name}': max_batch_size is {config.max_batch_size} but the "
            f"engine's {kind} '{wanted.name}' has no dynamic batch dimension (shape "
            f"{tensor.shape}); set max_batch_size: 0 and give the full dims")
    dims, engine_dims = wanted.dims, batching_dims(config, tensor)
    if len(dims) != len(engine_dims) or any(
            e != -1 and d != -1 and d != e for d, e in zip(dims, engine_dims)):
        raise ServerError(f"model '{config.name}': {kind} '{wanted.name}' has dims {dims} "
                          f"in the configuration but {engine_dims} in the engine")


def instance_profile(config: pb.ModelConfig, instance_index: int, count: int) -> int:
    """The optimization profile of an instance: the first its instance group lists, else 0."""
    start = 0
    for group in config.instance_group:
        size = group.count * (len(group.gpus) if group.kind == _GPU and group.gpus else 1)
        if instance_index < start + size:
            return profile_index(config, group.profile[0], count) if group.profile else 0
        start += size
    return 0


def check_profile(config: pb.ModelConfig, info: EngineInfo, profile: int) -> None:
    """max_batch_size must fit the profile's largest batch."""
    if config.max_batch_size > 0 and config.max_batch_size > info.max_batch(profile):
        raise ServerError(
            f"model '{config.name}': max_batch_size {config.max_batch_size} is larger than "
            f"optimization profile {profile} allows ({info.max_batch(profile)})")


def auto_complete(config: pb.ModelConfig, info: EngineInfo) -> pb.ModelConfig:
    """Triton's TensorRT auto-complete (model_state.cc AutoCompleteConfigHelper): the engine
    gives max_batch_size, data types and dims; inputs and outputs the config lists keep what
    they set. Where Triton takes any engine's first dimension as the batch, pyserve takes it
    only when every I/O tensor's first dimension is dynamic (-1)."""
    tensors = info.by_name
    out = pb.ModelConfig()
    out.CopyFrom(config)

    # The config's own dims hint at batching: the engine has one dimension more.
    hints = {True} if any(i.allow_ragged_batch for i in config.input) else set()
    for io in (*(i for i in config.input if not i.allow_ragged_batch), *config.output):
        dims = io.reshape.shape if io.HasField("reshape") else io.dims
        if dims and io.name in tensors:
            hints.add(len(tensors[io.name].shape) == len(dims) + 1)
    if len(hints) == 2:
        raise ServerError(f"unable to autofill for '{config.name}', model tensor configurations "
                          "are contradicting each other in terms of whether batching is "
                          "supported")
    batchable = all(t.shape and t.shape[0] == -1 for t in tensors.values())
    profiles = {profile_index(config, text, info.num_profiles)
                for group in config.instance_group for text in group.profile} or {0}
    largest = max(info.max_batch(p) for p in profiles) if batchable and info.inputs else 0
    if hints == {True} and largest == 0:
        raise ServerError(f"autofill failed for model '{config.name}': model tensor shape "
                          "configuration hints for dynamic batching but the underlying engine "
                          "doesn't support batching.")
    if hints == {False}:
        largest = 0
    if out.max_batch_size == 0:
        out.max_batch_size = largest
    elif out.max_batch_size > largest:
        raise ServerError(f"autofill failed for model '{config.name}': configuration specified "
                          f"max-batch {out.max_batch_size} but TensorRT engine only supports "
                          f"max-batch {largest}")
    if (out.max_batch_size > 1 and not out.HasField("dynamic_batching")
            and not out.HasField("sequence_batching")):
        out.dynamic_batching.SetInParent()

    # The control and state tensors are the sequence batcher's, not the client's.
    batcher_fed = {t.name for t in sequence_tensors(config)}
    for target, want_input in ((out.input, True), (out.output, False)):
        if not target:
            for tensor in tensors.values():
                if tensor.is_input == want_input and tensor.name not in batcher_fed:
                    target.add().name = tensor.name
        for io in target:
            tensor = tensors.get(io.name)
            if tensor is None:
                raise ServerError(f"binding for '{io.name}' not found in the model.",
                                  ErrorCode.INVALID_ARG)
            if io.data_type == 0:  # TYPE_INVALID: not given
                io.data_type = _DATA_TYPE.values_by_name[tensor.type_name].number
            if not io.dims:
                io.dims.extend(batching_dims(out, tensor) or [1])
                # A scalar per batch row: dims [1] read as shape [] (Triton's empty reshape;
                # without batching that would be a whole scalar, which configs cannot hold).
                if not batching_dims(out, tensor) and out.max_batch_size > 0:
                    io.reshape.SetInParent()
    return out


def profile_index(config: pb.ModelConfig, text: str, count: int) -> int:
    if not (text.isascii() and text.isdigit()) or int(text) >= count:
        raise ServerError(f"model '{config.name}': optimization profile '{text}' is not one of "
                          f"the engine's {count} (0 to {count - 1})")
    return int(text)
