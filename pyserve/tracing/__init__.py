"""Triton's trace extension (`--trace-config`, TraceSetting, `/v2[/models/M]/trace/setting`).

The core samples and stamps requests (csrc/core/trace.h); settings.py tells it each
setting's sampling half; writer.py drains the finished records and writes them (Triton's
trace file, or OpenTelemetry spans through otel.py)."""

from __future__ import annotations

import argparse
import sys
from typing import Callable

from pyserve.errors import ServerError
from pyserve.tracing.flags import (OFF, OPENTELEMETRY, TENSORS, TIMESTAMPS, TRITON,
                                   TraceConfig, TraceFlagError, _DEPRECATED, add_flags,
                                   parse_flags)
from pyserve.tracing.settings import TraceManager

__all__ = ["OFF", "OPENTELEMETRY", "TENSORS", "TIMESTAMPS", "TRITON", "TraceConfig",
           "TraceFlagError", "TraceManager", "add_flags", "parse_flags", "configure",
           "configure_from_args", "manager", "handle_settings", "close"]


def configure_from_args(args: argparse.Namespace) -> TraceManager:
    """The trace flags of `pyserve serve` into the server's trace settings; a value
    tritonserver refuses stops start-up with its text."""
    for flag, instead in _DEPRECATED.items():
        if getattr(args, flag[2:].replace("-", "_")) is not None:
            print(f"Warning: '{flag}' has been deprecated and will be removed in a future "
                  f"release. Please use '{instead}' instead.", file=sys.stderr)
    try:
        config = parse_flags(args.trace_config, args.trace_file, args.trace_level or [],
                             args.trace_rate, args.trace_count, args.trace_log_frequency)
        return configure(config)
    except (TraceFlagError, ImportError) as e:
        raise SystemExit(f"pyserve: {e}") from None


def handle_settings(model: str, changes: dict[str, list[str] | None],
                    is_ready: Callable[[str], bool]) -> dict[str, list[str] | str]:
    """One TraceSetting request of either protocol: the changes it asks for (none: a read),
    then the model's (or the global) settings."""
    if model and not is_ready(model):
        raise ServerError(f"Request for unknown model : {model}")
    if changes:
        manager().update(model, changes)
    return manager().settings(model)


_manager: TraceManager | None = None


def configure(config: TraceConfig) -> TraceManager:
    global _manager
    _manager = TraceManager(config)
    return _manager


def manager() -> TraceManager:
    global _manager
    if _manager is None:  # a server started without the command line: tracing off
        _manager = TraceManager(TraceConfig())
    return _manager


def close() -> None:
    if _manager is not None:
        _manager.close()
