"""--grpc-header-forward-pattern and --http-header-forward-pattern: headers whose name the
pattern finds reach the model as request parameters (a request's own parameter of the same
name wins), on both frontends."""

from __future__ import annotations

import json

import numpy as np
import pytest
import tritonclient.grpc as grpcclient
import tritonclient.http as httpclient

from conftest import FRONTENDS, start_server, write_python_model

PARAMETERS_PY = """
import numpy as np
import triton_python_backend_utils as pb_utils


class TritonPythonModel:
    def execute(self, requests):
        return [pb_utils.InferenceResponse([pb_utils.Tensor(
            "PARAMETERS", np.array([r.parameters().encode()], dtype=np.object_))])
            for r in requests]
"""


@pytest.fixture(scope="module", params=FRONTENDS)
def server(request, tmp_path_factory):
    repository = tmp_path_factory.mktemp("forward")
    write_python_model(repository, "parameters",
                       'input [ { name: "IN" data_type: TYPE_INT32 dims: [ 1 ] } ]\n'
                       'output [ { name: "PARAMETERS" data_type: TYPE_STRING dims: [ 1 ] } ]\n',
                       PARAMETERS_PY)
    process = start_server([repository], repository / "server.log", "--grpc-frontend",
                           request.param, "--http-frontend", request.param,
                           "--grpc-header-forward-pattern", "^x-triton-",
                           "--http-header-forward-pattern", "^x-triton-")
    yield process
    assert process.stop() == 0


@pytest.mark.parametrize("protocol", ["grpc", "http"])
def test_matching_headers_become_parameters(server, protocol):
    module = grpcclient if protocol == "grpc" else httpclient
    url = server.grpc_url if protocol == "grpc" else server.http_url
    with module.InferenceServerClient(url) as client:
        tensor = module.InferInput("IN", [1], "INT32")
        tensor.set_data_from_numpy(np.zeros(1, np.int32))
        result = client.infer("parameters", [tensor], parameters={"x-triton-given": "request"},
                              headers={"x-triton-user": "alice", "x-triton-given": "header",
                                       "x-other": "no"})
    seen = json.loads(result.as_numpy("PARAMETERS")[0])
    assert seen["x-triton-user"] == "alice"
    assert seen["x-triton-given"] == "request"
    assert "x-other" not in seen
