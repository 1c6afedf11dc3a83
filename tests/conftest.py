"""Shared fixtures: real pyserve processes on 127.0.0.1, started and stopped by PID."""

from __future__ import annotations

import os
import queue
import re
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from dataclasses import dataclass
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
# Server processes run outside the checkout, so that `-m` imports the installed pyserve
# (with its compiled core) rather than the source folder.
OUTSIDE = Path(tempfile.gettempdir())
PYSERVE = [sys.executable, "-m", "pyserve.cli"]
EXAMPLES = ROOT / "examples" / "model_repository"
_PORT_LINE = re.compile(r"Started (GRPCInferenceService|HTTPService|Metrics Service) at [^:]+:(\d+)")


@dataclass
class ServerProcess:
    process: subprocess.Popen
    grpc_port: int
    http_port: int
    metrics_port: int
    log_path: Path

    @property
    def grpc_url(self) -> str:
        return f"127.0.0.1:{self.grpc_port}"

    @property
    def http_url(self) -> str:
        return f"127.0.0.1:{self.http_port}"

    def log(self) -> str:
        return self.log_path.read_text()

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 30) -> int:
        if self.process.poll() is None:
            os.kill(self.process.pid, sig)
            try:
                self.process.wait(timeout)
            except subprocess.TimeoutExpired:
                os.kill(self.process.pid, signal.SIGKILL)
                self.process.wait()
        return self.process.returncode


def start_server(repositories: list[Path], log_path: Path, *extra: str,
                 timeout: float = 60, env: dict[str, str] | None = None) -> ServerProcess:
    """Start `pyserve serve` on free ports and wait until all three services listen.

    `env` adds to (or overrides) the inherited environment of the server process."""
    command = [*PYSERVE, "serve", "--host", "127.0.0.1",
               "--grpc-port", "0", "--http-port", "0", "--metrics-port", "0", *extra]
    for repository in repositories:
        command += ["--model-repository", str(repository)]
    log_file = open(log_path, "w")
    process = subprocess.Popen(command, stdout=log_file, stderr=subprocess.STDOUT, cwd=OUTSIDE,
                               env=None if env is None else {**os.environ, **env})
    log_file.close()
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        ports = dict(_PORT_LINE.findall(log_path.read_text()))
        if len(ports) == 3:
            return ServerProcess(process, int(ports["GRPCInferenceService"]),
                                 int(ports["HTTPService"]), int(ports["Metrics Service"]),
                                 log_path)
        if process.poll() is not None:
            break
        time.sleep(0.05)
    process.kill()
    process.wait()
    raise RuntimeError(f"pyserve did not start:\n{log_path.read_text()}")


# The frontends the protocol tests run against: native (gRPC C++ and cpp-httplib, when built)
# and Python (grpc.aio and aiohttp).
FRONTENDS = ["native", "python"]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def native_frontends_built() -> bool:
    from importlib.util import find_spec

    return all(find_spec(f"pyserve.{m}") is not None for m in ("_grpc_server", "_http_server"))


@pytest.fixture(scope="session", params=FRONTENDS)
def example_server(request, tmp_path_factory) -> ServerProcess:
    """A server on the example repository, shared by the tests that only send requests; once
    per kind of frontend."""
    if request.param == "native" and not native_frontends_built():
        pytest.skip("pyserve was built without the native frontends")
    server = start_server([EXAMPLES], tmp_path_factory.mktemp("logs") / "example_server.log",
                          "--grpc-frontend", request.param, "--http-frontend", request.param)
    yield server
    server.stop()


@pytest.fixture(params=["grpc", "http"])
def client(request, server):
    """(client module, connected client) for the test module's `server`, once per protocol."""
    import tritonclient.grpc as grpcclient
    import tritonclient.http as httpclient

    module = grpcclient if request.param == "grpc" else httpclient
    url = server.grpc_url if request.param == "grpc" else server.http_url
    with module.InferenceServerClient(url) as c:
        yield module, c


def tensor(module, name: str, array, datatype: str):
    """A tritonclient InferInput holding `array`."""
    t = module.InferInput(name, list(array.shape), datatype)
    t.set_data_from_numpy(array)
    return t


def send_concurrently(client, model: str, inputs: list[list]) -> list[tuple]:
    """Each request's (result, error), in sending order, sent together through a gRPC
    client's async_infer (so the batcher can see them all at once)."""
    done: queue.Queue = queue.Queue()
    for index, tensors in enumerate(inputs):
        client.async_infer(model, tensors,
                           lambda result, error, index=index: done.put((index, (result, error))))
    results = dict(done.get(timeout=60) for _ in inputs)
    return [results[i] for i in range(len(inputs))]


def wait_until(done, what: str, timeout: float = 30) -> None:
    """Polls `done()` until it holds; fails naming `what` after `timeout` seconds."""
    deadline = time.monotonic() + timeout
    while not done():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.005)


def pending_requests(server: ServerProcess, model: str) -> float:
    """The model's nv_inference_pending_request_count: accepted and not yet executing."""
    url = f"http://127.0.0.1:{server.metrics_port}/metrics"
    for line in urllib.request.urlopen(url).read().decode().splitlines():
        if line.startswith("nv_inference_pending_request_count{") and f'model="{model}"' in line:
            return float(line.rsplit(" ", 1)[1])
    return 0.0


def settled_statistics(client, model: str, settled: int, timeout: float = 30):
    """The model's statistics (gRPC) once `settled` requests are counted in them.

    The server records a batch's statistics right after it hands the responses back (as
    Triton's backends do), so a client holding all its responses may still briefly read the
    statistics from before the last batch.
    """
    deadline = time.monotonic() + timeout
    while True:
        response = client.get_inference_statistics(model)
        assert len(response.model_stats) == 1
        stats = response.model_stats[0]
        counted = stats.inference_stats.success.count + stats.inference_stats.fail.count
        if counted >= settled or time.monotonic() > deadline:
            return stats
        time.sleep(0.01)


_ECHO_BYTES_MODEL = """import triton_python_backend_utils as pb_utils


class TritonPythonModel:
    def execute(self, requests):
        return [pb_utils.InferenceResponse(
                    [pb_utils.Tensor("ECHO", pb_utils.get_input_tensor_by_name(r, "TEXT").as_numpy())])
                for r in requests]
"""


def write_python_model(repository: Path, name: str, tensors: str, source: str,
                       max_batch_size: int = 0) -> None:
    """Version 1 of a Python model `name`: its config (`tensors`: the input and output
    sections) and its model.py (`source`)."""
    (repository / name / "1").mkdir(parents=True)
    (repository / name / "config.pbtxt").write_text(
        f'name: "{name}"\nbackend: "python"\nmax_batch_size: {max_batch_size}\n{tensors}')
    (repository / name / "1" / "model.py").write_text(source)


def write_echo_bytes_model(repository: Path, dims: str = "-1") -> None:
    """`echo_bytes`: a Python model answering its BYTES input TEXT as its output ECHO."""
    write_python_model(repository, "echo_bytes",
                       f'input [ {{ name: "TEXT" data_type: TYPE_STRING dims: [ {dims} ] }} ]\n'
                       f'output [ {{ name: "ECHO" data_type: TYPE_STRING dims: [ {dims} ] }} ]\n',
                       _ECHO_BYTES_MODEL, max_batch_size=8)


_DOUBLE_MODEL = """import triton_python_backend_utils as pb_utils


class TritonPythonModel:
    def execute(self, requests):
        return [pb_utils.InferenceResponse([pb_utils.Tensor(
                    "OUTPUT0", pb_utils.get_input_tensor_by_name(r, "INPUT0").as_numpy() * 2)])
                for r in requests]
"""


def write_double_model(repository: Path, name: str = "double", dims: str = "-1",
                       extra_config: str = "") -> None:
    """`double`: a Python model answering OUTPUT0 = 2 * INPUT0 (FP32 [dims])."""
    write_python_model(repository, name,
                       f'input [ {{ name: "INPUT0" data_type: TYPE_FP32 dims: [ {dims} ] }} ]\n'
                       f'output [ {{ name: "OUTPUT0" data_type: TYPE_FP32 dims: [ {dims} ] }} ]\n'
                       + extra_config, _DOUBLE_MODEL)


def batch_counts(stats) -> dict[int, int]:
    """batch size -> executions, from a ModelStatistics message."""
    return {b.batch_size: b.compute_infer.count for b in stats.batch_stats}


def child_pids(pid: int) -> set[int]:
    """The PIDs of the live (not zombie) processes whose parent is `pid`."""
    found = set()
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()  # after "pid (comm)"
        except OSError:
            continue
        if int(fields[1]) == pid and fields[0] != "Z":
            found.add(int(stat.parent.name))
    return found
