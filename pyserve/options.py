"""ServerOptions: every setting of a pyserve server, filled by the CLI or by Python code."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path


@dataclass
class ServerOptions:
    model_repositories: list[Path] = field(default_factory=list)
    host: str = "0.0.0.0"
    grpc_port: int = 8001  # 0 picks a free port
    http_port: int = 8000
    metrics_port: int = 8002
    allow_grpc: bool = True
    allow_http: bool = True
    allow_metrics: bool = True
    http_max_input_size: int = 64 * 1024 * 1024  # bytes; larger bodies get 413
    model_load_thread_count: int = 4
    exit_timeout_secs: float = 30.0  # how long shutdown waits for in-flight requests
    log_verbose: int = 0
