"""TensorFlow backend for SavedModels (`platform: "tensorflow_savedmodel"`, `backend:
"tensorflow"`, default file `model.savedmodel`, a directory).

As in Triton's tensorflow_backend, the model is the signature `serving_default` (or the config
parameter TF_SIGNATURE_DEF) of the meta graph tagged `serve` (or TF_GRAPH_TAG), and config
inputs and outputs are the signature's tensor *keys* (not the graph's tensor names). The
parameters TF_NUM_INTRA_THREADS and TF_NUM_INTER_THREADS size TensorFlow's thread pools; in
TensorFlow 2 those pools belong to the process, so they take effect only when set before
TensorFlow first runs anything (a later, different value is logged and ignored).

Types: the config types Triton's backend has (BOOL, INT*, UINT*, FP16/32/64, STRING <-> TF
strings as object arrays of bytes), plus BF16, which pyserve carries as its raw 16 bits in
uint16 arrays and TensorFlow holds as tf.bfloat16 (Triton's TF backend refuses BF16).
"""

from __future__ import annotations

import logging
import os
from pathlib import Path

# Before TensorFlow is imported: its C++ logging reads this once (2 = warnings and errors off).
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import numpy as np  # noqa: E402
import tensorflow as tf  # noqa: E402

from pyserve.backends.base import Backend, InstanceSpec, ModelContext, int_parameter  # noqa: E402
from pyserve.errors import ErrorCode, ServerError  # noqa: E402
from pyserve.protocol import pb  # noqa: E402

tf.get_logger().setLevel(logging.ERROR)

_log = logging.getLogger("pyserve.backends.tensorflow")

DEFAULT_FILE = "model.savedmodel"
DEFAULT_SIGNATURE = "serving_default"
DEFAULT_TAG = "serve"

_DATA_TYPE = pb.ModelInput.DESCRIPTOR.fields_by_name["data_type"].enum_type
_TF_TYPES: dict[str, tf.DType] = {
    "TYPE_BOOL": tf.bool, "TYPE_UINT8": tf.uint8, "TYPE_UINT16": tf.uint16,
    "TYPE_UINT32": tf.uint32, "TYPE_UINT64": tf.uint64, "TYPE_INT8": tf.int8,
    "TYPE_INT16": tf.int16, "TYPE_INT32": tf.int32, "TYPE_INT64": tf.int64,
    "TYPE_FP16": tf.float16, "TYPE_FP32": tf.float32, "TYPE_FP64": tf.float64,
    "TYPE_STRING": tf.string, "TYPE_BF16": tf.bfloat16,
}
_CONFIG_TYPES = {dtype: name for name, dtype in _TF_TYPES.items()}


def _type_name(data_type: int) -> str:
    return _DATA_TYPE.values_by_number[data_type].name


def _tf_type_name(dtype: tf.DType) -> str:
    return _CONFIG_TYPES.get(dtype, f"TYPE_INVALID ({dtype.name})")


class _Signature:
    """A loaded SavedModel's signature: the callable and its inputs/outputs by key, each as
    (dtype, dims or None when the rank is unknown; unknown dimensions are -1)."""

    def __init__(self, loaded, function, inputs: dict, outputs: dict) -> None:
        self.loaded = loaded  # keeps the variables the function captures alive
        self.function = function
        self.inputs = inputs
        self.outputs = outputs


def _dims(shape: tf.TensorShape) -> list[int] | None:
    if shape.rank is None:
        return None
    return [-1 if d is None else int(d) for d in shape.as_list()]


def _model_path(config: pb.ModelConfig, version_dir: Path) -> Path:
    return version_dir / (config.default_model_filename or DEFAULT_FILE)


def _load_signature(model: str, path: Path, tag: str, signature_key: str) -> _Signature:
    if not path.is_dir():
        raise ServerError(f"unable to find '{path}' for model instance '{model}'",
                          ErrorCode.UNAVAILABLE)
    try:
        loaded = tf.saved_model.load(str(path), tags=[tag])
    except Exception as e:  # noqa: BLE001 - TF raises its own error types
        raise ServerError(f"failed to load model '{model}': {e}", ErrorCode.INVALID_ARG) from None
    signatures = getattr(loaded, "signatures", None) or {}
    if signature_key not in signatures:
        raise ServerError(
            f"unable to load model '{model}': the SavedModel has no signature "
            f"'{signature_key}' (it has {sorted(signatures)})", ErrorCode.INVALID_ARG)
    function = signatures[signature_key]
    _, keyword_specs = function.structured_input_signature
    inputs = {key: (spec.dtype, _dims(spec.shape)) for key, spec in keyword_specs.items()}
    structured = function.structured_outputs
    if not isinstance(structured, dict):  # signatures always return dicts; be defensive
        structured = {"output_0": structured}
    outputs = {key: (spec.dtype, _dims(spec.shape)) for key, spec in structured.items()}
    return _Signature(loaded, function, inputs, outputs)


def _parameters(config: pb.ModelConfig) -> dict[str, str]:
    return {key: value.string_value for key, value in config.parameters.items()}


def _set_threads(model: str, intra: int | None, inter: int | None) -> None:
    """TF_NUM_INTRA_THREADS / TF_NUM_INTER_THREADS (0 = TensorFlow's choice). Process-wide in
    TF2 and fixed once TensorFlow has started its runtime."""
    threading = tf.config.threading
    for value, getter, setter, key in (
            (intra, threading.get_intra_op_parallelism_threads,
             threading.set_intra_op_parallelism_threads, "TF_NUM_INTRA_THREADS"),
            (inter, threading.get_inter_op_parallelism_threads,
             threading.set_inter_op_parallelism_threads, "TF_NUM_INTER_THREADS")):
        if value is None or getter() == value:
            continue
        try:
            setter(value)
        except RuntimeError:
            _log.warning("model '%s': %s=%d ignored, TensorFlow already runs with %d (thread "
                         "pools are process-wide and fixed once TensorFlow has started)",
                         model, key, value, getter())


def _shape_text(dims: list[int] | None) -> str:
    return "[" + ",".join(str(d) for d in (dims or [])) + "]"


def _compare_dims(model: str, name: str, model_dims: list[int], dims: list[int],
                  batching: bool, exact: bool) -> None:
    """Triton's tensorflow_utils CompareDims."""
    if batching:
        if not model_dims or model_dims[0] != -1:
            raise ServerError(
                f"model '{model}', tensor '{name}': for the model to support batching the "
                "shape should have at least 1 dimension and the first dimension must be -1; "
                f"but shape expected by the model is {_shape_text(model_dims)}")
        full = [-1, *dims]
    else:
        full = list(dims)
    ok = len(model_dims) == len(full) and all(
        m == d for m, d in zip(model_dims, full) if exact or m != -1)
    if ok:
        return
    if batching:
        raise ServerError(
            f"model '{model}', tensor '{name}': the model expects {len(model_dims)} dimensions "
            f"(shape {_shape_text(model_dims)}) but the model configuration specifies "
            f"{len(full)} dimensions (an initial batch dimension because max_batch_size > 0 "
            f"followed by the explicit tensor shape, making complete shape {_shape_text(full)})")
    raise ServerError(
        f"model '{model}', tensor '{name}': the model expects {len(model_dims)} dimensions "
        f"(shape {_shape_text(model_dims)}) but the model configuration specifies {len(full)} "
        f"dimensions (shape {_shape_text(full)})")


class TensorFlowBackend(Backend):
    def __init__(self, model: ModelContext, instance: InstanceSpec) -> None:
        super().__init__(model, instance)
        config = model.config
        if config.platform not in ("", "tensorflow_savedmodel"):
            raise ServerError(f"platform {config.platform} not supported for TensorFlow model "
                              f"'{model.name}'" + (" (pyserve serves SavedModels only)"
                                                   if config.platform == "tensorflow_graphdef"
                                                   else ""), ErrorCode.UNSUPPORTED)
        parameters = _parameters(config)
        _set_threads(model.name, int_parameter(config, "TF_NUM_INTRA_THREADS"),
                     int_parameter(config, "TF_NUM_INTER_THREADS"))
        tag = parameters.get("TF_GRAPH_TAG") or DEFAULT_TAG
        signature_key = parameters.get("TF_SIGNATURE_DEF") or DEFAULT_SIGNATURE
        self._device = self._device_name()
        with tf.device(self._device):
            self._signature = _load_signature(model.name, _model_path(config, model.version_dir),
                                              tag, signature_key)
        self._input_types = {io.name: _type_name(io.data_type) for io in config.input}
        self._output_types = {io.name: _type_name(io.data_type) for io in config.output}
        self._validate()

    def _device_name(self) -> str:
        if self.instance.kind != "GPU":
            return "/CPU:0"
        gpus = tf.config.list_physical_devices("GPU")
        if not gpus:
            raise ServerError(
                f"model '{self.model.name}' asks for a GPU instance but TensorFlow "
                f"({tf.__version__}) sees no GPU: install a CUDA build of TensorFlow "
                "(pip install 'tensorflow[and-cuda]') or use KIND_CPU", ErrorCode.UNAVAILABLE)
        if self.instance.device_id >= len(gpus):
            raise ServerError(
                f"model '{self.model.name}' asks for GPU {self.instance.device_id} but "
                f"TensorFlow sees {len(gpus)} GPU(s)", ErrorCode.UNAVAILABLE)
        try:  # Triton's default (allow_gpu_memory_growth): do not take the whole GPU
            tf.config.experimental.set_memory_growth(gpus[self.instance.device_id], True)
        except RuntimeError:
            pass  # the GPU is already initialized; its setting stays as it is
        return f"/GPU:{self.instance.device_id}"

    def _validate(self) -> None:
        """Triton's savedmodel ValidateTRITONTFModel."""
        config, name = self.model.config, self.model.name
        signature = self._signature
        expected = len(config.input) + len(config.batch_input)
        if len(signature.inputs) != expected:
            raise ServerError(f"unable to load model '{name}', configuration expects "
                              f"{len(config.input)} inputs, model provides "
                              f"{len(signature.inputs)}")
        batching = config.max_batch_size > 0
        for kind, ios, provided in (("input", config.input, signature.inputs),
                                    ("output", config.output, signature.outputs)):
            for io in ios:
                if io.name not in provided:
                    raise ServerError(f"unexpected inference {kind} '{io.name}', allowed "
                                      f"{kind}s are: {', '.join(sorted(provided))}")
                dtype, model_dims = provided[io.name]
                dims = list(io.reshape.shape) if io.HasField("reshape") else list(io.dims)
                if model_dims is not None and not (kind == "input" and io.allow_ragged_batch):
                    _compare_dims(name, io.name, model_dims, dims, batching,
                                  exact=(kind == "output"))
                type_name = _type_name(io.data_type)
                if _TF_TYPES.get(type_name) != dtype:
                    raise ServerError(
                        f"unable to load model '{name}', configuration expects datatype "
                        f"{type_name} for {kind} '{io.name}', model provides "
                        f"{_tf_type_name(dtype)}")

    def execute(self, inputs: dict[str, np.ndarray], batch_sizes: list[int],
                requests: list | None = None) -> dict[str, np.ndarray]:
        with tf.device(self._device):
            feeds = {name: self._to_tf(name, value) for name, value in inputs.items()}
            try:
                results = self._signature.function(**feeds)
            except Exception as e:  # noqa: BLE001 - tf.errors.* and TypeError
                raise ServerError(f"TensorFlow execute failure: {e}", ErrorCode.INTERNAL) from None
        return {name: self._to_numpy(name, results[name]) for name in self._output_types}

    def _to_tf(self, name: str, value: np.ndarray) -> tf.Tensor:
        type_name = self._input_types.get(name)
        if type_name == "TYPE_STRING":
            return tf.constant(value, dtype=tf.string)
        if type_name == "TYPE_BF16":  # raw bits in uint16
            return tf.bitcast(tf.constant(value.view(np.uint16)), tf.bfloat16)
        return tf.constant(value)

    def _to_numpy(self, name: str, tensor: tf.Tensor) -> np.ndarray:
        if tensor.shape.rank == 0:
            raise ServerError(f"output '{name}' is a scalar which is not supported.")
        if tensor.dtype == tf.bfloat16:
            return tf.bitcast(tensor, tf.uint16).numpy()
        return tensor.numpy()  # tf.string: an object array of bytes

    def close(self) -> None:
        self._signature = None

    @staticmethod
    def auto_complete_config(config: pb.ModelConfig, version_dir: Path | None,
                             options: object) -> pb.ModelConfig:
        """The TensorFlow backend's AutoCompleteConfig for SavedModels: batching is supported
        iff every signature input and output has a variable first dimension (a hint from
        configured dims may say otherwise); then max_batch_size 0 becomes
        default-max-batch-size and, above 1 with no scheduler, dynamic batching is added.
        Inputs/outputs: an empty list gets every signature tensor; listed ones get their
        missing data type and dims; tensors not listed stay out."""
        if config.platform == "tensorflow_graphdef" or version_dir is None:
            return config  # GraphDefs carry no signature; no version: loading reports it
        path = _model_path(config, version_dir)
        if not path.is_dir():
            return config  # Triton skips auto-complete when the file is absent
        parameters = _parameters(config)
        try:
            with tf.device("/CPU:0"):
                signature = _load_signature(
                    config.name, path, parameters.get("TF_GRAPH_TAG") or DEFAULT_TAG,
                    parameters.get("TF_SIGNATURE_DEF") or DEFAULT_SIGNATURE)
        except ServerError as e:
            raise ServerError(f"unable to auto-complete model configuration for "
                              f"'{config.name}', {e.message}", ErrorCode.INTERNAL) from None
        out = pb.ModelConfig()
        out.CopyFrom(config)
        batching = _fix_batching(out, signature,
                                 getattr(options, "default_max_batch_size", 4))
        _fix_io(out, out.input, signature.inputs, batching)
        _fix_io(out, out.output, signature.outputs, batching)
        del signature
        return out


def _fix_batching(config: pb.ModelConfig, signature: _Signature,
                  default_max_batch_size: int) -> bool:
    """FixBatchingSupport; returns whether the model batches."""
    tensors = [(signature.inputs, config.input), (signature.outputs, config.output)]
    supports = all(dims and dims[0] == -1
                   for provided, _ in tensors for _, dims in provided.values())
    if not supports and config.max_batch_size > 0:
        raise ServerError(
            f"unable to autofill for '{config.name}', configuration specified max-batch "
            f"{config.max_batch_size} but model signature does not support batching",
            ErrorCode.INTERNAL)
    batching = supports
    if supports and config.max_batch_size == 0:
        # max_batch_size 0 is ambiguous (unset or no batching): configured dims decide.
        hint = None
        for provided, ios in tensors:
            for io in ios:
                if io.name in provided and io.dims:
                    should_batch = len(provided[io.name][1]) == len(io.dims) + 1
                    if hint is not None and hint != should_batch:
                        raise ServerError(
                            f"unable to autofill for '{config.name}', model tensor "
                            "configurations are contradicting each other in terms of whether "
                            "batching is supported", ErrorCode.INTERNAL)
                    hint = should_batch
        if hint is not None:
            batching = hint
        config.max_batch_size = max(default_max_batch_size, 0) if batching else 0
    if (config.max_batch_size > 1 and not config.HasField("dynamic_batching")
            and not config.HasField("sequence_batching")):
        config.dynamic_batching.SetInParent()
    return config.max_batch_size > 0


def _fix_io(config: pb.ModelConfig, target, provided: dict, batching: bool) -> None:
    """FixIOConfig: every signature tensor when none is listed, else the listed ones only,
    each completed with the signature's data type and dims (batch dimension stripped); a
    tensor left with no dims gets dims [1] and an empty reshape."""
    listed = {io.name: io for io in target}
    names = list(provided) if not listed else [n for n in listed if n in provided]
    for name in names:
        dtype, dims = provided[name]
        if dims is None or not dims:
            raise ServerError(f"unable to autofill for '{config.name}': the rank of model "
                              f"tensor '{name}' is 0 which is not supported",
                              ErrorCode.INVALID_ARG)
        if dtype not in _CONFIG_TYPES:
            raise ServerError(f"unable to autofill for '{config.name}': unsupported data type "
                              f"'{dtype.name}' of tensor '{name}'", ErrorCode.INVALID_ARG)
        io = listed.get(name) or target.add(name=name)
        if io.data_type == 0:
            io.data_type = _DATA_TYPE.values_by_name[_CONFIG_TYPES[dtype]].number
        if not io.dims:
            io.dims.extend(dims[1:] if batching else dims)
            if not io.dims:
                io.dims.append(1)
                io.reshape.SetInParent()
