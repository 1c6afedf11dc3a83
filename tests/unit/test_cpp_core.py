"""Builds the core's native tests (tests/cpp) with CMake and runs them with ctest, once plain
and once under ThreadSanitizer."""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


@pytest.mark.skipif(shutil.which("cmake") is None, reason="cmake is not installed")
@pytest.mark.parametrize("sanitizer", ["none", "thread"])
def test_core_native_tests_pass(tmp_path_factory, sanitizer):
    build = tmp_path_factory.mktemp(f"cpp-{sanitizer}")
    generator = ["-G", "Ninja"] if shutil.which("ninja") else []
    configured = subprocess.run(
        ["cmake", "-S", str(ROOT / "tests" / "cpp"), "-B", str(build), *generator,
         "-DCMAKE_BUILD_TYPE=RelWithDebInfo", f"-DPYSERVE_TSAN={'ON' if sanitizer == 'thread' else 'OFF'}"],
        capture_output=True, text=True)
    assert configured.returncode == 0, configured.stdout + configured.stderr
    built = subprocess.run(["cmake", "--build", str(build), "-j", str(os.cpu_count() or 2)],
                           capture_output=True, text=True)
    assert built.returncode == 0, built.stdout + built.stderr
    env = dict(os.environ, TSAN_OPTIONS="halt_on_error=1 second_deadlock_stack=1")
    tested = subprocess.run(["ctest", "--test-dir", str(build), "--output-on-failure"],
                            capture_output=True, text=True, env=env)
    assert tested.returncode == 0, tested.stdout + tested.stderr
    assert "100% tests passed" in tested.stdout  # skipped ones (no GPU) do not count
    assert "ThreadSanitizer" not in tested.stdout + tested.stderr
