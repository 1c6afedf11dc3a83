"""TensorRT backend (`platform: "tensorrt_plan"`, `backend: "tensorrt"`, file model.plan).

A serialized engine runs on GPU instances only, through TensorRT's tensor-name API
(TensorRT 10 and later). The core copies each batch's inputs to the instance's GPU on the
instance's CUDA stream; the engine is enqueued on that same stream with those device buffers
bound in place, outputs are written to device buffers the instance owns and copied to the
host once, and the instance waits for the stream only then.

Sequence models: the control inputs and implicit state inputs (sequence_batching.state) are
engine inputs like any other, which the core fills in for each request; the state outputs
are copied back with the config's outputs, and the core keeps them per sequence (Triton's
InitializeSequenceControlInputBindings and InitializeSequenceState*Bindings).

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
from pyserve.backends.tensorrt_config import (EngineInfo, EngineTensor, auto_complete,
                                              check_config, check_profile, instance_profile,
                                              returned_outputs)
from pyserve.datatypes import NUMPY_DTYPE
from pyserve.errors import ErrorCode, ServerError
from pyserve.protocol import pb

log = logging.getLogger("pyserve")

# TensorRT data type name -> config data type (Triton's ConvertTrtTypeToConfigDataType).
_TYPES = {"FLOAT": "TYPE_FP32", "HALF": "TYPE_FP16", "BF16": "TYPE_BF16", "INT8": "TYPE_INT8",
          "INT32": "TYPE_INT32", "INT64": "TYPE_INT64", "BOOL": "TYPE_BOOL", "UINT8": "TYPE_UINT8"}


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


def engine_info(engine: trt.ICudaEngine, model: str) -> EngineInfo:
    tensors = []
    for i in range(engine.num_io_tensors):
        name = engine.get_tensor_name(i)
        is_input = engine.get_tensor_mode(name) == trt.TensorIOMode.INPUT
        kind = engine.get_tensor_dtype(name).name
        if kind not in _TYPES:
            raise ServerError(f"model '{model}': tensor '{name}' has TensorRT type {kind}, which "
                              "pyserve cannot serve")
        shape = tuple(int(d) for d in engine.get_tensor_shape(name))
        profile_max = ()
        if is_input:  # a static input is its own largest shape in every profile
            profile_max = tuple(
                shape if min(shape, default=0) >= 0
                else tuple(int(d) for d in engine.get_tensor_profile_shape(name, p)[2])
                for p in range(engine.num_optimization_profiles))
        tensors.append(EngineTensor(name, is_input, _TYPES[kind], shape,
                                    bool(engine.is_shape_inference_io(name)), profile_max))
    return EngineInfo(tuple(tensors), engine.num_optimization_profiles)


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
        info = engine_info(self._engine, model.name)
        shape_tensors = sorted(t.name for t in info.tensors if t.is_shape_tensor)
        if shape_tensors:
            raise ServerError(f"model '{model.name}': shape tensors {shape_tensors} are not "
                              "supported by pyserve's TensorRT backend", ErrorCode.UNSUPPORTED)
        self._inputs = info.inputs
        self._outputs = [t for t in info.tensors if not t.is_input]
        check_config(config, info)
        self._profile = instance_profile(config, instance.index, info.num_profiles)
        check_profile(config, info, self._profile)
        self._context = self._engine.create_execution_context()
        if self._context is None:
            raise ServerError(f"model '{model.name}': TensorRT could not create an execution "
                              f"context on GPU {self._device} (out of device memory?)",
                              ErrorCode.UNAVAILABLE)
        if self._profile != 0:
            if not self._context.set_optimization_profile_async(self._profile, 0):
                raise ServerError(f"model '{model.name}': TensorRT refused optimization profile "
                                  f"{self._profile}", ErrorCode.INVALID_ARG)
            _core.cuda_synchronize(0)
        self._returned = returned_outputs(config)
        # numpy dtype of each output's bytes (BF16 as raw uint16 bits)
        self._dtypes = {t.name: NUMPY_DTYPE[t.type_name[len("TYPE_"):]] for t in self._outputs}
        self._staging: dict[str, _core.DeviceBuffer] = {}  # inputs that arrive on the host
        self._results: dict[str, _core.DeviceBuffer] = {}  # outputs, grown as needed

    def execute(self, inputs: dict, batch_sizes: list[int],
                requests: list | None = None) -> dict[str, np.ndarray]:
        # The core's worker thread for this instance already has its GPU current.
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
            if not context.set_input_shape(tensor.name, tuple(shape)):
                raise ServerError(
                    f"model '{self.model.name}': input '{tensor.name}' shape {list(shape)} is "
                    f"outside optimization profile {self._profile} of the engine",
                    ErrorCode.INVALID_ARG)
            if address == 0:  # an empty tensor: the core allocated nothing for it
                address = _grown(self._staging, tensor.name, self._device, 1).ptr
            _set_address(context, tensor.name, address)
        shapes = {}
        for tensor in self._outputs:
            shape = tuple(context.get_tensor_shape(tensor.name))
            if any(d < 0 for d in shape):
                raise ServerError(f"model '{self.model.name}': output '{tensor.name}' has shape "
                                  f"{list(shape)} that depends on the data, which pyserve's "
                                  "TensorRT backend does not support", ErrorCode.UNSUPPORTED)
            shapes[tensor.name] = shape
            size = int(np.prod(shape, dtype=np.int64)) * self._dtypes[tensor.name].itemsize
            buffer = _grown(self._results, tensor.name, self._device, max(size, 1))
            _set_address(context, tensor.name, buffer.ptr)
        if not context.execute_async_v3(stream):
            raise ServerError(f"model '{self.model.name}': TensorRT failed to enqueue the batch",
                              ErrorCode.INTERNAL)
        outputs = {}
        for tensor in self._outputs:
            if tensor.name in self._returned:
                host = np.empty(shapes[tensor.name], self._dtypes[tensor.name])
                self._results[tensor.name].copy_to_host(host, stream, wait=False)
                outputs[tensor.name] = host
        _core.cuda_synchronize(stream)
        return outputs

    def close(self) -> None:
        _core.cuda_set_device(self._device)
        self._context = None
        self._engine = None
        self._staging.clear()
        self._results.clear()

    @staticmethod
    def auto_complete_config(config: pb.ModelConfig, version_dir: Path | None,
                             options: object) -> pb.ModelConfig:
        """Triton's auto-complete from the engine (see tensorrt_config.auto_complete)."""
        if version_dir is None or _core.cuda_device_count() == 0:
            return config  # nothing to read, or no GPU to read it on: loading will say so
        engine = _deserialize(version_dir / config.default_model_filename, config.name, 0)
        return auto_complete(config, engine_info(engine, config.name))


def _set_address(context, name: str, address: int) -> None:
    if not context.set_tensor_address(name, address):
        raise ServerError(f"TensorRT refused the device address of tensor '{name}'",
                          ErrorCode.INTERNAL)


def _grown(buffers: dict, name: str, device: int, size: int) -> "_core.DeviceBuffer":
    """The named device buffer, reallocated when `size` bytes no longer fit (doubling)."""
    buffer = buffers.get(name)
    if buffer is None or buffer.byte_size < size:
        capacity = max(size, 2 * buffer.byte_size if buffer is not None else 0)
        buffers[name] = buffer = _core.DeviceBuffer(device, capacity)
    return buffer
