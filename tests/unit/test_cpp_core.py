"""Builds the core's native tests (tests/cpp) with CMake and runs them with ctest."""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


@pytest.mark.skipif(shutil.which("cmake") is None, reason="cmake is not installed")
def test_core_native_tests_pass(tmp_path_factory):
    build = tmp_path_factory.mktemp("cpp-build")
    generator = ["-G", "Ninja"] if shutil.which("ninja") else []
    subprocess.run(["cmake", "-S", str(ROOT / "tests" / "cpp"), "-B", str(build), *generator,
                    "-DCMAKE_BUILD_TYPE=RelWithDebInfo"], check=True, capture_output=True)
    built = subprocess.run(["cmake", "--build", str(build), "-j", str(os.cpu_count() or 2)],
                           capture_output=True, text=True)
    assert built.returncode == 0, built.stdout + built.stderr
    tested = subprocess.run(["ctest", "--test-dir", str(build), "--output-on-failure"],
                            capture_output=True, text=True)
    assert tested.returncode == 0, tested.stdout + tested.stderr
    assert "100% tests passed" in tested.stdout
