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
    handlers, level = root.handlers[:], root.level
    yield
    for handler in root.handlers:
        handler.close()
    root.handlers, root.level = handlers, level


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
