"""TensorRT backend (`platform: "tensorrt_plan"`, `backend: "tensorrt"`, file model.plan).

A serialized engine runs on GPU instances only, through TensorRT's tensor-name API
(TensorRT 10 and later). The core copies each batch's inputs to the instance's GPU on the
instance's CUDA stream; the engine is enqueued on that same stream with those device buffers
bound in place, outputs are written to device buffers the instance owns and copied to the
host once, and the instance waits for the stream only then.

Dynamic shapes come from the engine's optimization profiles: an instance uses the first
profile its instance group lists (`profile: [ "1" ]`), else profile 0, and a batch's input
shapes must fall inside that profile. Shape-tensor inputs and outputs whose shape depends on
the data are refused at load with a clear error.
"""

from __future__ import annotations

import logging
import threading
from pathlib import Path

import numpy as np
import tensorrt as trt

from pyserve import _core
from pyserve.backends.base import Backend, InstanceSpec, ModelContext
from pyserve.errors import ErrorCode, ServerError
from pyserve.protocol import pb

log = logging.getLogger("pyserve")

_DATA_TYPE = pb.ModelInput.DESCRIPTOR.fields_by_name["data_type"].enum_type
_GPU = pb.ModelInstanceGroup.Kind.Value("KIND_GPU")

# TensorRT data type name -> (config type, numpy dtype of its bytes; BF16 as raw uint16 bits).
_TYPES: dict[str, tuple[str, np.dtype]] = {
    "FLOAT": ("TYPE_FP32", np.dtype(np.float32)), "HALF": ("TYPE_FP16", np.dtype(np.float16)),
    "BF16": ("TYPE_BF16", np.dtype(np.uint16)), "INT8": ("TYPE_INT8", np.dtype(np.int8)),
    "INT32": ("TYPE_INT32", np.dtype(np.int32)), "INT64": ("TYPE_INT64", np.dtype(np.int64)),
    "BOOL": ("TYPE_BOOL", np.dtype(np.bool_)), "UINT8": ("TYPE_UINT8", np.dtype(np.uint8)),
}


class _Logger(trt.ILogger):
    """TensorRT's messages into pyserve's log."""

    _LEVELS = {trt.ILogger.Severity.INTERNAL_ERROR: logging.ERROR,
               trt.ILogger.Severity.ERROR: logging.ERROR,
               trt.ILogger.Severity.WARNING: logging.WARNING,
               trt.ILogger.Severity.INFO: logging.DEBUG,
               trt.ILogger.Severity.VERBOSE: logging.DEBUG}

    def __init__(self) -> None:
        trt.ILogger.__init__(self)

    def log(self, severity, msg) -> None:
        log.log(self._LEVELS.get(severity, logging.INFO), "TensorRT: %s", msg)


_LOGGER = _Logger()
_RUNTIMES: dict[int, trt.Runtime] = {}  # one per GPU, shared by the instances on it
_RUNTIMES_LOCK = threading.Lock()


def _runtime(device: int) -> trt.Runtime:
    with _RUNTIMES_LOCK:
        if device not in _RUNTIMES:
            _RUNTIMES[device] = trt.Runtime(_LOGGER)
        return _RUNTIMES[device]


def _deserialize(path: Path, model: str, device: int) -> trt.ICudaEngine:
    if not path.is_file():
        raise ServerError(f"unable to find '{path}' for model '{model}'", ErrorCode.NOT_FOUND)
    _core.cuda_set_device(device)
    engine = _runtime(device).deserialize_cuda_engine(path.read_bytes())
    if engine is None:
        raise ServerError(
            f"unable to load model '{model}': '{path.name}' is not a TensorRT engine that this "
            f"TensorRT ({trt.__version__}) can deserialize on GPU {device} (engines are tied "
            "to the TensorRT version and GPU they were built with)", ErrorCode.INVALID_ARG)
    return engine


class _Tensor:
    """What the engine says of one of its I/O tensors."""

    def __init__(self, engine: trt.ICudaEngine, name: str, model: str) -> None:
        self.name = name
        self.is_input = engine.get_tensor_mode(name) == trt.TensorIOMode.INPUT
        kind = engine.get_tensor_dtype(name).name
        if kind not in _TYPES:
            raise ServerError(f"model '{model}': tensor '{name}' has TensorRT type {kind}, which "
                              "pyserve cannot serve")
        self.type_name, self.dtype = _TYPES[kind]
        self.shape = [int(d) for d in engine.get_tensor_shape(name)]
        self.is_shape_tensor = bool(engine.is_shape_inference_io(name))


def engine_tensors(engine: trt.ICudaEngine, model: str) -> list[_Tensor]:
    return [_Tensor(engine, engine.get_tensor_name(i), model) for i in range(engine.num_io_tensors)]


class TensorRTBackend(Backend):
    device_inputs = True

    def __init__(self, model: ModelContext, instance: InstanceSpec) -> None:
        super().__init__(model, instance)
        config = model.config
        if instance.kind != "GPU":
            raise ServerError(
                f"model '{model.name}': TensorRT engines run on GPU instances only (instance "
                f"group kind {instance.kind})", ErrorCode.INVALID_ARG)
        self._device = instance.device_id
        self._engine = _deserialize(model.model_path, model.name, self._device)
        tensors = {t.name: t for t in engine_tensors(self._engine, model.name)}
        shape_tensors = sorted(name for name, t in tensors.items() if t.is_shape_tensor)
        if shape_tensors:
            raise ServerError(f"model '{model.name}': shape tensors {shape_tensors} are not "
                              "supported by pyserve's TensorRT backend", ErrorCode.UNSUPPORTED)
        self._inputs = [t for t in tensors.values() if t.is_input]
        self._outputs = [t for t in tensors.values() if not t.is_input]
        _check_config(config, tensors)
        self._profile = _instance_profile(config, instance, self._engine.num_optimization_profiles)
        _check_profile(config, self._engine, self._inputs, self._profile)
        self._context = self._engine.create_execution_context()
        if self._context is None:
            raise ServerError(f"model '{model.name}': TensorRT could not create an execution "
                              f"context on GPU {self._device} (out of device memory?)",
                              ErrorCode.UNAVAILABLE)
        if self._profile != 0:
            self._context.set_optimization_profile_async(self._profile, 0)
            _core.cuda_synchronize(0)
        self._requested = {o.name for o in config.output}
        # Config `reshape`s: the engine's shape of a tensor whose request shape is `dims`.
        self._reshapes = {io.name: list(io.reshape.shape)
                          for io in (*config.input, *config.output) if io.HasField("reshape")}
        self._dims = {io.name: list(io.dims) for io in config.output}
        self._staging: dict[str, _core.DeviceBuffer] = {}  # inputs that arrive on the host
        self._results: dict[str, _core.DeviceBuffer] = {}  # outputs, grown as needed

    def execute(self, inputs: dict, batch_sizes: list[int],
                requests: list | None = None) -> dict[str, np.ndarray]:
        _core.cuda_set_device(self._device)
        context = self._context
        given = [(tensor, inputs.get(tensor.name)) for tensor in self._inputs]
        # The core's copies are on the instance's stream: the engine runs after them there.
        stream = next((v.stream for _, v in given if isinstance(v, _core.DeviceTensor)), 0)
        staged = []  # host inputs being copied over: alive until the stream is done
        for tensor, value in given:
            if value is None:
                raise ServerError(f"model '{self.model.name}': engine input '{tensor.name}' was "
                                  "not given", ErrorCode.INVALID_ARG)
            if isinstance(value, _core.DeviceTensor):
                address, shape = value.data_ptr, value.shape
            else:
                array = np.ascontiguousarray(value)
                buffer = _grown(self._staging, tensor.name, self._device, array.nbytes)
                buffer.copy_from_host(array, stream, wait=False)
                staged.append(array)
                address, shape = buffer.ptr, array.shape
            shape = self._engine_shape(tensor.name, shape)
            if not context.set_input_shape(tensor.name, tuple(shape)):
                raise ServerError(
                    f"model '{self.model.name}': input '{tensor.name}' shape {list(shape)} is "
                    f"outside optimization profile {self._profile} of the engine",
                    ErrorCode.INVALID_ARG)
            context.set_tensor_address(tensor.name, address)
        shapes = {}
        for tensor in self._outputs:
            shape = tuple(context.get_tensor_shape(tensor.name))
            if any(d < 0 for d in shape):
                raise ServerError(f"model '{self.model.name}': output '{tensor.name}' has shape "
                                  f"{list(shape)} that depends on the data, which pyserve's "
                                  "TensorRT backend does not support", ErrorCode.UNSUPPORTED)
            shapes[tensor.name] = shape
            size = int(np.prod(shape, dtype=np.int64)) * tensor.dtype.itemsize
            context.set_tensor_address(tensor.name, _grown(self._results, tensor.name,
                                                           self._device, size).ptr)
        if not context.execute_async_v3(stream):
            raise ServerError(f"model '{self.model.name}': TensorRT failed to enqueue the batch",
                              ErrorCode.INTERNAL)
        outputs = {}
        for tensor in self._outputs:
            if tensor.name in self._requested:
                host = np.empty(shapes[tensor.name], tensor.dtype)
                self._results[tensor.name].copy_to_host(host, stream, wait=False)
                if tensor.name in self._reshapes:  # back to the config's dims
                    rows = host.shape[:1] if self.model.config.max_batch_size > 0 else ()
                    host = host.reshape(*rows, *self._dims[tensor.name])
                outputs[tensor.name] = host
        _core.cuda_synchronize(stream)
        return outputs

    def _engine_shape(self, name: str, shape) -> list[int]:
        """A request tensor's shape as the engine takes it: the config's reshape applied."""
        if name not in self._reshapes:
            return list(shape)
        rows = list(shape[:1]) if self.model.config.max_batch_size > 0 else []
        return rows + self._reshapes[name]

    def close(self) -> None:
        _core.cuda_set_device(self._device)
        self._context = None
        self._engine = None
        self._staging.clear()
        self._results.clear()

    @staticmethod
    def auto_complete_config(config: pb.ModelConfig, version_dir: Path | None,
                             options: object) -> pb.ModelConfig:
        return auto_complete(config, version_dir)


def _grown(buffers: dict, name: str, device: int, size: int) -> "_core.DeviceBuffer":
    """The named device buffer, reallocated when `size` bytes no longer fit (doubling)."""
    buffer = buffers.get(name)
    if buffer is None or buffer.byte_size < size:
        capacity = max(size, 2 * buffer.byte_size if buffer is not None else 0)
        buffers[name] = buffer = _core.DeviceBuffer(device, capacity)
    return buffer


def _batching_dims(config: pb.ModelConfig, tensor: _Tensor) -> list[int]:
    """The engine's dims as the config writes them: without the batch dimension when the
    model batches."""
    return tensor.shape[1:] if config.max_batch_size > 0 else tensor.shape


def _check_config(config: pb.ModelConfig, tensors: dict[str, _Tensor]) -> None:
    """Every config input and output must be an engine tensor of the same kind, type and
    (compatible) dims, and every engine input must be fed."""
    unfed = sorted(t.name for t in tensors.values()
                   if t.is_input and t.name not in {io.name for io in config.input})
    if unfed:
        raise ServerError(f"model '{config.name}': the engine's inputs {unfed} are missing from "
                          "the configuration")
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
            engine_dims = _batching_dims(config, tensor)
            if len(dims) != len(engine_dims) or any(
                    e != -1 and d != -1 and d != e for d, e in zip(dims, engine_dims)):
                raise ServerError(f"model '{config.name}': {kind} '{io.name}' has dims {dims} "
                                  f"in the configuration but {engine_dims} in the engine")


def _instance_profile(config: pb.ModelConfig, instance: InstanceSpec, count: int) -> int:
    """The optimization profile of an instance: the first its instance group lists, else 0."""
    start = 0
    for group in config.instance_group:
        size = group.count * (len(group.gpus) if group.kind == _GPU and group.gpus else 1)
        if instance.index < start + size:
            return _profile_index(config, group.profile[0], count) if group.profile else 0
        start += size
    return 0


def _check_profile(config: pb.ModelConfig, engine: trt.ICudaEngine, inputs: list[_Tensor],
                   profile: int) -> None:
    """max_batch_size must fit the profile's largest batch dimension."""
    if config.max_batch_size <= 0:
        return
    for tensor in inputs:
        largest = int(engine.get_tensor_profile_shape(tensor.name, profile)[2][0])
        if config.max_batch_size > largest:
            raise ServerError(
                f"model '{config.name}': max_batch_size {config.max_batch_size} is larger than "
                f"optimization profile {profile} allows for input '{tensor.name}' ({largest})")


def auto_complete(config: pb.ModelConfig, version_dir: Path | None) -> pb.ModelConfig:
    """Triton's TensorRT auto-complete (model_state.cc AutoCompleteConfigHelper): the engine
    gives max_batch_size, data types and dims; inputs and outputs the config lists keep what
    they set. Where Triton takes any engine's first dimension as the batch, pyserve takes it
    only when every I/O tensor's first dimension is dynamic (-1)."""
    if version_dir is None or _core.cuda_device_count() == 0:
        return config  # nothing to read, or no GPU to read it on: loading will say so
    engine = _deserialize(version_dir / config.default_model_filename, config.name, 0)
    tensors = {t.name: t for t in engine_tensors(engine, config.name)}
    inputs = [t for t in tensors.values() if t.is_input]
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
    profiles = sorted({_profile_index(config, text, engine.num_optimization_profiles)
                       for group in config.instance_group for text in group.profile} or {0})
    largest = max(min(int(engine.get_tensor_profile_shape(t.name, p)[2][0]) for t in inputs)
                  for p in profiles) if batchable and inputs else 0
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
                io.dims.extend(_batching_dims(out, tensor) or [1])
                # A scalar per batch row: dims [1] read as shape [] (Triton's empty reshape;
                # without batching that would be a whole scalar, which configs cannot hold).
                if not _batching_dims(out, tensor) and out.max_batch_size > 0:
                    io.reshape.SetInParent()
    return out


def _profile_index(config: pb.ModelConfig, text: str, count: int) -> int:
    if not (text.isascii() and text.isdigit()) or int(text) >= count:
        raise ServerError(f"model '{config.name}': optimization profile '{text}' is not one of "
                          f"the engine's {count} (0 to {count - 1})")
    return int(text)
