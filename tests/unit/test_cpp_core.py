"""Builds the core's native tests (tests/cpp, GoogleTest) with CMake and runs them with ctest,
once plain and once under ThreadSanitizer. Each gtest TEST is a ctest test; the CUDA ones
skip themselves (GTEST_SKIP) where there is no GPU, which ctest reports as skipped."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]

# Test suites every build has (test_codecs' only where RapidJSON is found).
SUITES = {"MpmcQueue", "Scheduler", "DynamicBatcher", "HostMemoryPool", "Cuda",
          "SharedMemoryRegistry", "ModelTable", "Ensemble", "RateLimiter",
          "RateLimiterScheduler", "SequenceState"}
CODEC_SUITES = {"GrpcCodec", "Validate", "CountElements"}


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
    tested = subprocess.run(["ctest", "--test-dir", str(build), "--output-on-failure",
                             "--no-tests=error"],
                            capture_output=True, text=True, env=env)
    output = tested.stdout + tested.stderr
    assert tested.returncode == 0, output
    assert "100% tests passed" in tested.stdout, output  # skipped ones (no GPU) do not count
    assert "ThreadSanitizer" not in output

    # Every test binary's TESTs were discovered and ran, and only the CUDA ones may skip.
    ran = re.findall(r"Test +#\d+: (\w+)\.(\w+) \.+.*?(Passed|Skipped)", tested.stdout)
    suites = {suite for suite, _, _ in ran}
    expected = SUITES | (CODEC_SUITES if "test_codecs is not built" not in configured.stderr
                         else set())
    assert expected <= suites, (sorted(expected - suites), output)
    skipped = {f"{suite}.{name}" for suite, name, status in ran if status == "Skipped"}
    assert all(name.startswith("Cuda.") for name in skipped), (skipped, output)
