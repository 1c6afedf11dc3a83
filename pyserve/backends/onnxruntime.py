"""ONNX Runtime backend (`platform: "onnxruntime_onnx"`, `backend: "onnxruntime"`)."""

from __future__ import annotations

import numpy as np
import onnxruntime as ort

from pyserve.backends.base import Backend, InstanceSpec, ModelContext
from pyserve.errors import ErrorCode, ServerError


class OnnxRuntimeBackend(Backend):
    def __init__(self, model: ModelContext, instance: InstanceSpec) -> None:
        super().__init__(model, instance)
        path = model.model_path
        if path.is_dir():  # a directory holding model.onnx plus external data
            path = path / "model.onnx"
        if not path.is_file():
            raise ServerError(f"unable to find '{path}' for model '{model.name}'",
                              ErrorCode.NOT_FOUND)
        options = ort.SessionOptions()
        options.log_severity_level = 3
        try:
            self._session = ort.InferenceSession(
                str(path), sess_options=options, providers=self._providers())
        except Exception as e:  # noqa: BLE001 - ORT raises its own exception types
            raise ServerError(f"failed to load model '{model.name}': {e}",
                              ErrorCode.INVALID_ARG) from None
        self._outputs = [output.name for output in model.config.output]
        session_outputs = {o.name for o in self._session.get_outputs()}
        missing = [name for name in self._outputs if name not in session_outputs]
        if missing:
            raise ServerError(
                f"model '{model.name}': configuration expects outputs {missing} that the ONNX "
                f"model does not have (it has {sorted(session_outputs)})")

    def _providers(self) -> list:
        if self.instance.kind == "GPU":
            if "CUDAExecutionProvider" not in ort.get_available_providers():
                raise ServerError(
                    f"model '{self.model.name}' asks for a GPU instance but onnxruntime has no "
                    "CUDA execution provider: pip install 'pyserve[onnx-gpu]'",
                    ErrorCode.UNAVAILABLE)
            return [("CUDAExecutionProvider", {"device_id": self.instance.device_id}),
                    "CPUExecutionProvider"]
        return ["CPUExecutionProvider"]

    def execute(self, inputs: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        feeds = {name: (_as_text(name, value) if value.dtype == np.object_ else value)
                 for name, value in inputs.items()}
        results = self._session.run(self._outputs, feeds)
        return dict(zip(self._outputs, results))

    def close(self) -> None:
        self._session = None


def _as_text(name: str, value: np.ndarray) -> np.ndarray:
    """ONNX Runtime's Python API takes string tensors as `str` objects (it would turn `bytes`
    into their repr), and hands them back as `str`; BYTES elements must therefore be UTF-8."""
    try:
        return np.array([v.decode() if isinstance(v, bytes) else v for v in value.reshape(-1)],
                        dtype=np.object_).reshape(value.shape)
    except UnicodeDecodeError as e:
        raise ServerError(f"input '{name}': ONNX Runtime string tensors must be UTF-8 ({e})") from None
