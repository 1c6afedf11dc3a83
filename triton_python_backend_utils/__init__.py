"""Triton's `triton_python_backend_utils` for models that run under pyserve's Python backend.

An existing Triton `model.py` does `import triton_python_backend_utils as pb_utils` and runs
unchanged: pyserve runs it in-process (no stub process, no shared-memory copies), so the
tensors a model sees are numpy views of the request bytes. Names and semantics follow
Triton's python_backend; what pyserve does not support (BLS, GPU DLPack tensors) raises
NotImplementedError with the reason. Decoupled models answer through
`request.get_response_sender()` (_response_sender.py); custom metrics (_metrics.py) and model
control (_model_control.py) have modules of their own.

BF16 follows Triton: numpy has no bfloat16, so `as_numpy()` refuses a BF16 tensor and
`to_dlpack()` / `from_dlpack()` carry it to and from torch (which must be installed for it).
`Tensor(name, array)` also takes an ml_dtypes.bfloat16 array, or raw uint16 bits with
`triton_dtype` 14.
"""

from __future__ import annotations

import enum
import json
import logging
import struct
from typing import Any

import numpy as np

_log = logging.getLogger("pyserve")

TRITON_STRING_TO_NUMPY = {
    "TYPE_BOOL": bool,
    "TYPE_UINT8": np.uint8,
    "TYPE_UINT16": np.uint16,
    "TYPE_UINT32": np.uint32,
    "TYPE_UINT64": np.uint64,
    "TYPE_INT8": np.int8,
    "TYPE_INT16": np.int16,
    "TYPE_INT32": np.int32,
    "TYPE_INT64": np.int64,
    "TYPE_FP16": np.float16,
    "TYPE_FP32": np.float32,
    "TYPE_FP64": np.float64,
    "TYPE_STRING": np.object_,
}

# Config data type numbers (TYPE_BOOL = 1 ... TYPE_STRING = 13) <-> numpy.
_NUMBER_TO_NUMPY = {
    1: np.bool_, 2: np.uint8, 3: np.uint16, 4: np.uint32, 5: np.uint64, 6: np.int8,
    7: np.int16, 8: np.int32, 9: np.int64, 10: np.float16, 11: np.float32, 12: np.float64,
    13: np.object_,
}
_NUMPY_TO_NUMBER = {np.dtype(t): n for n, t in _NUMBER_TO_NUMPY.items()}
_BF16 = 14  # TYPE_BF16: carried as its raw 16 bits in uint16 arrays

TRITONSERVER_REQUEST_FLAG_SEQUENCE_START = 1
TRITONSERVER_REQUEST_FLAG_SEQUENCE_END = 2
TRITONSERVER_RESPONSE_COMPLETE_FINAL = 1
TRITONSERVER_REQUEST_RELEASE_ALL = 1
TRITONSERVER_REQUEST_RELEASE_RESCHEDULE = 2


def triton_string_to_numpy(triton_type_string: str):
    """"TYPE_FP32" -> np.float32, "TYPE_STRING" -> np.object_."""
    return TRITON_STRING_TO_NUMPY[triton_type_string]


def triton_to_numpy_type(data_type: int):
    """Config data type number -> numpy type (None when unknown), as Triton's helper."""
    return _NUMBER_TO_NUMPY.get(data_type)


def numpy_to_triton_type(data_type) -> int | None:
    """numpy dtype (or type) -> config data type number; bytes and object arrays are 13."""
    try:
        dtype = np.dtype(data_type)
    except TypeError:
        return None
    if dtype.kind == "S":
        return 13
    return _NUMPY_TO_NUMBER.get(dtype)


def serialize_byte_tensor(input_tensor: np.ndarray):
    """BYTES elements as 4-byte little-endian length + bytes, in C order (Triton's helper)."""
    if input_tensor.size == 0:
        return ()
    if input_tensor.dtype == np.object_ or input_tensor.dtype.type == np.bytes_:
        parts = []
        for item in input_tensor.reshape(-1):
            data = item if isinstance(item, bytes) else str(item).encode("utf-8")
            parts.append(struct.pack("<I", len(data)))
            parts.append(data)
        return b"".join(parts)
    return None


def deserialize_bytes_tensor(encoded_tensor) -> np.ndarray:
    """The inverse of serialize_byte_tensor: a 1-D object array of bytes."""
    view = memoryview(encoded_tensor).cast("B")
    items, offset = [], 0
    while offset < len(view):
        (length,) = struct.unpack_from("<I", view, offset)
        offset += 4
        items.append(bytes(view[offset:offset + length]))
        offset += length
    return np.array(items, dtype=np.object_)


# --- errors -------------------------------------------------------------------------------

class _ErrorCode(enum.IntEnum):
    """TRITONSERVER_Error_Code values; exposed as TritonError.INTERNAL etc."""

    UNKNOWN = 0
    INTERNAL = 1
    NOT_FOUND = 2
    INVALID_ARG = 3
    UNAVAILABLE = 4
    UNSUPPORTED = 5
    ALREADY_EXISTS = 6
    CANCELLED = 7


class TritonError:
    """An error for one response: `InferenceResponse(error=TritonError("bad input"))` fails
    only that request, with this message and code (INTERNAL unless given)."""

    UNKNOWN = _ErrorCode.UNKNOWN
    INTERNAL = _ErrorCode.INTERNAL
    NOT_FOUND = _ErrorCode.NOT_FOUND
    INVALID_ARG = _ErrorCode.INVALID_ARG
    UNAVAILABLE = _ErrorCode.UNAVAILABLE
    UNSUPPORTED = _ErrorCode.UNSUPPORTED
    ALREADY_EXISTS = _ErrorCode.ALREADY_EXISTS
    CANCELLED = _ErrorCode.CANCELLED

    def __init__(self, message: str, code: int = _ErrorCode.INTERNAL) -> None:
        if message is None:
            raise TypeError("TritonError: message must not be None")
        self._message = str(message)
        self._code = _ErrorCode(code)

    def message(self) -> str:
        return self._message

    def code(self) -> _ErrorCode:
        return self._code

    def __str__(self) -> str:
        return self._message

    def __repr__(self) -> str:
        return f"TritonError({self._message!r}, {self._code.name})"


class TritonModelException(Exception):
    """Raised by these helpers on misuse; a model may raise it too (fails the whole batch)."""

    def __init__(self, msg: str) -> None:
        super().__init__(msg)
        self._msg = msg

    def message(self) -> str:
        return self._msg


# --- tensors, requests, responses ---------------------------------------------------------

class Tensor:
    """A named tensor over a numpy array. Inputs are read-only views of the request bytes
    (no copy); BYTES tensors are object arrays of `bytes` (outputs may hold `str`)."""

    __slots__ = ("_name", "_array", "_triton_dtype")

    def __init__(self, name: str, numpy_array: Any, triton_dtype: int | None = None) -> None:
        array = numpy_array if isinstance(numpy_array, np.ndarray) else np.asarray(numpy_array)
        kind = array.dtype.kind  # cheap, unlike dtype.name: this runs once per output
        if kind == "V" and array.dtype.name == "bfloat16":  # ml_dtypes' bfloat16
            array, triton_dtype, kind = array.view(np.uint16), _BF16, "u"
        if kind == "U" or kind == "V":
            raise TritonModelException(
                "Tensor dtype used for numpy_array is not support by Python backend. "
                "Please use np.object_ instead.")
        if triton_dtype is None:
            pass  # found from the array when asked for (triton_dtype())
        elif triton_dtype == _BF16:
            if array.dtype.itemsize != 2:
                raise TritonModelException(
                    f"a BF16 tensor needs 2-byte elements (raw bfloat16 bits), got {array.dtype}")
            array = array.view(np.uint16)
        elif triton_dtype is not None:
            wanted = triton_to_numpy_type(triton_dtype)
            if wanted is not None and array.dtype != wanted:
                array = array.view(wanted)  # reinterpret, as Triton does
        self._name = name
        self._array = array
        self._triton_dtype = triton_dtype

    @classmethod
    def _wrap(cls, name: str, array: np.ndarray, triton_dtype: int | None = None) -> "Tensor":
        """The backend's fast path for inputs: no checks, no conversion."""
        tensor = cls.__new__(cls)
        tensor._name = name
        tensor._array = array
        tensor._triton_dtype = triton_dtype
        return tensor

    def name(self) -> str:
        return self._name

    def as_numpy(self) -> np.ndarray:
        if self._triton_dtype == _BF16:
            raise TritonModelException(
                "tensor dtype is bf16 and cannot be converted to numpy. Use Tensor.to_dlpack() "
                "and Tensor.from_dlpack() instead.")
        return self._array

    def triton_dtype(self) -> int | None:
        if self._triton_dtype is None:
            self._triton_dtype = numpy_to_triton_type(self._array.dtype)
        return self._triton_dtype

    def shape(self) -> list[int]:
        return list(self._array.shape)

    def is_cpu(self) -> bool:
        return True  # pyserve hands Python models host memory

    def to_dlpack(self):
        """A DLPack capsule of the tensor's memory, no copy. Request inputs are read-only, which
        numpy will not export, so they (and BF16 tensors, which numpy cannot describe) go
        through torch, as the models that call this use torch anyway."""
        if self._triton_dtype == _BF16 or not self._array.flags.writeable:
            import torch
            import torch.utils.dlpack

            tensor = _torch_from_numpy(self._array)
            if self._triton_dtype == _BF16:
                tensor = tensor.view(torch.int16).view(torch.bfloat16)
            return torch.utils.dlpack.to_dlpack(tensor)
        try:
            return self._array.__dlpack__()
        except (AttributeError, BufferError, TypeError) as e:
            raise NotImplementedError(f"Tensor.to_dlpack is not available here: {e}") from None

    @staticmethod
    def from_dlpack(tensor_name: str, dlpack_object) -> "Tensor":
        """A Tensor over an object that speaks DLPack, or a DLPack capsule (e.g. from
        torch.utils.dlpack.to_dlpack). Host memory is shared; device memory is copied to the
        host, where pyserve's responses live."""
        if not hasattr(dlpack_object, "__dlpack__") or _is_torch_tensor(dlpack_object):
            try:
                import torch
                import torch.utils.dlpack
            except ImportError:
                raise NotImplementedError(
                    "Tensor.from_dlpack of a bare DLPack capsule needs torch installed") from None
            tensor = (dlpack_object if isinstance(dlpack_object, torch.Tensor)
                      else torch.utils.dlpack.from_dlpack(dlpack_object))
            tensor = tensor.detach().cpu()
            if tensor.dtype == torch.bfloat16:
                return Tensor(tensor_name, tensor.view(torch.int16).numpy(), _BF16)
            return Tensor(tensor_name, tensor.numpy())
        try:
            array = np.from_dlpack(dlpack_object)
        except (BufferError, RuntimeError, TypeError) as e:
            raise NotImplementedError(
                f"Tensor.from_dlpack supports host memory only for non-torch objects: {e}") from None
        return Tensor(tensor_name, array)

    def __repr__(self) -> str:
        return f"Tensor({self._name!r}, shape={list(self._array.shape)}, dtype={self._array.dtype})"


def _is_torch_tensor(value) -> bool:
    return type(value).__module__.startswith("torch")


def _torch_from_numpy(array: np.ndarray):
    """torch.from_numpy, quiet about read-only arrays (torch warns that writes would reach the
    array; for request inputs that is the point: no copy)."""
    import warnings

    import torch

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)
        return torch.from_numpy(array)


class InferenceRequest:
    """One request of the batch handed to `TritonPythonModel.execute`, or one a model makes
    to call another model (Triton's BLS: `exec`, `async_exec`)."""

    def __init__(self, model_name: str = "", inputs: list[Tensor] | None = None,
                 requested_output_names: list[str] | None = None, request_id: str = "",
                 correlation_id: int | str = 0, flags: int = 0, timeout: int = 0,
                 model_version: int = -1, parameters: dict | str | None = None,
                 **_ignored: Any) -> None:
        self._model_name = model_name
        self._inputs = list(inputs or [])
        self._requested_output_names = list(requested_output_names or [])
        self._request_id = request_id
        self._correlation_id = correlation_id
        self._flags = flags
        self._timeout = timeout
        self._model_version = model_version
        # A dict is written as JSON when parameters() asks (most models never do).
        self._parameters = "{}" if parameters is None else parameters
        self._response_sender = None  # set by the backend for a decoupled model's requests
        self._release_flags = TRITONSERVER_REQUEST_RELEASE_ALL

        self._cancellation = None  # (batch cancellation, index), set by the backend

    @classmethod
    def _received(cls, model_name: str, inputs: list, requested_output_names: list,
                  request_id: str, model_version: int, parameters: dict,
                  correlation_id: int | str = 0, flags: int = 0,
                  response_sender=None, cancellation=None) -> "InferenceRequest":
        """The backend's fast path for the requests of a batch: the lists are the request's
        own (not copied)."""
        request = cls.__new__(cls)
        request._model_name = model_name
        request._inputs = inputs
        request._requested_output_names = requested_output_names
        request._request_id = request_id
        request._correlation_id = correlation_id
        request._flags = flags
        request._timeout = 0
        request._model_version = model_version
        request._parameters = parameters
        request._response_sender = response_sender
        request._release_flags = TRITONSERVER_REQUEST_RELEASE_ALL

        request._cancellation = cancellation
        return request

    def inputs(self) -> list[Tensor]:
        return self._inputs

    def get_input_tensor_by_name(self, name: str) -> Tensor | None:
        for tensor in self._inputs:
            if tensor._name == name:
                return tensor
        return None

    def requested_output_names(self) -> list[str]:
        """The outputs to compute; every output of the config (pyserve selects what each
        client asked for after execute)."""
        return self._requested_output_names

    def request_id(self) -> str:
        return self._request_id

    def correlation_id(self) -> int | str:
        return self._correlation_id

    def flags(self) -> int:
        return self._flags

    def timeout(self) -> int:
        return self._timeout

    def model_name(self) -> str:
        return self._model_name

    def model_version(self) -> int:
        return self._model_version

    def parameters(self) -> str:
        """The request's parameters as a JSON object string."""
        if not isinstance(self._parameters, str):
            self._parameters = json.dumps(self._parameters)
        return self._parameters

    def is_cancelled(self) -> bool:
        """The client cancelled the request, or went away, while the model runs it."""
        if self._response_sender is not None:
            return self._response_sender.is_cancelled()
        if self._cancellation is not None:
            batch, index = self._cancellation
            return batch.is_cancelled(index)
        return False

    def set_release_flags(self, flags: int) -> None:
        """TRITONSERVER_REQUEST_RELEASE_RESCHEDULE: run this request again (a model with
        sequence_batching { iterative_sequence: true }); execute returns None for it."""
        self._release_flags = flags

    def get_response_sender(self):
        if self._response_sender is not None:
            return self._response_sender
        raise NotImplementedError(
            "decoupled models (InferenceRequest.get_response_sender) are not supported by "
            "pyserve's Python backend: return one InferenceResponse per request from execute")

    # --- BLS: this request sent to `model_name` (pyserve/bls.py) ---------------------------

    def exec(self, decoupled: bool = False):
        """The target model's response (its error set when the call failed)."""
        from pyserve import bls

        if decoupled:
            return bls.execute_decoupled(self)
        return bls.execute(self)

    def async_exec(self, decoupled: bool = False):
        """An awaitable of the response, for `async def execute`."""
        from pyserve import bls

        if decoupled:
            return bls.execute_decoupled_async(self)
        return bls.execute_async(self)


class InferenceResponse:
    """The response to one request: its output tensors, or an error that fails only it."""

    def __init__(self, output_tensors: list[Tensor] | None = None,
                 error: TritonError | None = None, parameters: dict | str | None = None) -> None:
        if output_tensors is None:
            output_tensors = []
        if type(output_tensors) is not list:
            raise TritonModelException('"output_tensors" must be a list.')
        self._output_tensors = output_tensors
        self._error = error
        self._parameters = parameters

    def output_tensors(self) -> list[Tensor]:
        return self._output_tensors

    def has_error(self) -> bool:
        return self._error is not None

    def error(self) -> TritonError | None:
        return self._error


def get_input_tensor_by_name(inference_request: InferenceRequest, name: str) -> Tensor | None:
    return inference_request.get_input_tensor_by_name(name)


def get_output_tensor_by_name(inference_response: InferenceResponse, name: str) -> Tensor | None:
    for tensor in inference_response.output_tensors():
        if tensor.name() == name:
            return tensor
    return None


def get_input_config_by_name(model_config: dict, name: str) -> dict | None:
    for properties in model_config.get("input", []):
        if properties["name"] == name:
            return properties
    return None


def get_output_config_by_name(model_config: dict, name: str) -> dict | None:
    for properties in model_config.get("output", []):
        if properties["name"] == name:
            return properties
    return None


def using_decoupled_model_transaction_policy(model_config: dict) -> bool:
    return bool(model_config.get("model_transaction_policy", {}).get("decoupled", False))


# --- auto-complete ------------------------------------------------------------------------

class ModelConfig:
    """What `TritonPythonModel.auto_complete_config(auto_complete_model_config)` receives:
    the model's configuration, to which the model may add inputs, outputs, a max batch size,
    dynamic batching and a transaction policy (Triton's rules and messages)."""

    def __init__(self, model_config: str | dict) -> None:
        self._model_config = (json.loads(model_config) if isinstance(model_config, str)
                              else model_config)
        self._model_config.setdefault("input", [])
        self._model_config.setdefault("output", [])
        self._model_config.setdefault("max_batch_size", 0)

    def as_dict(self) -> dict:
        return self._model_config

    def _name(self) -> str:
        return self._model_config.get("name", "")

    def set_max_batch_size(self, max_batch_size: int) -> None:
        if self._model_config["max_batch_size"] > max_batch_size:
            raise ValueError(
                f"configuration specified max_batch_size {self._model_config['max_batch_size']}"
                f", but in auto-complete-config function for model '{self._name()}' specified "
                f"max_batch_size {max_batch_size}")
        self._model_config["max_batch_size"] = max_batch_size

    def set_dynamic_batching(self) -> None:
        for scheduler in ("sequence_batching", "ensemble_scheduling"):
            if self._model_config.get(scheduler):
                raise ValueError(
                    f"Configuration specified scheduling_choice as '{scheduler}', but "
                    f"auto-complete-config function for model '{self._name()}' tries to set "
                    "scheduling_choice as 'dynamic_batching'")
        if not self._model_config.get("dynamic_batching"):
            self._model_config["dynamic_batching"] = {}

    def add_input(self, input: dict) -> None:  # noqa: A002 - Triton's parameter name
        self._add("input", input, ("name", "data_type", "dims", "optional"))

    def add_output(self, output: dict) -> None:
        self._add("output", output, ("name", "data_type", "dims"))

    def _add(self, kind: str, tensor: dict, valid: tuple[str, ...]) -> None:
        name = tensor.get("name")
        for key in tensor:
            if key not in valid:
                listed = ", ".join(f"'{v}'" for v in valid[:-1]) + f" and '{valid[-1]}'"
                raise ValueError(
                    f"{kind} '{name}' in auto-complete-config function for model "
                    f"'{self._name()}' contains property other than {listed}.")
        if "name" not in tensor:
            raise ValueError(f"{kind} in auto-complete-config function for model "
                             f"'{self._name()}' is missing 'name' property.")
        for key in ("data_type", "dims"):
            if key not in tensor:
                raise ValueError(f"{kind} '{name}' in auto-complete-config function for model "
                                 f"'{self._name()}' is missing '{key}' property.")
        for current in self._model_config[kind]:
            if current["name"] != name:
                continue
            current_type = current.get("data_type", "TYPE_INVALID")
            if current_type != "TYPE_INVALID" and current_type != tensor["data_type"]:
                raise ValueError(
                    f"unable to load model '{self._name()}', configuration expects datatype "
                    f"{current_type} for {kind} '{name}', model provides {tensor['data_type']}")
            if current.get("dims") and list(current["dims"]) != list(tensor["dims"]):
                raise ValueError(
                    f"model '{self._name()}', tensor '{name}': the model expects dims "
                    f"{list(tensor['dims'])} but the model configuration specifies dims "
                    f"{list(current['dims'])}")
            if ("optional" in tensor and "optional" in current
                    and bool(current["optional"]) != bool(tensor["optional"])):
                raise ValueError(
                    f"model '{self._name()}', tensor '{name}': the model expects optional "
                    f"{tensor['optional']} but the model configuration specifies optional "
                    f"{current['optional']}")
            current["data_type"] = tensor["data_type"]
            current["dims"] = list(tensor["dims"])
            if "optional" in tensor:
                current["optional"] = tensor["optional"]
            return
        self._model_config[kind].append(dict(tensor, dims=list(tensor["dims"])))

    def set_model_transaction_policy(self, transaction_policy_dict: dict) -> None:
        for key in transaction_policy_dict:
            if key != "decoupled":
                raise ValueError(
                    "model transaction property in auto-complete-config function for model "
                    f"'{self._name()}' contains property other than 'decoupled'.")
        policy = self._model_config.setdefault("model_transaction_policy", {})
        if "decoupled" in transaction_policy_dict:
            wanted = transaction_policy_dict["decoupled"]
            if "decoupled" in policy and policy["decoupled"] != wanted:
                raise ValueError(
                    f"trying to change decoupled property in auto-complete-config for model "
                    f"'{self._name()}', which is already set to '{policy['decoupled']}'.")
            policy["decoupled"] = wanted


# --- logging ------------------------------------------------------------------------------

class LogLevel(enum.IntEnum):
    INFO = 0
    WARNING = 1
    ERROR = 2
    VERBOSE = 3


_LEVELS = {LogLevel.INFO: logging.INFO, LogLevel.WARNING: logging.WARNING,
           LogLevel.ERROR: logging.ERROR, LogLevel.VERBOSE: logging.DEBUG}


class Logger:
    """`pb_utils.Logger.log_info("...")`: model logs go to the server's `pyserve` logger."""

    @staticmethod
    def log(message: str, level: LogLevel = LogLevel.INFO) -> None:
        _log.log(_LEVELS.get(level, logging.INFO), "%s", message, stacklevel=3)

    @staticmethod
    def log_info(message: str) -> None:
        _log.info("%s", message, stacklevel=2)

    @staticmethod
    def log_warn(message: str) -> None:
        _log.warning("%s", message, stacklevel=2)

    @staticmethod
    def log_error(message: str) -> None:
        _log.error("%s", message, stacklevel=2)

    @staticmethod
    def log_verbose(message: str) -> None:
        _log.debug("%s", message, stacklevel=2)


# --- custom metrics, model control (their own modules) ---------------------------------

from triton_python_backend_utils._metrics import Metric, MetricFamily  # noqa: E402
from triton_python_backend_utils._model_control import (  # noqa: E402
    is_model_ready, load_model, unload_model)


__all__ = [
    "InferenceRequest", "InferenceResponse", "Logger", "LogLevel", "Metric", "MetricFamily",
    "ModelConfig", "Tensor", "TritonError", "TritonModelException",
    "TRITON_STRING_TO_NUMPY", "deserialize_bytes_tensor", "get_input_config_by_name",
    "get_input_tensor_by_name", "get_output_config_by_name", "get_output_tensor_by_name",
    "is_model_ready", "load_model", "numpy_to_triton_type", "unload_model", "serialize_byte_tensor", "triton_string_to_numpy",
    "triton_to_numpy_type", "using_decoupled_model_transaction_policy",
]
