"""The server's log as tritonserver writes it: its line formats, its severity switches
(--log-info, --log-warning, --log-error, --log-verbose) and --log-file, and the logging
extension's settings (LogSettings, /v2/logging), which change them at once."""

from __future__ import annotations

import json
import logging
import os
import sys
import time

FORMATS = ("default", "ISO8601")
_SEVERITY = {logging.DEBUG: "I", logging.INFO: "I", logging.WARNING: "W", logging.ERROR: "E",
             logging.CRITICAL: "E"}


class TritonFormatter(logging.Formatter):
    """`I1207 04:05:52.761520 1234 server.py:64] "message"` (default, glog's layout, local
    time) or `2026-12-07T04:05:52Z I 1234 server.py:64] "message"` (ISO8601, UTC); the message
    quoted and escaped as Triton 2.51 writes it, a traceback after it."""

    def __init__(self, layout: str = "default") -> None:
        super().__init__()
        self._iso = layout == "ISO8601"

    def formatMessage(self, record: logging.LogRecord) -> str:  # noqa: N802 - logging's name
        severity = _SEVERITY.get(record.levelno, "I")
        if self._iso:
            stamp = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(record.created))
            head = f"{stamp} {severity}"
        else:
            local = time.localtime(record.created)
            micros = int((record.created % 1) * 1e6)
            head = f"{severity}{time.strftime('%m%d %H:%M:%S', local)}.{micros:06d}"
        message = json.dumps(record.getMessage(), ensure_ascii=False)
        return f"{head} {record.process} {record.filename}:{record.lineno}] {message}"

    def format(self, record: logging.LogRecord) -> str:
        record.message = record.getMessage()
        return self.formatMessage(record) + (
            "\n" + self.formatException(record.exc_info) if record.exc_info else "")


class _Severities(logging.Filter):
    """Drops the severities switched off (log_info=false, ...), as the settings say now."""

    def filter(self, record: logging.LogRecord) -> bool:
        key = {logging.INFO: "log_info", logging.WARNING: "log_warning"}.get(
            record.levelno, "log_error" if record.levelno >= logging.ERROR else None)
        return key is None or _settings[key]


# The logging extension's settings, with Triton's names; configure() and update() set them.
_settings: dict = {"log_file": "", "log_info": True, "log_warning": True, "log_error": True,
                   "log_verbose_level": 0, "log_format": "default"}
_handler: logging.Handler | None = None


def configure(verbose: int = 0, info: bool = True, warning: bool = True, error: bool = True,
              file: str | None = None, layout: str = "default") -> None:
    """The process's logging: one handler on the root logger, to `file` (appended, as Triton
    does) or stderr."""
    global _handler
    _handler = (logging.FileHandler(os.fspath(file), encoding="utf-8") if file
                else logging.StreamHandler(sys.stderr))
    _handler.addFilter(_Severities())
    logging.basicConfig(handlers=[_handler], force=True)
    logging.getLogger("aiohttp.server").addFilter(_malformed_requests_quietly)
    _apply({"log_file": os.fspath(file) if file else "", "log_info": info,
            "log_warning": warning, "log_error": error, "log_verbose_level": verbose,
            "log_format": layout})


def settings() -> dict:
    return dict(_settings)


# What each setting a client may change must be: the type's name in Triton's texts, a check.
_KINDS = {"log_info": ("boolean", lambda v: isinstance(v, bool)),
          "log_warning": ("boolean", lambda v: isinstance(v, bool)),
          "log_error": ("boolean", lambda v: isinstance(v, bool)),
          "log_verbose_level": ("unsigned-integer",
                                lambda v: type(v) is int and 0 <= v < 2**32),
          "log_format": ("string", lambda v: isinstance(v, str)),
          "log_file": ("string", lambda v: isinstance(v, str))}


def update(changes: dict) -> dict:
    """Applies a client's changes (unknown names ignored, as Triton ignores them); returns
    the settings. Refusals are ServerErrors with Triton's texts: a value of the wrong type
    (INTERNAL), log_file (UNSUPPORTED: it is set on the command line only), a format that is
    not one (INVALID_ARG)."""
    from pyserve.errors import ErrorCode, ServerError

    known = {key: value for key, value in changes.items() if key in _KINDS}
    for key, value in known.items():
        kind, fits = _KINDS[key]
        if not fits(value):
            raise ServerError(f"attempt to access JSON non-{kind} as {kind}", ErrorCode.INTERNAL)
    if "log_file" in known:
        raise ServerError("log file location can not be updated through network protocol",
                          ErrorCode.UNSUPPORTED)
    if known.get("log_format", "default") not in FORMATS:
        raise ServerError(f"invalid argument for log_format, got: {known['log_format']}")
    _apply(known)
    return settings()


def _apply(changes: dict) -> None:
    _settings.update(changes)
    logging.getLogger().setLevel(logging.DEBUG if _settings["log_verbose_level"] else logging.INFO)
    if _handler is not None:
        _handler.setFormatter(TritonFormatter(_settings["log_format"]))


def _malformed_requests_quietly(record: logging.LogRecord) -> bool:
    """aiohttp answers a request it cannot parse (a duplicate Content-Type, a header line too
    long) with 400 and then logs it at ERROR with a traceback. It is the client's mistake:
    one DEBUG line instead, shown with --log-verbose."""
    from aiohttp.http_exceptions import HttpProcessingError

    error = record.exc_info[1] if record.exc_info else None
    if not isinstance(error, HttpProcessingError) or not 400 <= (error.code or 500) < 500:
        return True
    record.msg, record.args = "%s: %s", (record.getMessage(), " ".join(error.message.split()))
    record.levelno, record.levelname = logging.DEBUG, "DEBUG"
    record.exc_info = record.exc_text = None
    return logging.getLogger("aiohttp.server").isEnabledFor(logging.DEBUG)
