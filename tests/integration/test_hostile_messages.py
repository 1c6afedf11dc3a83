"""What a review of the native data path found, each checked with a real server on both
frontends: request limits enforced before anything is allocated (and linear work past them),
repeated outputs answered once, the protobuf wire read as protobuf reads it, element counts
that cannot wrap, and model outputs whose shape does not fit their configuration."""

from __future__ import annotations

import json
import resource
import struct

import grpc
import numpy as np
import pytest
import requests
import tritonclient.grpc as grpcclient
import tritonclient.http as httpclient
from tritonclient.utils import InferenceServerException

from conftest import (EXAMPLES, FRONTENDS, start_server, write_echo_bytes_model,
                      write_python_model)
from pyserve.protocol import pb
from pyserve.protocol.wire import key, varint

MODELS = {
    # Any shape of rank 3: only the element count stands between a shape and the core.
    "identity3": ('input [ { name: "IN" data_type: TYPE_INT32 dims: [ -1, -1, -1 ] } ]\n'
                  'output [ { name: "OUT" data_type: TYPE_INT32 dims: [ -1, -1, -1 ] } ]\n',
                  'out = inputs["IN"]'),
    # As many zero bytes as IN says; it keeps its last answer.
    "zeros": ('input [ { name: "IN" data_type: TYPE_INT64 dims: [ 1 ] } ]\n'
              'output [ { name: "OUT" data_type: TYPE_UINT8 dims: [ -1 ] } ]\n',
              'out = self.kept = np.zeros(int(inputs["IN"][0]), dtype=np.uint8)'),
    # The config says the model computes OUT as [2, 3]; it returns [2, 2].
    "wrong_reshape": ('input [ { name: "IN" data_type: TYPE_FP32 dims: [ 4 ] } ]\n'
                      'output [ { name: "OUT" data_type: TYPE_FP32 dims: [ 6 ] '
                      'reshape { shape: [ 2, 3 ] } } ]\n',
                      'out = inputs["IN"].reshape(2, 2)'),
}

MODEL_PY = """
import numpy as np
import triton_python_backend_utils as pb_utils


class TritonPythonModel:
    def execute(self, requests):
        responses = []
        for request in requests:
            inputs = {{"IN": pb_utils.get_input_tensor_by_name(request, "IN").as_numpy()}}
            {body}
            responses.append(pb_utils.InferenceResponse([pb_utils.Tensor("OUT", out)]))
        return responses
"""


# Keeps the first input array it is given (the view itself, as a model may) and answers it.
KEEPS_INPUT_PY = """
import numpy as np
import triton_python_backend_utils as pb_utils


class TritonPythonModel:
    first = None

    def execute(self, requests):
        responses = []
        for request in requests:
            array = pb_utils.get_input_tensor_by_name(request, "IN").as_numpy()
            if self.first is None:
                self.first = array
            responses.append(pb_utils.InferenceResponse(
                [pb_utils.Tensor("OUT", np.array(self.first))]))
        return responses
"""


def write_models(repository) -> None:
    for name, (tensors, body) in MODELS.items():
        write_python_model(repository, name, tensors, MODEL_PY.format(body=body))
    write_echo_bytes_model(repository)
    write_python_model(repository, "keeps_input",
                       'input [ { name: "IN" data_type: TYPE_INT32 dims: [ 4096 ] } ]\n'
                       'output [ { name: "OUT" data_type: TYPE_INT32 dims: [ 4096 ] } ]\n',
                       KEEPS_INPUT_PY)


def serve(tmp_path_factory, frontend: str, *extra: str):
    repository = tmp_path_factory.mktemp("hostile")
    write_models(repository)
    models = ["simple", "echo_bytes", "keeps_input", *MODELS]
    return start_server(
        [EXAMPLES, repository], tmp_path_factory.mktemp("logs") / f"hostile-{frontend}.log",
        "--model-control-mode", "explicit", *(f"--load-model={m}" for m in models),
        "--grpc-frontend", frontend, "--http-frontend", frontend, *extra)


@pytest.fixture(scope="module", params=FRONTENDS)
def server(request, tmp_path_factory):
    process = serve(tmp_path_factory, request.param)
    yield process
    assert process.stop() == 0
    assert "Traceback" not in process.log()


# ----------------------------------------------------------------------- the protobuf wire

def field(number: int, data: bytes) -> bytes:
    return key(number, 2) + varint(len(data)) + data


def simple_tensor(name: bytes, extra: bytes = b"") -> bytes:
    return field(1, name) + field(2, b"INT32") + field(3, varint(1) + varint(16)) + extra


def simple_request(head: bytes = b"", input0_extra: bytes = b"", tail: bytes = b"") -> bytes:
    """ModelInfer for `simple` with INPUT0 = 0..15 and INPUT1 = 1, with fields added."""
    a = np.arange(16, dtype=np.int32).tobytes()
    b = np.ones(16, dtype=np.int32).tobytes()
    return (head + field(1, b"simple") + field(5, simple_tensor(b"INPUT0", input0_extra))
            + field(5, simple_tensor(b"INPUT1")) + field(7, a) + field(7, b) + tail)


def parameter(name: str, value: int) -> bytes:
    """One entry of a map<string, InferParameter> holding int64_param."""
    return field(1, name.encode()) + field(2, key(2, 0) + varint(value))


def model_infer(server, message: bytes) -> pb.ModelInferResponse:
    channel = grpc.insecure_channel(server.grpc_url)
    try:
        call = channel.unary_unary("/inference.GRPCInferenceService/ModelInfer")
        return pb.ModelInferResponse.FromString(call(message, timeout=60))
    finally:
        channel.close()


def refusal(server, message: bytes) -> tuple[grpc.StatusCode, str]:
    with pytest.raises(grpc.RpcError) as refused:
        model_infer(server, message)
    return refused.value.code(), refused.value.details()


def output0(answer: pb.ModelInferResponse) -> np.ndarray:
    index = [o.name for o in answer.outputs].index("OUTPUT0")
    return np.frombuffer(answer.raw_output_contents[index], dtype=np.int32)


def post(server, model: str, body: bytes, headers: dict | None = None) -> requests.Response:
    return requests.post(f"http://{server.http_url}/v2/models/{model}/infer", data=body,
                         headers=headers or {}, timeout=60)


def assert_still_serving(server) -> None:
    answer = model_infer(server, simple_request())
    np.testing.assert_array_equal(output0(answer), np.arange(16) + 1)


# --------------------------------------------------------------------------- request limits

MANY = 200_000


def test_many_parameters_are_refused_before_they_are_parsed(server):
    message = simple_request(tail=b"".join(field(4, parameter(f"p{i}", i)) for i in range(MANY)))
    assert refusal(server, message) == (
        grpc.StatusCode.INVALID_ARGUMENT,
        "too many parameters: the limit is 4096 (--request-limit parameters=N)")
    body = {"parameters": {f"p{i}": i for i in range(MANY)},
            "inputs": [{"name": "INPUT0", "datatype": "INT32", "shape": [1, 16], "data": [0] * 16}]}
    response = post(server, "simple", json.dumps(body).encode())
    assert response.status_code == 400
    assert response.json() == {
        "error": "too many parameters: the limit is 4096 (--request-limit parameters=N)"}
    assert_still_serving(server)


def test_many_inputs_are_refused_before_they_are_parsed(server):
    message = simple_request(tail=field(5, simple_tensor(b"INPUT0")) * MANY)
    assert refusal(server, message) == (
        grpc.StatusCode.INVALID_ARGUMENT,
        "too many inputs: the limit is 4096 (--request-limit inputs=N)")
    assert_still_serving(server)


def test_deep_shapes_are_refused(server):
    message = simple_request(input0_extra=field(3, varint(1) * 65))
    assert refusal(server, message) == (
        grpc.StatusCode.INVALID_ARGUMENT,
        "too many dimensions in a shape: the limit is 64 (--request-limit rank=N)")


@pytest.fixture(scope="module", params=FRONTENDS)
def unlimited(request, tmp_path_factory):
    process = serve(tmp_path_factory, request.param, "--request-limit", f"parameters={2 * MANY}",
                    "--request-limit", f"inputs={2 * MANY}", "--request-limit",
                    f"outputs={2 * MANY}")
    yield process
    assert process.stop() == 0


def test_past_raised_limits_the_work_is_linear(unlimited):
    """With the limits raised, 200,000 parameters are answered and 200,000 inputs refused by
    the duplicate check (hashed, not quadratic: quadratic did not answer in minutes)."""
    parameters = b"".join(field(4, parameter(f"p{i}", i)) for i in range(MANY))
    np.testing.assert_array_equal(output0(model_infer(unlimited, simple_request(tail=parameters))),
                                  np.arange(16) + 1)
    zeros = field(5, field(2, bytes(16)))  # typed contents: 16 packed int32 zeros
    inputs = [field(5, simple_tensor(f"IN{i}".encode(), zeros)) for i in [*range(MANY), 7]]
    code, text = refusal(unlimited, field(1, b"simple") + b"".join(inputs))
    assert (code, text) == (grpc.StatusCode.INVALID_ARGUMENT,
                            "[request id: <id_unknown>] input 'IN7' already exists in request")
    repeated = b"".join(field(6, field(1, b"OUTPUT0")) for _ in range(MANY))
    answer = model_infer(unlimited, simple_request(tail=repeated))
    assert [o.name for o in answer.outputs] == ["OUTPUT0"]


def test_a_repeated_output_is_answered_once(server):
    """Triton keeps a set of the requested names: one output however often it is asked for."""
    repeated = b"".join(field(6, field(1, name)) for name in [b"OUTPUT1", b"OUTPUT0"] * 1000)
    answer = model_infer(server, simple_request(tail=repeated))
    assert [o.name for o in answer.outputs] == ["OUTPUT1", "OUTPUT0"]
    assert len(answer.raw_output_contents) == 2
    body = {"inputs": [{"name": n, "datatype": "INT32", "shape": [1, 16], "data": [1] * 16}
                       for n in ("INPUT0", "INPUT1")],
            "outputs": [{"name": "OUTPUT0"}] * 1000}
    response = post(server, "simple", json.dumps(body).encode())
    assert response.status_code == 200
    assert [o["name"] for o in response.json()["outputs"]] == ["OUTPUT0"]


# ------------------------------------------------------------------ strict as protobuf is

def test_a_field_number_past_29_bits_is_refused(server):
    """Field numbers end at 2^29 - 1; one past was truncated to its low 32 bits (here: 3,
    the request id, answered back) instead of being refused as protobuf refuses it."""
    message = simple_request(tail=key((1 << 32) | 3, 2) + varint(3) + b"xyz")
    code, text = refusal(server, message)
    assert code == grpc.StatusCode.INVALID_ARGUMENT and "failed to parse" in text, text


def test_a_shape_of_another_wire_type_is_skipped(server):
    """A shape entry as fixed32 is an unknown field to protobuf, not a broken message."""
    answer = model_infer(server, simple_request(input0_extra=key(3, 5) + struct.pack("<I", 9)))
    np.testing.assert_array_equal(output0(answer), np.arange(16) + 1)


def test_bytes_contents_of_another_wire_type_are_skipped(server):
    """A varint where bytes_contents (field 8) belongs: protobuf skips it; it had appended the
    previous element again."""
    contents = field(8, b"one") + key(8, 0) + varint(5) + field(8, b"two")
    tensor = field(1, b"TEXT") + field(2, b"BYTES") + field(3, varint(1) + varint(2))
    message = field(1, b"echo_bytes") + field(5, tensor + field(5, contents))
    answer = model_infer(server, message)
    raw = answer.raw_output_contents[0]
    assert raw == struct.pack("<I", 3) + b"one" + struct.pack("<I", 3) + b"two"


# ------------------------------------------------------------------------ element counts

def test_an_element_count_past_64_bits_is_refused(server):
    """2^59 * 2^60 * 2^62 wrapped to 0 elements, which an empty tensor then matched."""
    shape = [2**59, 2**60, 2**62]
    text = ("input 'IN' for model 'identity3' has more than 68719476736 elements "
            "(--request-limit elements=N)")
    with grpcclient.InferenceServerClient(server.grpc_url) as client:
        tensor = grpcclient.InferInput("IN", shape, "INT32")
        tensor._raw_content = b""
        with pytest.raises(InferenceServerException) as refused:
            client.infer("identity3", [tensor])
    assert refused.value.status() == "StatusCode.INVALID_ARGUMENT"
    assert refused.value.message() == "[request id: <id_unknown>] " + text
    body = {"inputs": [{"name": "IN", "datatype": "INT32", "shape": shape,
                        "parameters": {"binary_data_size": 0}}]}
    header = json.dumps(body).encode()
    response = post(server, "identity3", header,
                    {"Inference-Header-Content-Length": str(len(header))})
    assert response.status_code == 400
    assert response.json()["error"] == "[request id: <id_unknown>] " + text


# -------------------------------------------------------------------- outputs that do not fit

@pytest.mark.parametrize("classification", [0, 3])
def test_an_output_that_does_not_fit_its_reshape_is_an_error(server, classification):
    """The model returns [2, 2] where the config reshapes [2, 3] to [6]: the answer was shaped
    [6] over 4 values, and classification read past them."""
    text = ("model 'wrong_reshape' returned output 'OUT' with shape [2,2] (16 bytes), which "
            "does not fit its configuration")
    with grpcclient.InferenceServerClient(server.grpc_url) as client:
        tensor = grpcclient.InferInput("IN", [4], "FP32")
        tensor.set_data_from_numpy(np.arange(4, dtype=np.float32))
        output = grpcclient.InferRequestedOutput("OUT", class_count=classification)
        with pytest.raises(InferenceServerException) as failed:
            client.infer("wrong_reshape", [tensor], outputs=[output])
    assert failed.value.status() == "StatusCode.INTERNAL"
    assert failed.value.message() == text
    assert_still_serving(server)


# ------------------------------------------------------------------------- input ownership

@pytest.mark.parametrize("protocol", ["grpc", "http"])
def test_an_input_array_a_model_keeps_stays_valid(server, protocol):
    """Input arrays are views of the request's memory, which they keep alive: the array the
    model kept from its first request still reads that request's values after others."""
    module = grpcclient if protocol == "grpc" else httpclient
    url = server.grpc_url if protocol == "grpc" else server.http_url
    first = np.arange(4096, dtype=np.int32)
    with module.InferenceServerClient(url) as client:
        def infer(values):
            tensor = module.InferInput("IN", [4096], "INT32")
            tensor.set_data_from_numpy(values)
            return client.infer("keeps_input", [tensor]).as_numpy("OUT")
        kept = infer(first)
        for i in range(20):
            np.testing.assert_array_equal(infer(np.full(4096, -i, dtype=np.int32)), kept)
    # The module's server served earlier tests: the kept array is its first request's.
    if protocol == "grpc":
        np.testing.assert_array_equal(kept, first)


# ------------------------------------------------------------------- memory that runs out

# Memory that runs out is a native frontend's to survive: in the Python ones, protobuf's parser
# (upb) crashes when an allocation fails, and aiohttp and grpc.aio fail the call in their own
# copy of a response (aiohttp logs it).
PYTHON_OUT_OF_MEMORY = "the Python frontends' libraries do not survive an allocation failure"


def vm_bytes(pid: int) -> int:
    with open(f"/proc/{pid}/status") as status:
        line = next(line for line in status if line.startswith("VmSize:"))
    return int(line.split()[1]) * 1024


def test_a_request_the_server_cannot_hold_fails_alone(server, request):
    """An allocation that fails while a request is taken (bad_alloc on a completion-queue
    thread) fails that request, not the server. The server's address space is capped a little
    above what it uses, and the request converts 64 MiB of packed int64 zeros (1 byte each on
    the wire) into 512 MiB of tensor."""
    if request.node.callspec.params["server"] == "python":
        pytest.skip(PYTHON_OUT_OF_MEMORY)
    count = 64 << 20
    tensor = (field(1, b"INPUT0") + field(2, b"INT64") + field(3, varint(count))
              + field(5, field(3, bytes(count))))
    message = field(1, b"simple") + field(5, tensor)
    pid = server.process.pid
    limit = resource.prlimit(pid, resource.RLIMIT_AS)
    resource.prlimit(pid, resource.RLIMIT_AS, (vm_bytes(pid) + (384 << 20), limit[1]))
    try:
        code, text = refusal(server, message)
    finally:
        resource.prlimit(pid, resource.RLIMIT_AS, limit)
    assert (code, text) == (grpc.StatusCode.INTERNAL,
                            "failed to take the request: std::bad_alloc")
    assert_still_serving(server)


@pytest.mark.parametrize("protocol", ["grpc", "http"])
def test_a_response_the_server_cannot_hold_fails_alone(server, protocol, request):
    """The model's 256 MiB answer (which it keeps) and the core's copy fit under the cap; the
    encoding does not (bad_alloc in a response sink): that request fails, the server goes on."""
    if request.node.callspec.params["server"] == "python":
        pytest.skip(PYTHON_OUT_OF_MEMORY)
    module = grpcclient if protocol == "grpc" else httpclient
    url = server.grpc_url if protocol == "grpc" else server.http_url
    pid = server.process.pid
    limit = resource.prlimit(pid, resource.RLIMIT_AS)
    with module.InferenceServerClient(url) as client:
        tensor = module.InferInput("IN", [1], "INT64")
        tensor.set_data_from_numpy(np.array([256 << 20], dtype=np.int64))
        resource.prlimit(pid, resource.RLIMIT_AS, (vm_bytes(pid) + (640 << 20), limit[1]))
        try:
            with pytest.raises(InferenceServerException) as failed:
                client.infer("zeros", [tensor])
        finally:
            resource.prlimit(pid, resource.RLIMIT_AS, limit)
        assert failed.value.status() == ("StatusCode.INTERNAL" if protocol == "grpc" else "500")
        assert failed.value.message() == "failed to encode the response: std::bad_alloc"
        tensor.set_data_from_numpy(np.array([5], dtype=np.int64))
        np.testing.assert_array_equal(client.infer("zeros", [tensor]).as_numpy("OUT"),
                                      np.zeros(5, dtype=np.uint8))
    assert_still_serving(server)
