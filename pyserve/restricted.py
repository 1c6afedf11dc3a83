"""Restricted APIs as Triton has them (--grpc-restricted-protocol, --http-restricted-api):
groups of endpoints answered only to requests that carry a header with a given value."""

from __future__ import annotations

import re

GROUPS = ("health", "metadata", "inference", "shared-memory", "model-config",
          "model-repository", "statistics", "trace", "logging")

_SERVICE = "/inference.GRPCInferenceService/"
# Each group's gRPC methods (full paths).
GRPC_METHODS = {
    "health": [_SERVICE + m for m in ("ServerLive", "ServerReady", "ModelReady")]
              + ["/grpc.health.v1.Health/Check", "/grpc.health.v1.Health/Watch"],
    "metadata": [_SERVICE + m for m in ("ServerMetadata", "ModelMetadata")],
    "inference": [_SERVICE + m for m in ("ModelInfer", "ModelStreamInfer")],
    "shared-memory": [_SERVICE + kind + m for kind in ("SystemSharedMemory", "CudaSharedMemory")
                      for m in ("Status", "Register", "Unregister")],
    "model-config": [_SERVICE + "ModelConfig"],
    "model-repository": [_SERVICE + m for m in ("RepositoryIndex", "RepositoryModelLoad",
                                                "RepositoryModelUnload")],
    "statistics": [_SERVICE + "ModelStatistics"],
    "trace": [_SERVICE + "TraceSetting"],
    "logging": [_SERVICE + "LogSettings"],
}

_MODEL = r"/v2/models/[^/]+(?:/versions/[^/]+)?"
# Each group's HTTP routes (paths), in the order they are tried.
_HTTP_ROUTES = [
    ("statistics", re.compile(rf"/v2/models/stats|{_MODEL}/stats")),
    ("health", re.compile(rf"/v2/health/.*|{_MODEL}/ready")),
    ("metadata", re.compile(rf"/v2|{_MODEL}")),
    ("inference", re.compile(rf"{_MODEL}/(?:infer|generate|generate_stream)")),
    ("shared-memory", re.compile(r"/v2/(?:system|cuda)sharedmemory(?:/.*)?")),
    ("model-config", re.compile(rf"{_MODEL}/config")),
    ("model-repository", re.compile(r"/v2/repository(?:/.*)?")),
    ("trace", re.compile(rf"/v2/trace/setting|{_MODEL}/trace/setting")),
    ("logging", re.compile(r"/v2/logging")),
]


def parse(flag: str, values: list[str]) -> dict[str, tuple[str, str]]:
    """`<groups>:<key>=<value>` flags into {group: (key, value)}; ValueError with the text."""
    restricted: dict[str, tuple[str, str]] = {}
    for text in values:
        groups, _, setting = text.partition(":")
        key, _, value = setting.partition("=")
        if not groups or not key or "=" not in setting:
            raise ValueError(f"{flag} expects <groups>:<key>=<value>, got '{text}'")
        for group in groups.split(","):
            if group not in GROUPS:
                raise ValueError(f"{flag}: unknown group '{group}' (groups: "
                                 f"{', '.join(GROUPS)})")
            if group in restricted:
                raise ValueError(f"{flag}: group '{group}' is restricted twice")
            restricted[group] = (key, value)
    return restricted


def grpc_header(key: str) -> str:
    return "triton-grpc-protocol-" + key


def grpc_methods(restricted: dict[str, tuple[str, str]]) -> dict[str, tuple[str, str]]:
    """{method path: (metadata key, value)} of the restricted groups."""
    return {method: (grpc_header(key), value)
            for group, (key, value) in restricted.items() for method in GRPC_METHODS[group]}


def grpc_refusal(header: str) -> str:
    return f"This protocol is restricted, expecting header '{header}'"


def http_group(path: str) -> str | None:
    return next((group for group, route in _HTTP_ROUTES if route.fullmatch(path)), None)


def http_refusal(key: str) -> str:
    return f"This API is restricted, expecting header '{key}'"
