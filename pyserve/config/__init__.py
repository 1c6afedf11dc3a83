"""config.pbtxt: parse, validate, normalize and auto-complete Triton model configurations.

`model_config` is the one entry point the lifecycle needs: it returns the configuration Triton
would serve for a model directory, or raises ConfigError with Triton's message.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from pyserve.config.autofill import autocomplete_backend_fields
from pyserve.config.model_config import (
    CONFIG_FILENAME,
    ConfigError,
    check_name,
    config_to_json,
    copy_config,
    load_config,
    normalize,
    normalize_instance_group,
    normalize_model_config,
    parse_config,
    parse_config_json,
    read_config_file,
    validate_instance_group,
    validate_io,
    validate_model_config,
    validate_warmup,
)
from pyserve.errors import ErrorCode, ServerError
from pyserve.protocol import pb

CONFIGS_FOLDER = "configs"


@dataclass(frozen=True)
class ConfigOptions:
    gpu_count: int = 0
    auto_complete: bool = True          # --disable-auto-complete-config sets False
    config_name: str = ""               # --model-config-name: read configs/<name>.pbtxt when present
    default_max_batch_size: int = 4     # --backend-config=default-max-batch-size=N (ONNX, TF)


def config_path(model_dir: Path, config_name: str = "") -> Path:
    """The file Triton reads for the model (GetModelConfigFullPath): configs/<name>.pbtxt when
    --model-config-name is given and that file exists, else config.pbtxt."""
    if config_name:
        custom = model_dir / CONFIGS_FOLDER / f"{config_name}.pbtxt"
        if custom.is_file():
            return custom
    return model_dir / CONFIG_FILENAME


def model_config(model_dir: Path, options: ConfigOptions,
                 override: pb.ModelConfig | None = None) -> pb.ModelConfig:
    """The normalized config Triton would serve for the model in `model_dir`.

    `override` (from the load API) replaces the file's config; else configs/<config_name>.pbtxt
    if that exists, else config.pbtxt, else (auto-complete on) an empty config. Then the
    server-side autofill of the backend fields, normalization and validation as Triton's model
    repository manager does them, instance groups, the backend's own auto-complete (when
    enabled) and the validation Triton makes once the model is initialized.
    """
    model_dir = Path(model_dir)
    name = model_dir.name
    if override is not None:
        config = copy_config(override)
    else:
        path = config_path(model_dir, options.config_name)
        if options.auto_complete and not path.exists():
            config = pb.ModelConfig()
        else:
            config = read_config_file(path)

    autocomplete_backend_fields(name, model_dir, config)
    normalize_model_config(config)
    validate_model_config(config)
    if not options.auto_complete:
        validate_io(config)
    check_name(config, name)
    normalize_instance_group(config, options.gpu_count)
    validate_instance_group(config, options.gpu_count)

    if options.auto_complete:
        config = _backend_auto_complete(config, model_dir, options)
        normalize_model_config(config)
        validate_model_config(config)
        validate_io(config)
    validate_warmup(config)
    return config


def _backend_auto_complete(config: pb.ModelConfig, model_dir: Path,
                           options: ConfigOptions) -> pb.ModelConfig:
    """Ask the backend module to complete the config from the model file (Triton's
    TRITONBACKEND_ModelInitialize with auto-complete on). Backends pyserve does not have, and
    backends without auto-complete, leave the config as it is."""
    from pyserve.backends import backend_class

    try:
        cls = backend_class(config.backend)
    except ServerError as e:
        if e.code == ErrorCode.UNSUPPORTED:
            return config
        if config.input and config.output:
            return config  # the framework is missing, but nothing needs it yet
        raise
    complete = getattr(cls, "auto_complete_config", None)
    if complete is None:
        return config
    try:
        result = complete(config, _version_dir_for(config, model_dir), options)
    except ConfigError:
        raise
    except ServerError as e:
        raise ConfigError(e.message, e.code) from None
    return config if result is None else result


def _version_dir_for(config: pb.ModelConfig, model_dir: Path) -> Path | None:
    """The version the backend reads the model from: the newest version the version policy
    serves (Triton auto-completes while loading a version), else the newest numeric one."""
    from pyserve.repository import select_versions, version_dirs

    versions = version_dirs(model_dir) if model_dir.is_dir() else {}
    if not versions:
        return None
    chosen = select_versions(config.version_policy, list(versions)) or sorted(versions)
    return versions[chosen[-1]]


__all__ = [
    "ConfigError",
    "ConfigOptions",
    "config_path",
    "config_to_json",
    "load_config",
    "model_config",
    "normalize",
    "parse_config",
    "parse_config_json",
]
