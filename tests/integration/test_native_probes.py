"""Liveness and readiness probes answered by the native frontends (gRPC and HTTP) from the
core's model table: they never wait for the Python shell, here held off by a model that keeps
the GIL."""

from __future__ import annotations

import concurrent.futures
import http.client
import time

import grpc
import numpy as np
import pytest
import tritonclient.grpc as grpcclient

from conftest import EXAMPLES, start_server, write_python_model
from pyserve.protocol import health

HOG_PY = """
import pathlib
import sys
import time

import numpy as np
import triton_python_backend_utils as pb_utils


class TritonPythonModel:
    def initialize(self, args):
        self.started = pathlib.Path(args["model_repository"]) / "started"

    def execute(self, requests):
        self.started.touch()
        interval = sys.getswitchinterval()
        sys.setswitchinterval(60)  # keep the GIL: no other Python thread runs meanwhile
        try:
            end = time.monotonic() + 5
            while time.monotonic() < end:
                pass
        finally:
            sys.setswitchinterval(interval)
        return [pb_utils.InferenceResponse([pb_utils.Tensor("OUT", np.zeros(1, np.int32))])
                for _ in requests]
"""


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    repository = tmp_path_factory.mktemp("probes")
    write_python_model(repository, "hog",
                       'input [ { name: "IN" data_type: TYPE_INT32 dims: [ 1 ] } ]\n'
                       'output [ { name: "OUT" data_type: TYPE_INT32 dims: [ 1 ] } ]\n', HOG_PY)
    process = start_server([EXAMPLES, repository], repository / "server.log",
                           "--model-control-mode", "explicit", "--load-model=simple",
                           "--load-model=hog", "--grpc-frontend", "native",
                           "--http-frontend", "native")
    process.started = repository / "hog" / "started"
    yield process
    assert process.stop() == 0


def wait_for(path, timeout: float = 30) -> None:
    deadline = time.monotonic() + timeout
    while not path.exists():
        assert time.monotonic() < deadline, f"{path} never appeared"
        time.sleep(0.01)


def test_grpc_probes_are_answered_while_the_shell_cannot_run(server):
    with grpcclient.InferenceServerClient(server.grpc_url) as client, \
            concurrent.futures.ThreadPoolExecutor(1) as pool:
        tensor = grpcclient.InferInput("IN", [1], "INT32")
        tensor.set_data_from_numpy(np.zeros(1, np.int32))
        hogging = pool.submit(client.infer, "hog", [tensor])
        wait_for(server.started)
        assert client.is_server_live()
        assert client.is_server_ready()
        assert client.is_model_ready("simple")
        assert client.is_model_ready("simple", "1")
        assert not client.is_model_ready("simple", "2")
        assert not client.is_model_ready("unknown")
        with grpc.insecure_channel(server.grpc_url) as channel:
            check = channel.unary_unary("/grpc.health.v1.Health/Check")
            answer = health.HealthCheckResponse.FromString(check(b"", timeout=10))
        assert answer.status == health.HealthCheckResponse.SERVING
        assert not hogging.done(), "the probes waited for the model that holds the GIL"
        hogging.result(timeout=60)


def test_http_probes_are_answered_while_the_shell_cannot_run(server):
    with grpcclient.InferenceServerClient(server.grpc_url) as client, \
            concurrent.futures.ThreadPoolExecutor(1) as pool:
        tensor = grpcclient.InferInput("IN", [1], "INT32")
        tensor.set_data_from_numpy(np.zeros(1, np.int32))
        server.started.unlink(missing_ok=True)
        hogging = pool.submit(client.infer, "hog", [tensor])
        wait_for(server.started)
        connection = http.client.HTTPConnection(server.http_url, timeout=10)
        for path, status in [("/v2/health/live", 200), ("/v2/health/ready", 200),
                             ("/v2/models/simple/ready", 200),
                             ("/v2/models/simple/versions/1/ready", 200),
                             ("/v2/models/simple/versions/2/ready", 400),
                             ("/v2/models/unknown/ready", 400)]:
            connection.request("GET", path)
            reply = connection.getresponse()
            reply.read()
            assert reply.status == status, path
        connection.close()
        assert not hogging.done(), "the probes waited for the model that holds the GIL"
        hogging.result(timeout=60)
