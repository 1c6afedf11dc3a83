"""config.pbtxt: parse, validate and normalize Triton model configurations."""

from pyserve.config.model_config import (
    ConfigError,
    config_to_json,
    load_config,
    normalize,
    parse_config,
)

__all__ = ["ConfigError", "config_to_json", "load_config", "normalize", "parse_config"]
