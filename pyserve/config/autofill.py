"""Server-side autofill of `name`, `platform`, `backend` and `default_model_filename`: Triton's
AutoCompleteBackendFields (core model_config_utils.cc). It runs whether or not backend
auto-complete is enabled, and looks at the platform, the backend, the default model filename
and, failing those, the files of the model's first version directory, in Triton's order:
TensorFlow, TensorRT, ONNX Runtime, OpenVINO, PyTorch, Python, then a model named
`<x>.<backend>`."""

from __future__ import annotations

from pathlib import Path

from pyserve.config.model_config import ConfigError
from pyserve.protocol import pb

TF_SAVEDMODEL_PLATFORM, TF_GRAPHDEF_PLATFORM = "tensorflow_savedmodel", "tensorflow_graphdef"
TF_SAVEDMODEL_FILE, TF_GRAPHDEF_FILE = "model.savedmodel", "model.graphdef"
TENSORRT_PLATFORM, TENSORRT_FILE = "tensorrt_plan", "model.plan"
ONNX_PLATFORM, ONNX_FILE = "onnxruntime_onnx", "model.onnx"
OPENVINO_FILE = "model.xml"
LIBTORCH_PLATFORM, LIBTORCH_PLATFORM_ALT, LIBTORCH_FILE = "pytorch_libtorch", "libtorch", "model.pt"
AOTI_PLATFORM, AOTI_FILE = "torch_aoti", "model.pt2"
PYTHON_FILE = "model.py"


def first_version_dir(model_dir: Path | None) -> Path | None:
    """The subdirectory Triton inspects: the first one in byte order (GetDirectorySubdirs fills
    a std::set<std::string>), whatever its name."""
    if model_dir is None or not model_dir.is_dir():
        return None
    subdirs = sorted(entry.name for entry in model_dir.iterdir() if entry.is_dir())
    return model_dir / subdirs[0] if subdirs else None


def autocomplete_backend_fields(
        model_name: str, model_dir: Path | None, config: pb.ModelConfig) -> None:
    """Fill the backend fields of `config` in place (AutoCompleteBackendFields)."""
    version = first_version_dir(model_dir)
    content = {entry.name: entry.is_dir() for entry in version.iterdir()} if version else {}
    has_version = version is not None

    def has_file(name: str) -> bool:
        return name in content and not content[name]

    def has_dir(name: str) -> bool:
        return name in content and content[name]

    if not config.name:
        config.name = model_name

    # TensorFlow: the platform decides, so it is inferred first.
    if not config.platform and config.backend in ("", "tensorflow"):
        if config.default_model_filename == TF_SAVEDMODEL_FILE:
            config.platform = TF_SAVEDMODEL_PLATFORM
        elif config.default_model_filename == TF_GRAPHDEF_FILE:
            config.platform = TF_GRAPHDEF_PLATFORM
        elif not config.default_model_filename and has_version:
            if has_dir(TF_SAVEDMODEL_FILE):
                config.platform = TF_SAVEDMODEL_PLATFORM
            if has_file(TF_GRAPHDEF_FILE):
                config.platform = TF_GRAPHDEF_PLATFORM
    if config.platform in (TF_SAVEDMODEL_PLATFORM, TF_GRAPHDEF_PLATFORM):
        if not config.backend:
            config.backend = "tensorflow"
        if not config.default_model_filename:
            config.default_model_filename = (
                TF_SAVEDMODEL_FILE if config.platform == TF_SAVEDMODEL_PLATFORM
                else TF_GRAPHDEF_FILE)
        return

    unhinted = not config.platform and not config.default_model_filename and has_version

    # TensorRT
    if not config.backend:
        if config.platform == TENSORRT_PLATFORM or config.default_model_filename == TENSORRT_FILE:
            config.backend = "tensorrt"
        elif unhinted and has_file(TENSORRT_FILE):
            config.backend = "tensorrt"
    if config.backend == "tensorrt":
        config.platform = config.platform or TENSORRT_PLATFORM
        config.default_model_filename = config.default_model_filename or TENSORRT_FILE
        return

    # ONNX Runtime (the model may be a file or a directory holding model.onnx)
    if not config.backend:
        if config.platform == ONNX_PLATFORM or config.default_model_filename == ONNX_FILE:
            config.backend = "onnxruntime"
        elif unhinted and ONNX_FILE in content:
            config.backend = "onnxruntime"
    if config.backend == "onnxruntime":
        config.platform = config.platform or ONNX_PLATFORM
        config.default_model_filename = config.default_model_filename or ONNX_FILE
        return

    # OpenVINO
    if not config.backend:
        if config.default_model_filename == OPENVINO_FILE:
            config.backend = "openvino"
        elif unhinted and OPENVINO_FILE in content:
            config.backend = "openvino"
    if config.backend == "openvino":
        config.default_model_filename = config.default_model_filename or OPENVINO_FILE
        return

    # PyTorch (TorchScript or AOTInductor)
    if not config.backend:
        if (config.platform in (LIBTORCH_PLATFORM, LIBTORCH_PLATFORM_ALT)
                or config.default_model_filename == LIBTORCH_FILE):
            config.backend = "pytorch"
        elif config.platform == AOTI_PLATFORM or config.default_model_filename == AOTI_FILE:
            config.backend = "pytorch"
        elif unhinted:
            if LIBTORCH_FILE in content:
                if has_file(LIBTORCH_FILE):
                    config.backend, config.platform = "pytorch", LIBTORCH_PLATFORM
            elif has_file(AOTI_FILE):
                config.backend, config.platform = "pytorch", AOTI_PLATFORM
    if config.backend == "pytorch":
        if not config.platform:
            config.platform = LIBTORCH_PLATFORM
            config.default_model_filename = config.default_model_filename or LIBTORCH_FILE
        elif config.platform == AOTI_PLATFORM and not config.default_model_filename:
            config.default_model_filename = AOTI_FILE
        return

    # Python
    if not config.backend:
        if config.default_model_filename == PYTHON_FILE:
            config.backend = "python"
        elif unhinted and PYTHON_FILE in content:
            config.backend = "python"
    if config.backend == "python":
        config.default_model_filename = config.default_model_filename or PYTHON_FILE
        return

    # A custom backend named by the model: "model.identity" -> backend "identity".
    if not config.backend and not config.platform and not config.default_model_filename:
        if "." not in model_name:
            raise ConfigError(
                f"Invalid model name: Could not determine backend for model '{model_name}' "
                "with no backend in model configuration. Expected model name of the form "
                "'model.<backend_name>'.")
        backend = model_name.split(".", 1)[1]
        config.backend = backend
        config.default_model_filename = f"model.{backend}"
