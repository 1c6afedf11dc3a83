"""ONNX Runtime backend (`platform: "onnxruntime_onnx"`, `backend: "onnxruntime"`).

On a GPU instance the inputs arrive already on the GPU (the core copies them on the
instance's stream) and are bound in place with ORT's I/O binding; outputs are bound on the
device as well and cross to the host once, at the end. Models with BF16 tensors (which ORT's
Python binding cannot describe) or strings (which it cannot bind) take the host path instead.
"""

from __future__ import annotations

import ctypes
from pathlib import Path

import numpy as np
import onnxruntime as ort

from pyserve import _core
from pyserve.backends.base import Backend, InstanceSpec, ModelContext
from pyserve.backends.onnxruntime_options import providers, session_options
from pyserve.errors import ErrorCode, ServerError
from pyserve.protocol import pb

# ONNX Runtime's tensor type strings -> config data types (the ORT backend's
# OnnxDataTypeToModelConfigDataType).
_ONNX_TYPES = {
    "tensor(bool)": "TYPE_BOOL", "tensor(uint8)": "TYPE_UINT8", "tensor(uint16)": "TYPE_UINT16",
    "tensor(uint32)": "TYPE_UINT32", "tensor(uint64)": "TYPE_UINT64", "tensor(int8)": "TYPE_INT8",
    "tensor(int16)": "TYPE_INT16", "tensor(int32)": "TYPE_INT32", "tensor(int64)": "TYPE_INT64",
    "tensor(float16)": "TYPE_FP16", "tensor(float)": "TYPE_FP32", "tensor(double)": "TYPE_FP64",
    "tensor(string)": "TYPE_STRING", "tensor(bfloat16)": "TYPE_BF16",
}
_DATA_TYPE = pb.ModelInput.DESCRIPTOR.fields_by_name["data_type"].enum_type
_ONNX_BFLOAT16 = 16  # onnx.TensorProto.BFLOAT16


class OnnxRuntimeBackend(Backend):
    def __init__(self, model: ModelContext, instance: InstanceSpec) -> None:
        super().__init__(model, instance)
        path = model.model_path
        if path.is_dir():  # a directory holding model.onnx plus external data
            path = path / "model.onnx"
        if not path.is_file():
            raise ServerError(f"unable to find '{path}' for model '{model.name}'",
                              ErrorCode.NOT_FOUND)
        options, providers = session_options(model.config), self._providers()
        try:
            self._session = ort.InferenceSession(str(path), sess_options=options,
                                                 providers=providers)
        except Exception as e:  # noqa: BLE001 - ORT raises its own exception types
            raise ServerError(f"failed to load model '{model.name}': {e}",
                              ErrorCode.INVALID_ARG) from None
        # Implicit state: the state outputs are computed too; the core keeps them.
        states = model.config.sequence_batching.state
        self._outputs = list(dict.fromkeys([output.name for output in model.config.output]
                                           + [state.output_name for state in states]))
        bf16 = _DATA_TYPE.values_by_name["TYPE_BF16"].number
        self._bf16 = {t.name for t in (*model.config.input, *model.config.output)
                      if t.data_type == bf16}
        string = _DATA_TYPE.values_by_name["TYPE_STRING"].number
        strings = any(t.data_type == string for t in (*model.config.input, *model.config.output))
        # ORT's Python I/O binding cannot bind strings or describe BF16: those take the host path.
        self.device_inputs = instance.kind == "GPU" and not self._bf16 and not strings
        session_outputs = {o.name for o in self._session.get_outputs()}
        missing = [name for name in self._outputs if name not in session_outputs]
        if missing:
            raise ServerError(
                f"model '{model.name}': configuration expects outputs {missing} that the ONNX "
                f"model does not have (it has {sorted(session_outputs)})")
        session_inputs = {i.name for i in self._session.get_inputs()}
        missing = [state.input_name for state in states if state.input_name not in session_inputs]
        if missing:
            raise ServerError(
                f"model '{model.name}': configuration expects state inputs {missing} that the "
                f"ONNX model does not have (it has {sorted(session_inputs)})")

    def _providers(self) -> list:
        available = ort.get_available_providers()
        if self.instance.kind == "GPU" and "CUDAExecutionProvider" not in available:
            raise ServerError(
                f"model '{self.model.name}' asks for a GPU instance but onnxruntime has no "
                "CUDA execution provider: pip install 'pyserve[onnx-gpu]'",
                ErrorCode.UNAVAILABLE)
        chosen = providers(self.model.config, self.instance.kind, self.instance.device_id)
        missing = [p[0] for p in chosen if isinstance(p, tuple) and p[0] not in available]
        if missing:
            raise ServerError(f"model '{self.model.name}' asks for {missing}, which this "
                              f"onnxruntime build does not have (it has {available})",
                              ErrorCode.UNAVAILABLE)
        return chosen

    def execute(self, inputs: dict, batch_sizes: list[int],
                requests: list | None = None) -> dict[str, np.ndarray]:
        if any(isinstance(value, _core.DeviceTensor) for value in inputs.values()):
            return self._execute_bound(inputs)
        feeds = {name: (_as_text(name, value) if value.dtype == np.object_ else value)
                 for name, value in inputs.items()}
        if self._bf16:
            return self._execute_bf16(feeds)
        results = self._session.run(self._outputs, feeds)
        return dict(zip(self._outputs, results))

    def _execute_bound(self, inputs: dict) -> dict[str, np.ndarray]:
        """I/O binding: the core's device copies are the inputs, outputs stay on the device
        until the one copy to the host."""
        binding = self._session.io_binding()
        stream = 0
        for name, value in inputs.items():
            stream = value.stream
            binding.bind_input(name, "cuda", value.device, value.dtype, list(value.shape),
                               value.data_ptr)
        for name in self._outputs:
            binding.bind_output(name, "cuda", self.instance.device_id)
        # ORT computes on its own stream: the core's copies, on the instance's, come first.
        _core.cuda_synchronize(stream)
        self._session.run_with_iobinding(binding)
        return dict(zip(self._outputs, binding.copy_outputs_to_cpu()))

    def _execute_bf16(self, feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        """numpy has no bfloat16, so BF16 tensors cross as their raw 16 bits (uint16) through
        OrtValues that carry the ONNX type."""
        values = {}
        for name, array in feeds.items():
            if name in self._bf16:
                values[name] = ort.OrtValue.ortvalue_from_numpy_with_onnx_type(
                    np.ascontiguousarray(array), onnx_element_type=_ONNX_BFLOAT16)
            else:
                values[name] = ort.OrtValue.ortvalue_from_numpy(array)
        results = self._session.run_with_ort_values(self._outputs, values)
        outputs = {}
        for name, value in zip(self._outputs, results):
            if name in self._bf16:
                count = int(np.prod(value.shape()))
                raw = (ctypes.c_uint16 * count).from_address(value.data_ptr())
                outputs[name] = np.ctypeslib.as_array(raw).copy().reshape(value.shape())
            else:
                outputs[name] = value.numpy()
        return outputs

    def close(self) -> None:
        self._session = None

    @staticmethod
    def auto_complete_config(config: pb.ModelConfig, version_dir: Path | None,
                             options: object) -> pb.ModelConfig:
        """The ONNX Runtime backend's AutoCompleteConfig: skipped when the config lists both
        inputs (or batch inputs) and outputs; otherwise max_batch_size, dynamic_batching and
        the missing inputs/outputs come from the model's signature."""
        if (config.input or config.batch_input) and config.output:
            return config
        if version_dir is None:
            return config  # no version to read; loading will report it
        path = version_dir / config.default_model_filename
        if path.is_dir():
            path = path / "model.onnx"
        if not path.is_file():
            raise ServerError(f"unable to find '{path}' for model '{config.name}'",
                              ErrorCode.NOT_FOUND)
        options_ = ort.SessionOptions()
        options_.log_severity_level = 3
        try:
            session = ort.InferenceSession(str(path), sess_options=options_,
                                           providers=["CPUExecutionProvider"])
        except Exception as e:  # noqa: BLE001 - ORT raises its own exception types
            raise ServerError(f"failed to load model '{config.name}': {e}",
                              ErrorCode.INVALID_ARG) from None
        inputs = [_tensor_info(config.name, arg) for arg in session.get_inputs()]
        outputs = [_tensor_info(config.name, arg) for arg in session.get_outputs()]
        del session

        out = pb.ModelConfig()
        out.CopyFrom(config)
        default_max_batch_size = getattr(options, "default_max_batch_size", 4)
        can_batch = all(dims and dims[0] == -1 for _, _, dims in inputs + outputs)
        if can_batch:
            if out.max_batch_size == 0:
                out.max_batch_size = max(default_max_batch_size, 0)
            if (out.max_batch_size > 1 and not out.HasField("sequence_batching")
                    and not out.HasField("dynamic_batching")):
                out.dynamic_batching.SetInParent()
        elif out.max_batch_size != 0:
            raise ServerError(
                f"autofill failed for model '{config.name}': model does not support batching "
                "while non-zero max_batch_size is specified")
        if not config.input and not config.batch_input:
            _fill_io(out.input, inputs, out.max_batch_size)
        if not config.output:
            _fill_io(out.output, outputs, out.max_batch_size)
        return out


def _as_text(name: str, value: np.ndarray) -> np.ndarray:
    """ONNX Runtime's Python API takes string tensors as `str` objects (it would turn `bytes`
    into their repr), and hands them back as `str`; BYTES elements must therefore be UTF-8."""
    try:
        return np.array([v.decode() if isinstance(v, bytes) else v for v in value.reshape(-1)],
                        dtype=np.object_).reshape(value.shape)
    except UnicodeDecodeError as e:
        raise ServerError(f"input '{name}': ONNX Runtime string tensors must be UTF-8 ({e})") from None


def _tensor_info(model: str, arg) -> tuple[str, int, list[int]]:
    """(name, config data type, dims) of a session input or output; symbolic and unknown
    dimensions are -1, as the ORT C API reports them."""
    type_name = _ONNX_TYPES.get(arg.type)
    if type_name is None:
        raise ServerError(
            f"autofill failed for model '{model}': unsupported ONNX type '{arg.type}' of "
            f"tensor '{arg.name}'")
    dims = [d if isinstance(d, int) and d >= 0 else -1 for d in (arg.shape or [])]
    return arg.name, _DATA_TYPE.values_by_name[type_name].number, dims


def _fill_io(target, infos: list[tuple[str, int, list[int]]], max_batch_size: int) -> None:
    """AutoCompleteIO: the first dimension is the batch when batching; a tensor left with no
    dimensions becomes dims [1] with an empty reshape (the reshape only when batching, since
    an empty reshape on a non-batching model would be a scalar, which configs cannot hold)."""
    del target[:]
    for name, data_type, dims in infos:
        io = target.add()
        io.name = name
        io.data_type = data_type
        io.dims.extend(dims[1:] if max_batch_size > 0 else dims)
        if not io.dims:
            io.dims.append(1)
            if max_batch_size > 0:
                io.reshape.SetInParent()
