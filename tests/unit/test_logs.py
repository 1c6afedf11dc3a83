"""The server's log as tritonserver writes it: line formats, severity switches, --log-file."""

from __future__ import annotations

import logging
import os
import re

import pytest

from pyserve import logs


@pytest.fixture
def restore_logging():
    root = logging.getLogger()
    handlers, level, settings = root.handlers[:], root.level, logs.settings()
    yield
    for handler in root.handlers:
        handler.close()
    root.handlers, root.level = handlers, level
    logs._settings.update(settings)


def test_the_log_file_takes_triton_lines_and_the_severities_asked_for(tmp_path, restore_logging):
    path = tmp_path / "server.log"
    logs.configure(info=False, file=str(path))
    log = logging.getLogger("pyserve")
    log.info("not written")
    log.warning('a "quoted"\nwarning')
    try:
        raise ValueError("boom")
    except ValueError:
        log.exception("failed")
    lines = path.read_text().splitlines()
    pid = os.getpid()
    assert re.fullmatch(rf'W\d{{4}} \d\d:\d\d:\d\d\.\d{{6}} {pid} test_logs\.py:\d+\] '
                        r'"a \\"quoted\\"\\nwarning"', lines[0]), lines[0]
    assert re.fullmatch(rf'E\d{{4}} .* {pid} test_logs\.py:\d+\] "failed"', lines[1]), lines[1]
    assert lines[2] == "Traceback (most recent call last):" and lines[-1] == "ValueError: boom"
    assert "not written" not in path.read_text()


def test_iso8601_lines(tmp_path, restore_logging):
    path = tmp_path / "server.log"
    logs.configure(file=str(path), layout="ISO8601", error=False)
    logging.getLogger("pyserve").info("hello")
    logging.getLogger("pyserve").error("not written")
    assert re.fullmatch(r'\d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ I \d+ test_logs\.py:\d+\] "hello"\n',
                        path.read_text())


def test_settings_change_the_log_at_once(tmp_path, restore_logging):
    path = tmp_path / "server.log"
    logs.configure(file=str(path))
    log = logging.getLogger("pyserve")
    assert logs.update({"log_info": False, "log_format": "ISO8601", "unknown": 1}) == {
        "log_file": str(path), "log_info": False, "log_warning": True, "log_error": True,
        "log_verbose_level": 0, "log_format": "ISO8601"}
    log.info("not written")
    log.warning("written")
    assert re.fullmatch(r'\d{4}-\d\d-\d\dT\S+ W \d+ test_logs\.py:\d+\] "written"\n',
                        path.read_text())
    log.debug("verbose")
    assert "verbose" not in path.read_text()
    logs.update({"log_verbose_level": 1})
    log.debug("verbose")
    assert "verbose" in path.read_text()


@pytest.mark.parametrize("changes, code, text", [
    ({"log_file": "/tmp/x"}, "UNSUPPORTED",
     "log file location can not be updated through network protocol"),
    ({"log_format": "bad"}, "INVALID_ARG", "invalid argument for log_format, got: bad"),
    ({"log_info": "yes"}, "INTERNAL", "attempt to access JSON non-boolean as boolean"),
    ({"log_verbose_level": -1}, "INTERNAL",
     "attempt to access JSON non-unsigned-integer as unsigned-integer"),
])
def test_refused_settings_change_nothing(changes, code, text, restore_logging):
    from pyserve.errors import ServerError

    before = logs.settings()
    with pytest.raises(ServerError) as refused:
        logs.update({"log_info": False, **changes})
    assert (refused.value.code.value, refused.value.message) == (code, text)
    assert logs.settings() == before
