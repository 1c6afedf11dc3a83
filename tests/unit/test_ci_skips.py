""".ci/check_skips.py: CI fails on a skip whose reason .ci/expected-skips does not list."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def junit(tmp_path: Path, reasons: list[str]) -> Path:
    cases = "".join(f'<testcase classname="t" name="case{i}"><skipped message="{reason}"/>'
                    "</testcase>" for i, reason in enumerate(reasons))
    report = tmp_path / "junit.xml"
    report.write_text(f'<testsuites><testsuite name="pytest">{cases}'
                      '<testcase classname="t" name="ran"/></testsuite></testsuites>')
    return report


def check(report: Path) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, str(ROOT / ".ci" / "check_skips.py"), str(report)],
                          capture_output=True, text=True)


def test_expected_skips_pass(tmp_path):
    done = check(junit(tmp_path, ["needs a GPU and onnxruntime-gpu", "torch has no CUDA device here"]))
    assert done.returncode == 0, done.stdout
    assert "expected skip x2" in done.stdout


def test_an_unexpected_skip_fails_and_is_named(tmp_path):
    done = check(junit(tmp_path, ["needs a GPU", "the Azure tests need Azurite's azurite-blob"]))
    assert done.returncode == 1
    assert "UNEXPECTED SKIP: t::case1: the Azure tests need Azurite's azurite-blob" in done.stdout
