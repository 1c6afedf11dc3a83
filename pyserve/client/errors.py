"""InferenceServerError: the one exception the client raises, over either protocol.

`status` is always a gRPC status code name ("INVALID_ARGUMENT", "NOT_FOUND", "UNAVAILABLE",
"DEADLINE_EXCEEDED", ...), so code that handles errors does not care which protocol it used;
over HTTP `http_status` also keeps the response's status (Triton maps INVALID_ARG to 400,
NOT_FOUND to 404, INTERNAL to 500, UNSUPPORTED to 501 and UNAVAILABLE to 503).
"""

from __future__ import annotations

# HTTP status -> gRPC status name, the inverse of Triton's http_server.cc table.
_FROM_HTTP = {
    400: "INVALID_ARGUMENT",
    401: "UNAUTHENTICATED",
    403: "PERMISSION_DENIED",
    404: "NOT_FOUND",
    408: "DEADLINE_EXCEEDED",
    409: "ALREADY_EXISTS",
    429: "RESOURCE_EXHAUSTED",
    499: "CANCELLED",
    500: "INTERNAL",
    501: "UNIMPLEMENTED",
    502: "UNAVAILABLE",
    503: "UNAVAILABLE",
    504: "DEADLINE_EXCEEDED",
}


class InferenceServerError(Exception):
    """A failed call: the server's status code and text, or a transport failure."""

    def __init__(self, message: str, status: str = "UNKNOWN", http_status: int | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.status = status
        self.http_status = http_status

    @classmethod
    def from_http(cls, http_status: int, message: str) -> "InferenceServerError":
        return cls(message, _FROM_HTTP.get(http_status, "UNKNOWN"), http_status)

    def __str__(self) -> str:
        return f"[{self.status}] {self.message}"

    def __repr__(self) -> str:
        extra = f", http_status={self.http_status}" if self.http_status is not None else ""
        return f"InferenceServerError({self.message!r}, {self.status!r}{extra})"


__all__ = ["InferenceServerError"]
