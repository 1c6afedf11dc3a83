"""TorchServe's settings: `torchserve --start` flags and the config.properties keys users set.

Resolved once into TorchServeOptions (flags win over the file, as in TorchServe); the server
reads only that object.
"""

from __future__ import annotations

import json
import logging
import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import urlsplit

from pyserve.errors import ErrorCode, ServerError

log = logging.getLogger("pyserve")

DEFAULT_ALLOWED_URLS = r"file://.*|http(s)?://.*"
MAX_REQUEST_SIZE = 6553500  # TorchServe's default, for both requests and responses


@dataclass(frozen=True)
class Address:
    scheme: str  # http or https
    host: str
    port: int

    @classmethod
    def parse(cls, text: str, default_port: int) -> "Address":
        text = text.strip()
        if "://" not in text:
            text = "http://" + text
        parts = urlsplit(text)
        if parts.scheme not in ("http", "https"):
            raise ServerError(f"invalid address '{text}': the scheme must be http or https")
        try:
            port = parts.port
        except ValueError:
            raise ServerError(f"invalid address '{text}': bad port") from None
        return cls(parts.scheme, parts.hostname or "127.0.0.1",
                   default_port if port is None else port)


@dataclass
class TorchServeOptions:
    model_store: Path | None = None
    load_models: list[str] = field(default_factory=list)  # "all", "a.mar", "name=a.mar"
    inference_address: Address = Address("http", "127.0.0.1", 8080)
    management_address: Address = Address("http", "127.0.0.1", 8081)
    metrics_address: Address = Address("http", "127.0.0.1", 8082)
    default_workers_per_model: int = 0  # 0: one per CPU core, TorchServe's default
    batch_size: int = 1
    max_batch_delay_ms: int = 100
    default_response_timeout_s: int = 120
    default_startup_timeout_s: int = 120  # how long a worker may take to load its model
    job_queue_size: int = 100
    service_envelope: str = ""  # "", "kserve" or "kservev2"
    enable_model_api: bool = False
    token_auth: bool = True
    token_expiration_min: float = 60.0
    key_file: Path = Path("key_file.json")
    max_request_size: int = MAX_REQUEST_SIZE
    max_response_size: int = MAX_REQUEST_SIZE
    allowed_urls: list[str] = field(default_factory=lambda: [DEFAULT_ALLOWED_URLS])
    metrics_mode: str = "log"
    enable_metrics_api: bool = True
    metrics_config: Path | None = None  # a metrics.yaml; TorchServe's default without one
    model_metrics_auto_detect: bool = False  # handler metrics metrics.yaml does not name
    disable_system_metrics: bool = False
    metric_time_interval_s: int = 60
    private_key_file: Path | None = None
    certificate_file: Path | None = None
    keystore: Path | None = None  # a Java keystore, over the PEM files
    keystore_pass: str = "changeit"
    keystore_type: str = "PKCS12"  # or JKS
    cors_allowed_origin: str = ""
    cors_allowed_methods: str = ""
    cors_allowed_headers: str = ""
    models: dict = field(default_factory=dict)  # the `models` JSON: name -> version -> settings
    work_dir: Path | None = None  # where archives are extracted; the system's temp dir if None

    @property
    def workers_per_model(self) -> int:
        return self.default_workers_per_model or (os.cpu_count() or 1)


def parse_properties(text: str) -> dict[str, str]:
    """Java's .properties format as TorchServe reads it: `key=value` or `key: value`, `#` and
    `!` comments, a trailing backslash continues the line."""
    result: dict[str, str] = {}
    pending = ""
    for raw in text.splitlines():
        line = pending + raw.strip() if pending else raw.strip()
        pending = ""
        if not line or line[0] in "#!":
            continue
        if line.endswith("\\") and not line.endswith("\\\\"):
            pending = line[:-1]
            continue
        match = re.match(r"([^=:\s]+)\s*[=:\s]\s*(.*)", line)
        if match:
            result[match.group(1)] = match.group(2).strip()
        else:
            result[line] = ""
    if pending:
        key, _, value = pending.partition("=")
        result[key.strip()] = value.strip()
    return result


def _boolean(key: str, text: str) -> bool:
    lowered = text.strip().lower()
    if lowered in ("true", "1", "yes"):
        return True
    if lowered in ("false", "0", "no", ""):
        return False
    raise ServerError(f"config.properties: '{key}' must be true or false, got '{text}'")


def _integer(key: str, text: str) -> int:
    try:
        return int(text.strip())
    except ValueError:
        raise ServerError(f"config.properties: '{key}' must be an integer, got '{text}'") from None


def _json(key: str, text: str) -> dict:
    if not text.strip():
        return {}
    try:
        value = json.loads(text)
    except ValueError as e:
        raise ServerError(f"config.properties: '{key}' is not valid JSON: {e}") from None
    if not isinstance(value, dict):
        raise ServerError(f"config.properties: '{key}' must be a JSON object")
    return value


def resolve(properties: dict[str, str], *, model_store: Path | None = None,
            models: list[str] | None = None, disable_token_auth: bool = False,
            enable_model_api: bool = False, base_dir: Path | None = None) -> TorchServeOptions:
    """TorchServeOptions from config.properties keys and the command line's flags."""
    options = TorchServeOptions()
    p = properties
    base = base_dir or Path.cwd()

    def path(key: str) -> Path | None:
        return (base / p[key]).resolve() if p.get(key) else None

    if _boolean("install_py_dep_per_model", p.get("install_py_dep_per_model", "false")):
        # KServe's sample config.properties sets it: warn, so that the sample loads as is.
        log.warning("config.properties: install_py_dep_per_model=true is ignored: pyserve never "
                    "installs packages named by an archive's requirements file; install them "
                    "into the server's environment (image) yourself")
    for key, port in (("inference_address", 8080), ("management_address", 8081),
                      ("metrics_address", 8082)):
        if p.get(key):
            setattr(options, key, Address.parse(p[key], port))
    options.model_store = model_store or path("model_store")
    if models:
        options.load_models = list(models)
    elif p.get("load_models"):
        options.load_models = [m.strip() for m in p["load_models"].split(",") if m.strip()]
    snapshot = _json("model_snapshot", p.get("model_snapshot", ""))
    for name, versions in (snapshot.get("models") or {}).items():
        # TorchServe restores the snapshot's models at startup (KServe's config.properties
        # names its archives this way): each marName under its name, with its settings.
        for version, settings in versions.items():
            options.models.setdefault(name, {}).setdefault(version, settings)
            if not models and not p.get("load_models") and settings.get("marName"):
                options.load_models.append(f"{name}={settings['marName']}")
    integers = {"default_workers_per_model": "default_workers_per_model",
                "batch_size": "batch_size", "max_batch_delay": "max_batch_delay_ms",
                "default_response_timeout": "default_response_timeout_s",
                "default_startup_timeout": "default_startup_timeout_s",
                "job_queue_size": "job_queue_size", "max_request_size": "max_request_size",
                "max_response_size": "max_response_size"}
    for key, attribute in integers.items():
        if p.get(key):
            setattr(options, attribute, _integer(key, p[key]))
    if p.get("service_envelope"):
        envelope = p["service_envelope"].strip().lower()
        if envelope not in ("kserve", "kservev2"):
            raise ServerError(f"config.properties: unsupported service_envelope '{envelope}' "
                              "(kserve or kservev2)", ErrorCode.UNSUPPORTED)
        options.service_envelope = envelope
    options.enable_model_api = enable_model_api or _boolean(
        "enable_model_api", p.get("enable_model_api", "false"))
    options.token_auth = not (disable_token_auth or _boolean(
        "disable_token_authorization", p.get("disable_token_authorization", "false")))
    if os.environ.get("TS_DISABLE_TOKEN_AUTHORIZATION", "").lower() == "true":
        options.token_auth = False
    if p.get("token_expiration_min"):
        options.token_expiration_min = float(p["token_expiration_min"])
    if p.get("allowed_urls"):
        options.allowed_urls = [u.strip() for u in p["allowed_urls"].split(",") if u.strip()]
    mode = p.get("metrics_mode", "log").strip().lower()
    if mode not in ("log", "prometheus", "legacy"):
        raise ServerError(f"config.properties: unsupported metrics_mode '{mode}'")
    options.metrics_mode = mode
    options.enable_metrics_api = _boolean("enable_metrics_api",
                                          p.get("enable_metrics_api", "true"))
    options.metrics_config = path("metrics_config")
    options.model_metrics_auto_detect = _boolean(
        "model_metrics_auto_detect", p.get("model_metrics_auto_detect", "false"))
    options.disable_system_metrics = _boolean("disable_system_metrics",
                                              p.get("disable_system_metrics", "false"))
    if p.get("metric_time_interval"):
        options.metric_time_interval_s = _integer("metric_time_interval",
                                                  p["metric_time_interval"])
    options.private_key_file = path("private_key_file")
    options.certificate_file = path("certificate_file")
    options.keystore = path("keystore")
    options.keystore_pass = p.get("keystore_pass", options.keystore_pass)
    options.keystore_type = p.get("keystore_type", options.keystore_type).strip() or "PKCS12"
    if options.keystore is None and \
            bool(options.private_key_file) != bool(options.certificate_file):
        raise ServerError("config.properties: TLS needs both private_key_file and "
                          "certificate_file")
    options.cors_allowed_origin = p.get("cors_allowed_origin", "")
    options.cors_allowed_methods = p.get("cors_allowed_methods", "")
    options.cors_allowed_headers = p.get("cors_allowed_headers", "")
    if p.get("models"):
        options.models.update(_json("models", p["models"]))  # wins over the snapshot's
    if p.get("model_server_home"):
        options.key_file = Path(p["model_server_home"]) / "key_file.json"
    return options


# The keys TorchServe 0.12's ConfigManager takes from TS_<KEY> environment variables when
# enable_envvars_config=true (its TS_* fields); keys starting with ts_ are named as they are.
ENVIRONMENT_KEYS = (
    "debug inference_address management_address metrics_address load_models "
    "blacklist_env_vars default_workers_per_model default_response_timeout "
    "default_startup_timeout unregister_model_timeout number_of_netty_threads "
    "netty_client_threads job_queue_size number_of_gpu metrics_config metrics_mode "
    "model_metrics_auto_detect disable_system_metrics ipex_enable cpu_launcher_enable "
    "cpu_launcher_args ipex_gpu_enable async_logging cors_allowed_origin cors_allowed_methods "
    "cors_allowed_headers decode_input_request keystore keystore_pass keystore_type "
    "certificate_file private_key_file max_request_size max_response_size "
    "limit_max_image_pixels default_service_handler service_envelope model_server_home "
    "model_store prefer_direct_buffer allowed_urls install_py_dep_per_model enable_metrics_api "
    "grpc_inference_address grpc_management_address grpc_inference_port grpc_management_port "
    "enable_grpc_ssl initial_worker_port initial_distribution_port workflow_store "
    "cpp_log_config ts_open_inference_protocol token_expiration_min ts_header_key_sequence_id "
    "ts_header_key_sequence_start ts_header_key_sequence_end disable_token_authorization "
    "enable_model_api").split()


def environment_overrides(properties: dict[str, str], environ=os.environ) -> dict[str, str]:
    """`properties` with TorchServe's TS_* environment variables over them where
    enable_envvars_config=true (TS_ALLOWED_URLS only with use_env_allowed_urls=true)."""
    if properties.get("enable_envvars_config", "false").strip().lower() != "true":
        return properties
    merged = dict(properties)
    for key in ENVIRONMENT_KEYS:
        if key == "allowed_urls" and \
                properties.get("use_env_allowed_urls", "false").strip().lower() != "true":
            continue
        name = key.upper() if key.startswith("ts_") else "TS_" + key.upper()
        if name in environ:
            merged[key] = environ[name]
    return merged


def load(config_file: Path | None, **flags) -> TorchServeOptions:
    """Relative paths in the file are read from the working directory, as TorchServe does."""
    properties = {}
    if config_file is not None:
        try:
            properties = parse_properties(Path(config_file).read_text(encoding="utf-8"))
        except OSError as e:
            raise ServerError(f"cannot read --ts-config {config_file}: {e.strerror}") from None
    return resolve(environment_overrides(properties), **flags)
