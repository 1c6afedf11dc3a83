"""ServerError: the one exception type that carries a Triton status code to the frontends.

The core's Status codes, the Python layers' refusals and the backends' failures all become a
ServerError; each frontend turns its code into a gRPC code or HTTP status through one table.
"""

from __future__ import annotations

import enum


class ErrorCode(str, enum.Enum):
    INVALID_ARG = "INVALID_ARG"
    NOT_FOUND = "NOT_FOUND"
    UNAVAILABLE = "UNAVAILABLE"
    INTERNAL = "INTERNAL"
    UNSUPPORTED = "UNSUPPORTED"
    ALREADY_EXISTS = "ALREADY_EXISTS"
    CANCELLED = "CANCELLED"
    UNKNOWN = "UNKNOWN"


class ServerError(Exception):
    """A refusal or failure with a Triton status code and message text."""

    def __init__(self, message: str, code: ErrorCode | str = ErrorCode.INVALID_ARG) -> None:
        super().__init__(message)
        self.message = message
        self.code = ErrorCode(code)

    def __repr__(self) -> str:
        return f"ServerError({self.message!r}, {self.code.value})"


# HTTP status per code (Triton's http_server.cc): everything not listed is 400.
HTTP_STATUS = {
    ErrorCode.INTERNAL: 500,
    ErrorCode.NOT_FOUND: 404,
    ErrorCode.UNAVAILABLE: 503,
    ErrorCode.UNSUPPORTED: 501,
}


def http_status(code: ErrorCode) -> int:
    return HTTP_STATUS.get(code, 400)
