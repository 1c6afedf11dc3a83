"""ServerOptions: every setting of a pyserve server, filled by the CLI or by Python code."""

from __future__ import annotations

import ssl
from dataclasses import dataclass, field
from pathlib import Path

CONTROL_MODES = ("none", "poll", "explicit")
FRONTENDS = ("auto", "native", "python")
COMPRESSION_LEVELS = ("none", "low", "medium", "high")  # gRPC's grpc_compression_level
# A listener's queue of connections not yet accepted: a burst past it waits on SYN retries (1 s
# and more). As large as the system allows: the kernel caps it at net.core.somaxconn.
LISTEN_BACKLOG = 65535


@dataclass
class Tls:
    """tritonserver's --grpc-use-ssl flags (and pyserve's --http-use-ssl ones, of the same
    shape): PEM files; `mutual` requires clients' certificates, verified against the root
    certificate."""
    server_cert: Path
    server_key: Path
    root_cert: Path | None = None
    mutual: bool = False

    def pem(self) -> dict[str, str]:
        """The files' contents (OSError where one cannot be read)."""
        return {"server_cert": self.server_cert.read_text(),
                "server_key": self.server_key.read_text(),
                "root_cert": self.root_cert.read_text() if self.root_cert else ""}

    def server_context(self) -> ssl.SSLContext:
        """A server's SSL context for Python's servers (OSError or ssl.SSLError where the
        files cannot be used)."""
        # Not create_default_context: it would trust the system's CAs for client certificates.
        context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        context.load_cert_chain(self.server_cert, self.server_key)
        if self.mutual:
            context.load_verify_locations(self.root_cert)
            context.verify_mode = ssl.CERT_REQUIRED
        return context


# Triton's default summary quantiles: (quantile, allowed error) pairs.
DEFAULT_QUANTILES = ((0.5, 0.05), (0.9, 0.01), (0.95, 0.001), (0.99, 0.001), (0.999, 0.001))


@dataclass
class MetricsSettings:
    """tritonserver's --metrics-config keys (2.51), --metrics-interval-ms and
    --allow-cpu-metrics / --allow-gpu-metrics."""
    counter_latencies: bool = True  # the *_duration_us counters
    summary_latencies: bool = False  # the *_summary_us summaries
    summary_quantiles: tuple[tuple[float, float], ...] = DEFAULT_QUANTILES
    interval_ms: float = 2000.0  # how often CPU and GPU figures are sampled
    allow_cpu: bool = True
    allow_gpu: bool = True


@dataclass
class ServerOptions:
    # Local folders, or s3:// gs:// as:// URLs (str) of repositories in object storage.
    model_repositories: list[Path | str] = field(default_factory=list)
    repository_cache_dir: Path | None = None  # where remote repositories are mirrored
    host: str = "0.0.0.0"
    # Per service, as tritonserver's --grpc-address etc.; None = `host` (metrics: the HTTP
    # address, as in Triton).
    grpc_address: str | None = None
    http_address: str | None = None
    metrics_address: str | None = None
    grpc_port: int = 8001  # 0 picks a free port
    http_port: int = 8000
    metrics_port: int = 8002
    # Another server may listen on the same port only when both ask (SO_REUSEPORT); by
    # default a port in use stops start-up, as in Triton.
    reuse_grpc_port: bool = False
    reuse_http_port: bool = False
    # gRPC channel arguments from tritonserver's keepalive, HTTP/2 ping and connection-age
    # flags (argument name -> value); gRPC's defaults are Triton's.
    grpc_channel_args: dict[str, int] = field(default_factory=dict)
    grpc_tls: Tls | None = None  # None: plaintext gRPC
    http_tls: Tls | None = None  # None: plain HTTP (HTTPS serves the metrics endpoint too)
    # How ModelInfer and ModelStreamInfer responses are compressed (COMPRESSION_LEVELS).
    grpc_infer_response_compression_level: str = "none"
    # Restricted APIs (--grpc-restricted-protocol, --http-restricted-api): group -> the header
    # key and value a request of that group must carry (pyserve.restricted names the groups).
    grpc_restricted: dict[str, tuple[str, str]] = field(default_factory=dict)
    http_restricted: dict[str, tuple[str, str]] = field(default_factory=dict)
    # Headers whose name the pattern finds (re.search) become inference request parameters
    # (--grpc-header-forward-pattern, --http-header-forward-pattern); empty = none.
    grpc_header_forward_pattern: str = ""
    http_header_forward_pattern: str = ""
    server_id: str = "triton"  # tritonserver's --id: the name in the server's metadata
    allow_grpc: bool = True
    allow_http: bool = True
    allow_metrics: bool = True
    metrics: MetricsSettings = field(default_factory=MetricsSettings)
    http_max_input_size: int = 64 * 1024 * 1024  # bytes; larger bodies get 413
    grpc_max_message_size: int = 2**31 - 1  # bytes; larger gRPC messages: RESOURCE_EXHAUSTED
    # What one inference message may declare (_core.request_limits() names them and has the
    # defaults); only the ones given here change.
    request_limits: dict[str, int] = field(default_factory=dict)
    # gRPC and HTTP in native code (auto = when pyserve was built with it) or in Python.
    grpc_frontend: str = "auto"
    http_frontend: str = "auto"
    http_backlog: int = LISTEN_BACKLOG  # pending connections per HTTP listener
    http_thread_count: int = 8  # native HTTP: event-loop threads (Triton's meaning and default)

    # Models, with tritonserver's meanings and defaults.
    model_control_mode: str = "none"  # none | poll | explicit
    load_models: list[str] = field(default_factory=list)  # explicit mode; "*" = all
    repository_poll_secs: float = 15.0
    # Each repository a namespace: one model name in several repositories (Triton's
    # --model-namespacing).
    model_namespacing: bool = False
    strict_readiness: bool = True  # ready only when every model asked for is ready
    exit_on_error: bool = True  # exit when a model fails to load at startup
    auto_complete_config: bool = True
    model_config_name: str = ""  # configs/<name>.pbtxt instead of config.pbtxt
    default_max_batch_size: int = 4  # --backend-config=default-max-batch-size=N
    model_load_thread_count: int = 4
    model_load_retry_count: int = 0  # a failed version load is tried again this many times
    # --model-load-gpu-limit: GPU -> the fraction of its memory in use past which no instance
    # is created on it.
    model_load_gpu_limits: dict[int, float] = field(default_factory=dict)
    # --host-policy: policy name -> its settings (pyserve.host_policy).
    host_policies: dict[str, dict[str, str]] = field(default_factory=dict)
    # --rate-limit: "off" (instance groups' rate_limiter ignored) or "execution_count";
    # --rate-limit-resource: (name, count, device; -1 = every device) per flag.
    rate_limit: str = "off"
    rate_limit_resources: list[tuple[str, int, int]] = field(default_factory=list)
    # Requests queued (accepted, not executing) per model version at most; more are refused
    # at once with UNAVAILABLE / 503. A config's max_queue_size bounds each priority level
    # too. 0 = unbounded, Triton's default.
    default_max_queue_size: int = 4096
    pinned_memory_pool_byte_size: int = 256 * 1024 * 1024  # host memory kept for reuse
    # An unloading version answers what it accepted; past this, what still waits is refused
    # and instances still executing (hung) are abandoned. < 0 = wait for ever.
    model_unload_timeout_secs: float = 60.0
    # The response cache (--cache-config local,size=N): its size in bytes, shared by the
    # models whose config enables response_cache. None = no cache; such models then run
    # every request, as in Triton.
    response_cache_byte_size: int | None = None

    exit_timeout_secs: float = 30.0  # the whole drain on shutdown is bounded by this
    drain_grace_secs: float = 0.0  # on shutdown: not ready, but still accepting, this long
    log_verbose: int = 0

    def address(self, service: str) -> str:
        """The host the "grpc", "http" or "metrics" service binds to."""
        given = {"grpc": self.grpc_address, "http": self.http_address,
                 "metrics": self.metrics_address or self.http_address}[service]
        return given or self.host

    def __post_init__(self) -> None:
        if self.model_control_mode not in CONTROL_MODES:
            raise ValueError(f"model control mode must be one of {CONTROL_MODES}, "
                             f"got '{self.model_control_mode}'")
        for name, value in (("gRPC", self.grpc_frontend), ("HTTP", self.http_frontend)):
            if value not in FRONTENDS:
                raise ValueError(f"{name} frontend must be one of {FRONTENDS}, got '{value}'")
