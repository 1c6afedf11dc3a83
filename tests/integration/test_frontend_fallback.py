"""Where the native frontends cannot be had: the build says so and builds without them, and the
server falls back to the Python frontends at run time (or refuses, when asked for native)."""

from __future__ import annotations

import shutil
import subprocess

import numpy as np
import pytest
import tritonclient.grpc as grpcclient
import tritonclient.http as httpclient

from conftest import EXAMPLES, OUTSIDE, PYSERVE, ROOT, start_server

# Importing the native modules fails as it does where their libraries are missing.
BLOCK_NATIVE = """
import sys
sys.modules["pyserve._grpc_server"] = None
sys.modules["pyserve._http_server"] = None
"""


@pytest.fixture
def blocked_env(tmp_path) -> dict[str, str]:
    (tmp_path / "sitecustomize.py").write_text(BLOCK_NATIVE)
    return {"PYTHONPATH": str(tmp_path)}


def test_server_falls_back_to_the_python_frontends(tmp_path, blocked_env):
    server = start_server([EXAMPLES], tmp_path / "server.log", env=blocked_env)
    try:
        log = server.log()
        assert "gRPC frontend: python (grpc.aio); the native one is not available" in log
        assert "HTTP frontend: python (aiohttp); the native one is not available" in log
        a = np.arange(16, dtype=np.int32).reshape(1, 16)
        for module, url in ((grpcclient, server.grpc_url), (httpclient, server.http_url)):
            with module.InferenceServerClient(url) as client:
                inputs = [module.InferInput(n, [1, 16], "INT32") for n in ("INPUT0", "INPUT1")]
                for t in inputs:
                    t.set_data_from_numpy(a)
                np.testing.assert_array_equal(client.infer("simple", inputs).as_numpy("OUTPUT0"),
                                              a + a)
    finally:
        assert server.stop() == 0


@pytest.mark.parametrize("flag", ["--grpc-frontend", "--http-frontend"])
def test_asking_for_an_unavailable_native_frontend_is_a_startup_error(tmp_path, blocked_env, flag):
    done = subprocess.run([*PYSERVE, "serve", "--model-repository", str(EXAMPLES), "--host",
                           "127.0.0.1", "--grpc-port", "0", "--http-port", "0", "--metrics-port",
                           "0", flag, "native"], cwd=OUTSIDE, capture_output=True, text=True,
                          timeout=120, env={**__import__("os").environ, **blocked_env})
    assert done.returncode == 1
    assert f"{flag}=native: the native" in done.stderr and "is not available" in done.stderr


@pytest.mark.skipif(shutil.which("cmake") is None, reason="needs cmake")
def test_the_build_goes_on_without_the_native_frontends_libraries(tmp_path):
    """CMake configure with gRPC C++ and Boost hidden: a warning each, no such targets."""
    import pybind11

    done = subprocess.run(
        ["cmake", "-S", str(ROOT), "-B", str(tmp_path / "build"), "-DSKBUILD_PROJECT_NAME=pyserve",
         f"-Dpybind11_DIR={pybind11.get_cmake_dir()}", "-DCMAKE_DISABLE_FIND_PACKAGE_gRPC=ON",
         "-DCMAKE_DISABLE_FIND_PACKAGE_Boost=ON", "-DCMAKE_DISABLE_FIND_PACKAGE_PkgConfig=ON"],
        capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    output = " ".join((done.stdout + done.stderr).split())  # CMake wraps its warnings
    assert "building without the native gRPC frontend" in output
    assert "building without the native HTTP frontend" in output
    makefile = (tmp_path / "build" / "Makefile").read_text()
    assert "_grpc_server" not in makefile and "_http_server" not in makefile and "_core" in makefile
