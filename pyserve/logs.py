"""The server's log as tritonserver writes it: its line formats, its severity switches
(--log-info, --log-warning, --log-error, --log-verbose) and --log-file."""

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
    """Drops the severities switched off (--log-info=false, ...)."""

    def __init__(self, info: bool, warning: bool, error: bool) -> None:
        super().__init__()
        self._off = {level for level, on in ((logging.INFO, info), (logging.WARNING, warning),
                                             (logging.ERROR, error), (logging.CRITICAL, error))
                     if not on}

    def filter(self, record: logging.LogRecord) -> bool:
        return record.levelno not in self._off


def configure(verbose: int = 0, info: bool = True, warning: bool = True, error: bool = True,
              file: str | None = None, layout: str = "default") -> None:
    """The process's logging: one handler on the root logger, to `file` (appended, as Triton
    does) or stderr."""
    handler = (logging.FileHandler(os.fspath(file), encoding="utf-8") if file
               else logging.StreamHandler(sys.stderr))
    handler.setFormatter(TritonFormatter(layout))
    handler.addFilter(_Severities(info, warning, error))
    logging.basicConfig(level=logging.DEBUG if verbose else logging.INFO, handlers=[handler],
                        force=True)
    logging.getLogger("aiohttp.server").addFilter(_malformed_requests_quietly)


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
