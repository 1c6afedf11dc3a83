"""Backends: one module per framework behind the `Backend` interface.

Modules are looked up by the config's backend name and imported only when a model asks for
them, so a framework that is not installed costs nothing until a model needs it.
"""

from __future__ import annotations

import importlib

from pyserve.backends.base import Backend, InstanceSpec, ModelContext
from pyserve.errors import ErrorCode, ServerError

# backend name -> ("module:Class", the pip extra that installs its framework)
_BACKENDS: dict[str, tuple[str, str]] = {
    "onnxruntime": ("pyserve.backends.onnxruntime:OnnxRuntimeBackend", "onnx"),
    "pytorch": ("pyserve.backends.pytorch:PyTorchBackend", "torch"),
    "python": ("pyserve.backends.python:PythonBackend", ""),
    "tensorflow": ("pyserve.backends.tensorflow:TensorFlowBackend", "tensorflow"),
    "tensorrt": ("pyserve.backends.tensorrt:TensorRTBackend", "tensorrt"),
    "torchserve": ("pyserve.backends.torchserve:TorchServeBackend", ""),
}


def backend_class(name: str) -> type[Backend]:
    if name not in _BACKENDS:
        raise ServerError(f"unsupported backend '{name}'", ErrorCode.UNSUPPORTED)
    target, extra = _BACKENDS[name]
    module_name, class_name = target.split(":")
    try:
        module = importlib.import_module(module_name)
    except ImportError as e:
        if not extra:  # nothing to install: the backend's own module is broken
            raise ServerError(f"backend '{name}' failed to import ({e.name}): {e}",
                              ErrorCode.UNAVAILABLE) from None
        raise ServerError(
            f"backend '{name}' needs a framework that is not installed ({e.name}): "
            f"pip install 'pyserve[{extra}]'", ErrorCode.UNAVAILABLE) from None
    return getattr(module, class_name)


def create_instance(cls: type[Backend], model: ModelContext, instance: InstanceSpec) -> Backend:
    """One instance of a model: in this process, or in a child process when its config asks
    for isolation (pyserve.backends.isolation)."""
    from pyserve.backends.isolation import isolated_instance, process_isolated

    if process_isolated(model.config):
        return isolated_instance(cls, model, instance)
    return cls(model, instance)


__all__ = ["Backend", "InstanceSpec", "ModelContext", "backend_class", "create_instance"]
