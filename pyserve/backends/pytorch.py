"""PyTorch backend: TorchScript (`platform: "pytorch_libtorch"`, file model.pt) and AOTInductor
packages (`platform: "torch_aoti"`, file model.pt2), both `backend: "pytorch"`.

Input and output names follow Triton's pytorch_backend (libtorch.cc GetNamingConvention):

- inputs: if every config input is an argument name of `forward()`, each feeds that argument;
  else if every name has the form `<name>__<index>` (digits after the first `__`), the index
  is the argument position; else the config order is the argument order. A `forward()` with a
  single `Dict[str, Tensor]` argument gets one dict keyed by the config input names.
  AOTInductor packages carry no argument names, so only the last two rules apply there.
- outputs: `<name>__<index>` gives the position in the returned tuple/list, else config order;
  a single tensor is output 0.
- sequence models: the control inputs and implicit states (sequence_batching.state), which
  the core fills in, are arguments too, placed by their forward() argument name or their
  `__<index>`, else after the config's inputs; with implicit state every input, output and
  state must follow `<name>__<index>` (Triton's rule), and the state outputs are taken from
  their positions in the result.

Config `parameters` as Triton reads them: INFERENCE_MODE, DISABLE_OPTIMIZED_EXECUTION,
DISABLE_CUDNN, ENABLE_CACHE_CLEANING, ENABLE_WEIGHT_SHARING (instances on one device share one
loaded module), the TorchScript switches ENABLE_JIT_PROFILING, ENABLE_JIT_EXECUTOR and
ENABLE_TENSOR_FUSER (torch-wide, set before each execute when given), and
INTRA_OP_THREAD_COUNT / INTER_OP_THREAD_COUNT (torch-wide, the first model to give one wins).

BYTES tensors travel as TorchScript `List[str]` (Triton's rule: one dimension, UTF-8 here
because TorchScript strings are Python `str`); AOTInductor takes tensors only.

Inputs are zero-copy: `torch.from_numpy` on the batch's read-only views. torch warns once per
process about non-writable arrays; that one warning is filtered below because the views are
read-only on purpose. As in Triton (which wraps the request buffers with `from_blob`), a model
that writes into its inputs in place writes into the request buffers.

On a GPU instance the core copies the batch to the device on the instance's CUDA stream: the
module runs on that same stream (a torch.cuda.ExternalStream) over those device buffers, and its
outputs are copied back on it, so the instance waits for the GPU once per batch. A model whose
inputs are all strings runs on a stream of its own.
"""

from __future__ import annotations

import logging
import threading
import warnings
import weakref
from contextlib import ExitStack, contextmanager
from pathlib import Path

import numpy as np
import torch

from pyserve import _core
from pyserve.backends.base import Backend, InstanceSpec, ModelContext, int_parameter
from pyserve.errors import ErrorCode, ServerError
from pyserve.protocol import pb

warnings.filterwarnings("ignore", message="The given NumPy array is not writable",
                        category=UserWarning)

AOTI_PLATFORM = "torch_aoti"
_DEFAULT_FILE = {AOTI_PLATFORM: "model.pt2"}  # every other platform: model.pt

_DATA_TYPE = pb.ModelInput.DESCRIPTOR.fields_by_name["data_type"].enum_type
_TORCH_TYPES: dict[str, torch.dtype] = {
    "TYPE_BOOL": torch.bool, "TYPE_UINT8": torch.uint8, "TYPE_INT8": torch.int8,
    "TYPE_INT16": torch.int16, "TYPE_INT32": torch.int32, "TYPE_INT64": torch.int64,
    "TYPE_FP16": torch.float16, "TYPE_FP32": torch.float32, "TYPE_FP64": torch.float64,
    "TYPE_BF16": torch.bfloat16,
}
# Unsigned 16/32/64-bit tensors exist (with few kernels) in recent torch releases only.
for _name, _attr in (("TYPE_UINT16", "uint16"), ("TYPE_UINT32", "uint32"), ("TYPE_UINT64", "uint64")):
    if hasattr(torch, _attr):
        _TORCH_TYPES[_name] = getattr(torch, _attr)
_CONFIG_TYPES = {dtype: name for name, dtype in _TORCH_TYPES.items()}
_STRING = "TYPE_STRING"
# Triton's TorchScript switches: parameter -> torch's process-wide setter.
_JIT_SWITCHES = {"ENABLE_JIT_PROFILING": torch._C._jit_set_profiling_mode,
                 "ENABLE_JIT_EXECUTOR": torch._C._jit_set_profiling_executor,
                 "ENABLE_TENSOR_FUSER": torch._C._jit_set_texpr_fuser_enabled}


def _current_switch(setter) -> bool:
    previous = setter(True)
    setter(previous)
    return previous if previous is not None else torch._C._jit_texpr_fuser_enabled()


class _ProcessFlags:
    """torch's cuDNN and TorchScript switches are process-wide while pyserve runs many models
    on many threads at once. Executions that need values other than the process's run alone
    and put the process's values back after; the others run together (a readers-writer lock
    that lets a waiting exclusive execution go first)."""

    def __init__(self) -> None:
        # The process's values, read once (reading a switch means setting it twice).
        self.cudnn = torch.backends.cudnn.enabled
        self.switches = {setter: _current_switch(setter) for setter in _JIT_SWITCHES.values()}
        self._lock = threading.Condition()
        self._shared = 0
        self._exclusive = False
        self._waiting = 0  # exclusive executions waiting

    @contextmanager
    def shared(self):
        with self._lock:
            self._lock.wait_for(lambda: not self._exclusive and not self._waiting)
            self._shared += 1
        try:
            yield
        finally:
            with self._lock:
                self._shared -= 1
                self._lock.notify_all()

    @contextmanager
    def exclusive(self, cudnn: bool, switches: list[tuple]):
        with self._lock:
            self._waiting += 1
            self._lock.wait_for(lambda: not self._exclusive and not self._shared)
            self._waiting -= 1
            self._exclusive = True
        try:
            torch.backends.cudnn.enabled = cudnn
            for setter, value in switches:
                setter(value)
            yield
        finally:
            torch.backends.cudnn.enabled = self.cudnn
            for setter, _ in switches:
                setter(self.switches[setter])
            with self._lock:
                self._exclusive = False
                self._lock.notify_all()


_FLAGS = _ProcessFlags()
# ENABLE_WEIGHT_SHARING: (model file, its mtime, device) -> the module instances share.
_SHARED_MODULES: weakref.WeakValueDictionary = weakref.WeakValueDictionary()
_thread_counts_set: set[str] = set()  # which of torch's process-wide thread counts are set
log = logging.getLogger("pyserve")
_TRUE = {"true", "1", "on", "yes", "y"}
_FALSE = {"false", "0", "off", "no", "n"}


def _type_name(data_type: int) -> str:
    return _DATA_TYPE.values_by_number[data_type].name


def _named_index(name: str) -> int | None:
    """The index of a `<name>__<index>` name: digits after the first `__` (Triton's find), or
    None. Like Triton's atoi, an empty index reads as 0."""
    start = name.find("__")
    if start < 0:
        return None
    digits = name[start + 2:]
    if digits and not (digits.isascii() and digits.isdigit()):
        return None
    return int(digits or 0)


class PyTorchBackend(Backend):
    def __init__(self, model: ModelContext, instance: InstanceSpec) -> None:
        super().__init__(model, instance)
        config = model.config
        self._aoti = config.platform == AOTI_PLATFORM
        filename = config.default_model_filename or _DEFAULT_FILE.get(config.platform, "model.pt")
        path = model.version_dir / filename
        if not path.is_file():
            raise ServerError(f"unable to find '{path}' for model instance '{model.name}'",
                              ErrorCode.UNAVAILABLE)
        parameters = {key: value.string_value for key, value in config.parameters.items()}
        self._inference_mode = self._bool_parameter(parameters, "INFERENCE_MODE", True)
        self._optimized = not self._bool_parameter(parameters, "DISABLE_OPTIMIZED_EXECUTION", False)
        self._clean_cache = self._bool_parameter(parameters, "ENABLE_CACHE_CLEANING", False)
        self._cudnn = not self._bool_parameter(parameters, "DISABLE_CUDNN", False)
        self._share_weights = self._bool_parameter(parameters, "ENABLE_WEIGHT_SHARING", False)
        self._jit_switches = [(setter, self._bool_parameter(parameters, key, False))
                              for key, setter in _JIT_SWITCHES.items() if key in parameters]
        self._own_flags = self._cudnn != _FLAGS.cudnn or any(
            value != _FLAGS.switches[setter] for setter, value in self._jit_switches)
        self._set_thread_counts()

        self.device = self._device()
        self.device_inputs = self.device.type == "cuda"
        self._stream = torch.cuda.Stream(device=self.device) if self.device_inputs else None
        self._core_stream: torch.cuda.ExternalStream | None = None
        self._input_types = {io.name: _type_name(io.data_type) for io in config.input}
        self._output_types = {io.name: _type_name(io.data_type) for io in config.output}
        # Sequence models also take the control inputs and the implicit states, which the core
        # fills in, and give back the state outputs (Triton's expected input count and names).
        sequence = config.sequence_batching
        self._states = list(sequence.state)
        self._controls = [c.name for c in sequence.control_input]
        self._state_types = {s.input_name: _type_name(s.data_type) for s in self._states}
        self._check_types()
        if self._aoti:
            self._module = self._load_aoti(path)
            argument_names: list[str] = []
            self._dict_input = False
        else:
            self._module = self._load_torchscript(path)
            argument_names, self._dict_input = self._forward_arguments()
        self._argument_count = len(argument_names)
        self._input_positions = self._map_inputs(argument_names)
        self._output_positions = self._map_outputs()
        if self._stream is not None:
            # The weights were copied on the device's default stream; the instance's own
            # stream does not wait for that stream by itself.
            torch.cuda.synchronize(self.device)

    # --- loading ------------------------------------------------------------------------

    def _bool_parameter(self, parameters: dict[str, str], key: str, default: bool) -> bool:
        if key not in parameters:
            return default
        value = parameters[key].strip().lower()
        if value in _TRUE:
            return True
        if value in _FALSE:
            return False
        raise ServerError(f"failed to convert '{parameters[key]}' to a boolean value for "
                          f"parameter '{key}' of model '{self.model.name}'")

    def _set_thread_counts(self) -> None:
        """Triton sets torch's thread pools once per process, from the first model asking."""
        for key, setter in (("INTRA_OP_THREAD_COUNT", torch.set_num_threads),
                            ("INTER_OP_THREAD_COUNT", torch.set_num_interop_threads)):
            count = int_parameter(self.model.config, key)
            if not count or key in _thread_counts_set:
                continue
            try:
                setter(count)
            except RuntimeError as e:  # the inter-op pool is fixed once torch has used it
                log.warning("model '%s': %s=%d not applied: %s", self.model.name, key, count, e)
            _thread_counts_set.add(key)

    def _device(self) -> torch.device:
        if self.instance.kind != "GPU":
            return torch.device("cpu")
        if not torch.cuda.is_available():
            raise ServerError(
                f"model '{self.model.name}' asks for a GPU instance but the installed torch "
                f"({torch.__version__}) has no CUDA support: install a CUDA build of torch",
                ErrorCode.UNAVAILABLE)
        if self.instance.device_id >= torch.cuda.device_count():
            raise ServerError(
                f"model '{self.model.name}' asks for GPU {self.instance.device_id} but torch "
                f"sees {torch.cuda.device_count()} GPU(s)", ErrorCode.UNAVAILABLE)
        return torch.device("cuda", self.instance.device_id)

    def _check_types(self) -> None:
        for kind, types in (("input", self._input_types), ("output", self._output_types)):
            for name, type_name in types.items():
                if type_name in _TORCH_TYPES:
                    continue
                if type_name == _STRING and not self._aoti:
                    continue
                raise ServerError(f"unsupported datatype {type_name} for {kind} '{name}' for "
                                  f"model '{self.model.name}'", ErrorCode.INTERNAL)

    def _load_torchscript(self, path: Path):
        key = (str(path), path.stat().st_mtime_ns, str(self.device))
        shared = _SHARED_MODULES.get(key) if self._share_weights else None
        if shared is not None:
            return shared
        try:
            with warnings.catch_warnings():  # torch.jit.load's own deprecation notice
                warnings.simplefilter("ignore", DeprecationWarning)
                module = torch.jit.load(str(path), map_location=self.device)
        except Exception as e:  # noqa: BLE001 - torch raises RuntimeError and its own types
            raise ServerError(f"failed to load model '{self.model.name}': {e}",
                              ErrorCode.INTERNAL) from None
        module.eval()
        if self._share_weights:
            _SHARED_MODULES[key] = module
        return module

    def _load_aoti(self, path: Path):
        try:  # a submodule that `import torch` does not import: ask for it by name
            from torch._inductor import aoti_load_package as load
        except ImportError as e:
            raise ServerError(
                f"model '{self.model.name}': the installed torch ({torch.__version__}) cannot "
                f"load AOTInductor packages (torch._inductor.aoti_load_package): {e}",
                ErrorCode.UNSUPPORTED) from None
        device_index = self.device.index if self.device.type == "cuda" else -1
        try:
            module = load(str(path), device_index=device_index)
        except Exception as e:  # noqa: BLE001
            raise ServerError(f"failed to load model '{self.model.name}': {e}",
                              ErrorCode.INTERNAL) from None
        try:
            package_device = module.get_metadata().get("AOTI_DEVICE_KEY", "")
        except Exception:  # noqa: BLE001 - older packages may lack metadata
            package_device = ""
        if package_device and package_device != self.device.type:
            raise ServerError(
                f"model '{self.model.name}': the AOTInductor package was compiled for "
                f"'{package_device}' but the instance runs on '{self.device.type}'",
                ErrorCode.INVALID_ARG)
        return module

    def _forward_arguments(self) -> tuple[list[str], bool]:
        """forward()'s argument names (without self) and whether it takes one Dict input;
        Triton's ValidateInputs."""
        try:
            arguments = list(self._module.forward.schema.arguments)
        except Exception as e:  # noqa: BLE001
            raise ServerError(f"model '{self.model.name}': unable to read the forward() "
                              f"signature: {e}", ErrorCode.INTERNAL) from None
        if arguments and arguments[0].type.kind() == "ClassType":
            arguments = arguments[1:]
        if len(arguments) == 1 and arguments[0].type.kind() == "DictType":
            for name, type_name in self._input_types.items():
                if type_name == _STRING:
                    raise ServerError(
                        f"input '{name}' of model '{self.model.name}' is BYTES, but a "
                        "Dict(str, Tensor) input holds tensors only", ErrorCode.INTERNAL)
            return [arguments[0].name], True
        if any(a.type.kind() == "DictType" for a in arguments[1:]):
            raise ServerError("Multiple inputs of kind DictType were detected. Only a single "
                              "input of type Dict(str, Tensor) is supported.",
                              ErrorCode.INTERNAL)
        for argument in arguments:
            if argument.type.kind() not in ("TensorType", "ListType"):
                raise ServerError(
                    f"An input of type '{argument.type}' was detected in the model. Only a "
                    "single input of type Dict(str, Tensor) or input(s) of type Tensor are "
                    "supported.", ErrorCode.INTERNAL)
        expected = len(self._input_types) + len(self._controls) + len(self._states)
        if len(arguments) != expected:
            raise ServerError(
                f"unable to load model '{self.model.name}', configuration expects "
                f"{expected} inputs, model provides {len(arguments)}")
        return [a.name for a in arguments], False

    def _map_inputs(self, argument_names: list[str]) -> dict[str, int]:
        names = list(self._input_types)
        if not names:
            raise ServerError("model configuration must contain at least one input, none "
                              "were specified.", ErrorCode.INTERNAL)
        if self._dict_input:
            return {name: i for i, name in enumerate(names)}
        extra = self._controls + [s.input_name for s in self._states]
        if argument_names and all(name in argument_names for name in names):
            self._check_state_naming(False)  # Triton's forward-argument convention
            return ({name: argument_names.index(name) for name in names}
                    | self._extra_positions(extra, argument_names))
        positions = self._named_indices("input", names)
        self._check_state_naming(all(_named_index(name) is not None for name in names))
        positions |= self._extra_positions(extra, argument_names, start=len(names))
        names = names + extra
        count = self._argument_count or len(names)  # AOTI: as many arguments as inputs
        if len(set(positions.values())) != len(names) or max(positions.values()) >= count:
            raise ServerError(
                f"model '{self.model.name}': input names {names} map to argument positions "
                f"{list(positions.values())}, but forward() takes {count} arguments",
                ErrorCode.INVALID_ARG)
        return positions

    def _map_outputs(self) -> dict[str, int]:
        names = list(self._output_types)
        if not names:
            raise ServerError("model configuration must contain at least one output, none "
                              "were specified.", ErrorCode.INTERNAL)
        positions = self._named_indices("output", names)
        if self._states:
            self._check_state_naming(all(_named_index(name) is not None for name in names))
            for state in self._states:
                self._output_types.setdefault(state.output_name, _type_name(state.data_type))
                positions.setdefault(state.output_name, _named_index(state.output_name))
        return positions

    def _check_state_naming(self, named_index: bool) -> None:
        """With implicit state, Triton asks every input, output and state for the
        `<name>__<index>` convention."""
        if not self._states:
            return
        model = self.model.name
        if not named_index:
            raise ServerError(
                f"PyTorch model '{model}' is using sequence batching with state but not all "
                "inputs and outputs follow the <name>__<index> naming convention. ",
                ErrorCode.INVALID_ARG)
        for state in self._states:
            for name in (state.input_name, state.output_name):
                if _named_index(name) is None:
                    raise ServerError(
                        f"PyTorch model '{model}' is using sequence batching with state but "
                        f"state '{name}' does not follow the <name>__<index> naming "
                        "convention. ", ErrorCode.INVALID_ARG)

    @staticmethod
    def _extra_positions(names: list[str], argument_names: list[str],
                         start: int = 0) -> dict[str, int]:
        """Positions of the inputs the core adds (controls, states): their forward() argument,
        else their `__<index>`, else after the config's inputs in order."""
        positions = {}
        for offset, name in enumerate(names):
            index = _named_index(name)
            positions[name] = (argument_names.index(name) if name in argument_names
                               else index if index is not None else start + offset)
        return positions

    @staticmethod
    def _named_indices(kind: str, names: list[str]) -> dict[str, int]:
        """`<name>__<index>` positions when every name has one, else the config order."""
        indices = [_named_index(name) for name in names]
        if all(index is not None for index in indices):
            return dict(zip(names, indices))
        return {name: i for i, name in enumerate(names)}

    # --- execution ----------------------------------------------------------------------

    def execute(self, inputs: dict[str, np.ndarray], batch_sizes: list[int],
                requests: list | None = None) -> dict[str, np.ndarray]:
        with ExitStack() as stack:
            if self._stream is not None:
                stream = self._compute_stream(inputs)
                stack.enter_context(torch.cuda.device(self.device))
                stack.enter_context(torch.cuda.stream(stream))
                # On every exit, errors included: queued work reads the request buffers
                # (reused once this returns) and writes the outputs read below.
                stack.callback(stream.synchronize)
            stack.enter_context(torch.inference_mode() if self._inference_mode
                                else torch.no_grad())
            if not self._optimized and not self._aoti:
                stack.enter_context(torch.jit.optimized_execution(self._optimized))
            # Triton sets these before each execute; here they hold for the whole execute.
            stack.enter_context(_FLAGS.exclusive(self._cudnn, self._jit_switches)
                                if self._own_flags else _FLAGS.shared())
            fed = {name: self._to_torch(name, value) for name, value in inputs.items()}
            try:
                if self._dict_input:
                    result = self._module(fed)
                else:
                    arguments = [None] * (self._argument_count or len(self._input_positions))
                    for name, value in fed.items():
                        arguments[self._input_positions[name]] = value
                    result = self._module(*arguments)
            except Exception as e:  # noqa: BLE001 - TorchScript raises torch.jit.Error etc.
                raise ServerError(f"PyTorch execute failure: {e}", ErrorCode.INTERNAL) from None
            results = self._result_list(result)
            outputs = {name: self._to_numpy(name, results[position])
                       for name, position in self._output_positions.items()}
        if self._stream is not None and self._clean_cache:
            torch.cuda.empty_cache()
        return {name: (value() if callable(value) else value) for name, value in outputs.items()}

    def _compute_stream(self, inputs: dict):
        """The core's stream, where it copied the inputs to the device, else the instance's own."""
        handle = next((value.stream for value in inputs.values()
                       if isinstance(value, _core.DeviceTensor)), None)
        if handle is None:
            return self._stream
        if self._core_stream is None or self._core_stream.cuda_stream != handle:
            self._core_stream = torch.cuda.ExternalStream(handle, device=self.device)
        return self._core_stream

    def _to_torch(self, name: str, value):
        type_name = self._input_types.get(name) or self._state_types.get(name)
        if isinstance(value, _core.DeviceTensor):
            if value.byte_size == 0:  # no device memory behind an empty tensor
                value = value.host
            else:  # already on the device: wrap the core's buffer (__cuda_array_interface__)
                tensor = torch.as_tensor(value, device=self.device)
                return tensor.view(torch.bfloat16) if type_name == "TYPE_BF16" else tensor
        if type_name == _STRING:
            try:
                return [v.decode() if isinstance(v, bytes) else str(v) for v in value.reshape(-1)]
            except UnicodeDecodeError as e:
                raise ServerError(f"input '{name}': TorchScript strings must be UTF-8 ({e})") from None
        if type_name == "TYPE_BF16":  # BF16 arrives as its raw 16 bits (uint16)
            tensor = _from_numpy(value.view(np.int16)).view(torch.bfloat16)
        else:
            tensor = _from_numpy(value)
        if self._stream is not None:
            tensor = tensor.to(self.device, non_blocking=True)
        return tensor

    def _result_list(self, result) -> list:
        if isinstance(result, torch.Tensor):
            results = [result]
        elif isinstance(result, (tuple, list)) and result and all(
                isinstance(r, str) for r in result):
            results = [result]  # one List[str] output
        elif isinstance(result, (tuple, list)):
            results = list(result)
        else:
            raise ServerError(
                f"PyTorch execute failure: output must be of type Tensor, List[str] or Tuple "
                f"containing one of these two types, got {type(result).__name__}",
                ErrorCode.INTERNAL)
        for name, position in self._output_positions.items():
            if position >= len(results):
                raise ServerError(
                    f"The output {name} in the model configuration refers to an output index "
                    f"which doesn't exist. This model has {len(results)} outputs")
        return results

    def _to_numpy(self, name: str, value):
        """The output as numpy, or (GPU) a callable that reads it once the stream is synced."""
        type_name = self._output_types[name]
        if isinstance(value, (list, tuple)):
            if type_name != _STRING or not all(isinstance(v, str) for v in value):
                raise ServerError(f"output '{name}' must be of type Tensor or List[str].")
            return np.array([v.encode() for v in value], dtype=np.object_)
        if not isinstance(value, torch.Tensor):
            raise ServerError(f"output '{name}' must be of type Tensor or List[str].")
        provided = _CONFIG_TYPES.get(value.dtype, str(value.dtype))
        if provided != type_name:
            raise ServerError(f"configuration expects datatype {type_name} for output "
                              f"'{name}', model provides {provided}")
        if value.dim() == 0:
            raise ServerError(f"output '{name}' is a scalar which is not supported.")
        if value.dtype == torch.bfloat16:
            value = value.view(torch.int16)
        if value.device.type != "cpu":
            host = value.to("cpu", non_blocking=True)
            return lambda: _host_numpy(host, type_name)
        return _host_numpy(value, type_name)

    def close(self) -> None:
        self._module = None
        if self._stream is not None:
            self._stream.synchronize()
            self._stream = None
            torch.cuda.empty_cache()


def _from_numpy(value: np.ndarray) -> torch.Tensor:
    try:
        return torch.from_numpy(value)
    except (ValueError, TypeError):  # negative strides or a non-native byte order: copy
        return torch.from_numpy(np.ascontiguousarray(value, dtype=value.dtype.newbyteorder("=")))


def _host_numpy(tensor: torch.Tensor, type_name: str) -> np.ndarray:
    array = tensor.numpy()
    return array.view(np.uint16) if type_name == "TYPE_BF16" else array
