"""What pyserve reads of a TensorRT engine (EngineInfo), and Triton's configuration rules
over it: auto-complete, the checks at load, the optimization profile of an instance. Plain
data and no tensorrt import, so that the rules hold, and are tested, on any machine."""

from __future__ import annotations

from dataclasses import dataclass

from pyserve.errors import ErrorCode, ServerError
from pyserve.protocol import pb

_DATA_TYPE = pb.ModelInput.DESCRIPTOR.fields_by_name["data_type"].enum_type
_GPU = pb.ModelInstanceGroup.Kind.Value("KIND_GPU")


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


def check_config(config: pb.ModelConfig, info: EngineInfo) -> None:
    """Every config input and output must be an engine tensor of the same kind, type and
    (compatible) dims, and every engine input must be fed."""
    tensors = info.by_name
    for kind, ios, want_input in (("input", config.input, True), ("output", config.output, False)):
        for io in ios:
            tensor = tensors.get(io.name)
            if tensor is None or tensor.is_input != want_input:
                names = sorted(t.name for t in tensors.values() if t.is_input == want_input)
                raise ServerError(f"model '{config.name}': configuration {kind} '{io.name}' is "
                                  f"not an {kind} of the engine (it has {names})")
            type_name = _DATA_TYPE.values_by_number[io.data_type].name
            if type_name != tensor.type_name:
                raise ServerError(f"model '{config.name}': {kind} '{io.name}' is {type_name} in "
                                  f"the configuration but {tensor.type_name} in the engine")
            if config.max_batch_size > 0 and (not tensor.shape or tensor.shape[0] != -1):
                raise ServerError(
                    f"model '{config.name}': max_batch_size is {config.max_batch_size} but the "
                    f"engine's {kind} '{io.name}' has no dynamic batch dimension (shape "
                    f"{tensor.shape}); set max_batch_size: 0 and give the full dims")
            dims = list(io.reshape.shape) if io.HasField("reshape") else list(io.dims)
            engine_dims = batching_dims(config, tensor)
            if len(dims) != len(engine_dims) or any(
                    e != -1 and d != -1 and d != e for d, e in zip(dims, engine_dims)):
                raise ServerError(f"model '{config.name}': {kind} '{io.name}' has dims {dims} "
                                  f"in the configuration but {engine_dims} in the engine")
    unfed = sorted(t.name for t in tensors.values()
                   if t.is_input and t.name not in {io.name for io in config.input})
    if unfed:
        raise ServerError(f"model '{config.name}': the engine's inputs {unfed} are missing from "
                          "the configuration")


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

    for target, want_input in ((out.input, True), (out.output, False)):
        if not target:
            for tensor in tensors.values():
                if tensor.is_input == want_input:
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
