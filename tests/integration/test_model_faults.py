"""Model faults stay with the model: a Python model that raises anything, BaseException
included (SystemExit, KeyboardInterrupt, GeneratorExit), at import, in auto_complete_config,
initialize, execute or finalize fails that load or those requests with a clear error, and the
server and every other model keep serving. Real servers, models uploaded through the
repository load API over gRPC and HTTP."""

from __future__ import annotations

import json
import textwrap

import numpy as np
import pytest
import tritonclient.grpc as grpcclient
import tritonclient.http as httpclient
from tritonclient.utils import InferenceServerException

from conftest import EXAMPLES, start_server, tensor

FAULTS = ["SystemExit(1)", "KeyboardInterrupt()", "GeneratorExit()"]

CONFIG = json.dumps({
    "backend": "python", "max_batch_size": 8,
    "input": [{"name": "INPUT0", "data_type": "TYPE_FP32", "dims": [2]}],
    "output": [{"name": "OUTPUT0", "data_type": "TYPE_FP32", "dims": [2]}],
})

# `{where}` names the step that raises `{fault}`; every other step works.
MODEL = '''
import triton_python_backend_utils as pb_utils

if "{where}" == "import":
    raise {fault}


class TritonPythonModel:
    @staticmethod
    def auto_complete_config(config):
        if "{where}" == "auto_complete_config":
            raise {fault}
        return config

    def initialize(self, args):
        if "{where}" == "initialize":
            raise {fault}

    def execute(self, requests):
        if "{where}" == "execute":
            raise {fault}
        return [pb_utils.InferenceResponse([pb_utils.Tensor(
                    "OUTPUT0", r.get_input_tensor_by_name("INPUT0").as_numpy() * 2)])
                for r in requests]

    def finalize(self):
        if "{where}" == "finalize":
            raise {fault}
'''


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    process = start_server([EXAMPLES], tmp_path_factory.mktemp("logs") / "faults.log",
                           "--model-control-mode", "explicit", "--load-model", "simple")
    yield process
    process.stop()


def client_for(server, protocol: str):
    if protocol == "grpc":
        return grpcclient, grpcclient.InferenceServerClient(server.grpc_url)
    return httpclient, httpclient.InferenceServerClient(server.http_url)


def load(client, name: str, where: str, fault: str) -> None:
    code = textwrap.dedent(MODEL.format(where=where, fault=fault))
    client.load_model(name, config=CONFIG, files={"file:1/model.py": code.encode()})


def assert_still_serving(server, module, client, name: str | None = None) -> None:
    """The process is alive, `simple` answers and so does `name` when given."""
    assert server.process.poll() is None, server.log()
    a = np.arange(16, dtype=np.int32).reshape(1, 16)
    inputs = [tensor(module, n, a, "INT32") for n in ("INPUT0", "INPUT1")]
    np.testing.assert_array_equal(client.infer("simple", inputs).as_numpy("OUTPUT0"), a * 2)
    if name is not None:
        x = np.array([[1.5, -2]], np.float32)
        result = client.infer(name, [tensor(module, "INPUT0", x, "FP32")])
        np.testing.assert_array_equal(result.as_numpy("OUTPUT0"), x * 2)


def exception_name(fault: str) -> str:
    return fault.split("(")[0]


@pytest.fixture(params=[(p, f) for p in ("grpc", "http") for f in FAULTS],
                ids=lambda param: f"{param[0]}-{exception_name(param[1])}")
def faulty(request, server):
    """(client module, connected client, the fault to raise, a name prefix for its models)."""
    protocol, fault = request.param
    module, client = client_for(server, protocol)
    with client:
        yield module, client, fault, f"{exception_name(fault)}_{protocol}".lower()


@pytest.mark.parametrize("where", ["import", "auto_complete_config", "initialize"])
def test_a_fault_while_loading_fails_that_load_only(server, faulty, where):
    module, client, fault, prefix = faulty
    name = f"{prefix}_load_{where}"
    with pytest.raises(InferenceServerException) as error:
        load(client, name, where, fault)
    assert "failed to load" in str(error.value) and f"'{name}'" in str(error.value)
    assert exception_name(fault) in str(error.value)
    assert not client.is_model_ready(name)
    assert_still_serving(server, module, client)
    load(client, name, "nowhere", fault)  # the same name loads once the model is fixed
    assert_still_serving(server, module, client, name)


def test_a_fault_in_execute_fails_those_requests_only(server, faulty):
    module, client, fault, prefix = faulty
    name = f"{prefix}_execute"
    load(client, name, "execute", fault)
    x = tensor(module, "INPUT0", np.ones((1, 2), np.float32), "FP32")
    for _ in range(2):
        with pytest.raises(InferenceServerException, match=exception_name(fault)) as error:
            client.infer(name, [x])
        assert error.value.status() in ("StatusCode.INTERNAL", "500")
    assert client.is_model_ready(name)
    assert_still_serving(server, module, client)


def test_a_fault_in_finalize_still_unloads(server, faulty):
    module, client, fault, prefix = faulty
    name = f"{prefix}_finalize"
    load(client, name, "finalize", fault)
    assert_still_serving(server, module, client, name)
    client.unload_model(name)
    assert not client.is_model_ready(name)
    assert_still_serving(server, module, client)
    load(client, name, "finalize", fault)  # and loads again
    assert_still_serving(server, module, client, name)
