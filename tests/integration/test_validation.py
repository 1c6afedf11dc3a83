"""Bad inference requests against a real server: the right gRPC code / HTTP status, Triton's
error text, and a server that keeps answering correct requests afterwards.

Requests go through the real tritonclient where it can build the bad input, and through raw
gRPC / HTTP where it refuses to (it checks shapes and datatypes on the client side).
"""

from __future__ import annotations

import http.client
import json
import struct

import grpc
import numpy as np
import onnx
import pytest
import tritonclient.grpc as grpcclient
import tritonclient.http as httpclient
from onnx import TensorProto, helper
from tritonclient.utils import InferenceServerException

from conftest import EXAMPLES, start_server
from pyserve.protocol import pb

NO_ID = "[request id: <id_unknown>] "
BATCH_NOTE = (
    "NOTE: Setting a non-zero max_batch_size in the model config requires a batch dimension to "
    "be prepended to each input shape. If you want to specify the full shape including the "
    "batch dim in your input dims config, try setting max_batch_size to zero. See the model "
    "configuration docs for more info on max_batch_size.")
SHORT_INPUT0 = (NO_ID + "input byte size mismatch for input 'INPUT0' for model 'simple'. "
                "Expected 64, got 60")
MODEL_INFER = "/inference.GRPCInferenceService/ModelInfer"
HTTP_STATUS = {"INVALID_ARGUMENT": 400, "NOT_FOUND": 404}
PROTOCOLS = ["grpc", "http"]

A = np.arange(16, dtype=np.int32).reshape(1, 16)
B = np.full((1, 16), 3, dtype=np.int32)


# ---------------------------------------------------------------------------------- helpers

def client(server, protocol: str):
    if protocol == "grpc":
        return grpcclient, grpcclient.InferenceServerClient(server.grpc_url)
    return httpclient, httpclient.InferenceServerClient(server.http_url)


def tensor(module, name: str, array: np.ndarray, datatype: str | None = None):
    datatype = datatype or {np.int32: "INT32", np.float32: "FP32",
                            np.object_: "BYTES"}[array.dtype.type]
    infer_input = module.InferInput(name, list(array.shape), datatype)
    infer_input.set_data_from_numpy(array)
    return infer_input


def refusal(server, protocol: str, model: str, arrays: dict, outputs=(), version: str = "",
            request_id: str = "") -> tuple[str, str]:
    """Send a request through tritonclient that must fail; return (status, message)."""
    module, triton = client(server, protocol)
    inputs = [tensor(module, name, array) for name, array in arrays.items()]
    requested = [module.InferRequestedOutput(name) for name in outputs]
    with pytest.raises(InferenceServerException) as caught:
        triton.infer(model, inputs, model_version=version, outputs=requested or None,
                     request_id=request_id)
    triton.close()
    return caught.value.status(), caught.value.message()


def expected_status(protocol: str, grpc_code: str) -> str:
    if protocol == "grpc":
        return f"StatusCode.{grpc_code}"
    return str(HTTP_STATUS[grpc_code])


def assert_serves(server) -> None:
    """The server still answers a correct request on `simple` correctly, on both protocols."""
    for protocol in PROTOCOLS:
        module, triton = client(server, protocol)
        result = triton.infer("simple", [tensor(module, "INPUT0", A), tensor(module, "INPUT1", B)])
        triton.close()
        np.testing.assert_array_equal(result.as_numpy("OUTPUT0"), A + B)
        np.testing.assert_array_equal(result.as_numpy("OUTPUT1"), A - B)


def raw_grpc(server, request: bytes) -> bytes:
    with grpc.insecure_channel(server.grpc_url) as channel:
        infer = channel.unary_unary(MODEL_INFER, request_serializer=None,
                                    response_deserializer=None)
        return infer(request, timeout=30)


def raw_grpc_refusal(server, request: bytes) -> tuple[grpc.StatusCode, str]:
    with pytest.raises(grpc.RpcError) as caught:
        raw_grpc(server, request)
    return caught.value.code(), caught.value.details()


def grpc_request(model: str = "simple", raw: list[bytes] | None = None, **inputs) -> bytes:
    """A serialized ModelInferRequest; each keyword is an input name -> InferInputTensor kwargs."""
    request = pb.ModelInferRequest(model_name=model)
    for name, fields in inputs.items():
        request.inputs.add(name=name, **fields)
    request.raw_input_contents.extend(raw or [])
    return request.SerializeToString()


def int32_input(shape=(1, 16), **fields) -> dict:
    return {"datatype": "INT32", "shape": list(shape), **fields}


def post(server, model: str, body: bytes, headers: dict | None = None) -> tuple[int, bytes]:
    connection = http.client.HTTPConnection(server.http_url, timeout=30)
    try:
        connection.request("POST", f"/v2/models/{model}/infer", body=body, headers=headers or {})
        response = connection.getresponse()
        return response.status, response.read()
    finally:
        connection.close()


def post_refusal(server, model: str, body: bytes, headers: dict | None = None) -> tuple[int, str]:
    status, answer = post(server, model, body, headers)
    assert status != 200, answer
    return status, json.loads(answer)["error"]


def binary_body(inputs: list[dict], chunks: list[bytes]) -> tuple[bytes, dict]:
    """A request with binary inputs: JSON header, then the chunks; and its headers."""
    head = json.dumps({"inputs": inputs}).encode()
    return head + b"".join(chunks), {"Inference-Header-Content-Length": str(len(head))}


def length_prefixed(*items: bytes) -> bytes:
    return b"".join(struct.pack("<I", len(item)) + item for item in items)


# ---------------------------------------------------------------------------------- servers

@pytest.fixture(scope="module")
def server(example_server):
    return example_server


@pytest.fixture(scope="module")
def strings_server(tmp_path_factory):
    """A server with `strings`: an ONNX Identity over a [-1,4] string tensor."""
    repository = tmp_path_factory.mktemp("strings_repository")
    graph = helper.make_graph(
        [helper.make_node("Identity", ["INPUT0"], ["OUTPUT0"])], "strings",
        [helper.make_tensor_value_info("INPUT0", TensorProto.STRING, [-1, 4])],
        [helper.make_tensor_value_info("OUTPUT0", TensorProto.STRING, [-1, 4])])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    (repository / "strings" / "1").mkdir(parents=True)
    onnx.save(model, str(repository / "strings" / "1" / "model.onnx"))
    (repository / "strings" / "config.pbtxt").write_text("""
name: "strings"
platform: "onnxruntime_onnx"
max_batch_size: 8
input [ { name: "INPUT0" data_type: TYPE_STRING dims: [ 4 ] } ]
output [ { name: "OUTPUT0" data_type: TYPE_STRING dims: [ 4 ] } ]
""")
    process = start_server([repository], repository.parent / "strings_server.log")
    yield process
    process.stop()


@pytest.fixture(scope="module")
def small_body_server(tmp_path_factory):
    logs = tmp_path_factory.mktemp("small_body_logs")
    process = start_server([EXAMPLES], logs / "server.log", "--http-max-input-size", "1024")
    yield process
    process.stop()


# ------------------------------------------------------------------- model and version lookup

@pytest.mark.parametrize("protocol", PROTOCOLS)
@pytest.mark.parametrize("model, version, code, message", [
    ("foo", "", "NOT_FOUND", "Request for unknown model: 'foo' is not found"),
    ("simple", "99", "NOT_FOUND", "Request for unknown model: 'simple' version 99 is not found"),
])
def test_unknown_model_or_version(server, protocol, model, version, code, message):
    status, text = refusal(server, protocol, model, {"INPUT0": A, "INPUT1": B}, version=version)
    assert (status, text) == (expected_status(protocol, code), message)
    assert_serves(server)


@pytest.mark.parametrize("version, message", [
    ("abc", "failed to get model version from specified version string 'abc' (details: stol), "
            "version should be an integral value > 0"),
    ("-2", "invalid model version specified '-2' , version should be an integral value > 0"),
])
def test_bad_version_string_over_grpc(server, version, message):
    status, text = refusal(server, "grpc", "simple", {"INPUT0": A, "INPUT1": B}, version=version)
    assert (status, text) == ("StatusCode.INVALID_ARGUMENT", message)
    assert_serves(server)


# ------------------------------------------------------------ request against the model config

F32 = A.astype(np.float32)
NARROW = np.zeros((1, 8), dtype=np.int32)
NINE = np.zeros((9, 16), dtype=np.int32)

CONFIG_CASES = {
    "no inputs": (
        {}, (),
        NO_ID + "expected 2 inputs but got 0 inputs for model 'simple'. Got input(s) [], but "
        "missing required input(s) ['INPUT0','INPUT1']. Please provide all required input(s)."),
    "missing input": (
        {"INPUT0": A}, (),
        NO_ID + "expected 2 inputs but got 1 inputs for model 'simple'. Got input(s) ['INPUT0'], "
        "but missing required input(s) ['INPUT1']. Please provide all required input(s)."),
    "too many inputs": (
        {"INPUT0": A, "INPUT1": B, "BOGUS": B}, (),
        NO_ID + "expected 2 inputs but got 3 inputs for model 'simple'. Got input(s) "
        "['INPUT0','INPUT1','BOGUS'], but missing required input(s) ]. Please provide all "
        "required input(s)."),
    "unknown input": (
        {"INPUT0": A, "BOGUS": B}, (), "unexpected inference input 'BOGUS' for model 'simple'"),
    "unknown output": (
        {"INPUT0": A, "INPUT1": B}, ("OUTPUT0", "BOGUS"),
        "unexpected inference output 'BOGUS' for model 'simple'"),
    "wrong datatype": (
        {"INPUT0": F32, "INPUT1": B}, (),
        NO_ID + "inference input 'INPUT0' data-type is 'FP32', but model 'simple' expects 'INT32'"),
    "wrong shape": (
        {"INPUT0": NARROW, "INPUT1": NARROW}, (),
        NO_ID + "unexpected shape for input 'INPUT0' for model 'simple'. Expected [-1,16], got "
        "[1,8]. " + BATCH_NOTE),
    "batch too large": (
        {"INPUT0": NINE, "INPUT1": NINE}, (),
        NO_ID + "inference request batch-size must be <= 8 for 'simple'"),
    "batch sizes differ": (
        {"INPUT0": A, "INPUT1": np.zeros((2, 16), dtype=np.int32)}, (),
        NO_ID + "input 'INPUT1' batch size does not match other inputs for 'simple'"),
}


@pytest.mark.parametrize("protocol", PROTOCOLS)
@pytest.mark.parametrize("case", CONFIG_CASES)
def test_request_against_config(server, protocol, case):
    arrays, outputs, message = CONFIG_CASES[case]
    status, text = refusal(server, protocol, "simple", arrays, outputs)
    assert (status, text) == (expected_status(protocol, "INVALID_ARGUMENT"), message)
    assert_serves(server)


@pytest.mark.parametrize("protocol", PROTOCOLS)
def test_request_id_in_prefix(server, protocol):
    status, text = refusal(server, protocol, "simple", {"INPUT0": F32, "INPUT1": B},
                           request_id="req-7")
    assert text == ("[request id: req-7] inference input 'INPUT0' data-type is 'FP32', but model "
                    "'simple' expects 'INT32'")
    assert status == expected_status(protocol, "INVALID_ARGUMENT")


# Shapes declared far beyond the bytes sent: refused from the declaration, nothing allocated.
HUGE_SHAPES = {
    "1e12 elements": ([1, 10**12], NO_ID + "unexpected shape for input 'INPUT0' for model "
                      "'simple'. Expected [-1,16], got [1,1000000000000]. " + BATCH_NOTE),
    "1e12 rows": ([10**12, 16], NO_ID + "inference request batch-size must be <= 8 for 'simple'"),
    "product past 2**64": ([1, 2**62, 2**62], NO_ID + "unexpected shape for input 'INPUT0' for "
                           "model 'simple'. Expected [-1,16], got [1,4611686018427387904,"
                           "4611686018427387904]. " + BATCH_NOTE),
}


@pytest.mark.parametrize("case", HUGE_SHAPES)
def test_huge_declared_shape_grpc(server, case):
    shape, message = HUGE_SHAPES[case]
    request = grpc_request(INPUT0=int32_input(shape), INPUT1=int32_input(shape),
                           raw=[A.tobytes(), B.tobytes()])
    code, text = raw_grpc_refusal(server, request)
    assert (code, text) == (grpc.StatusCode.INVALID_ARGUMENT, message)
    assert_serves(server)


@pytest.mark.parametrize("case", HUGE_SHAPES)
def test_huge_declared_shape_http(server, case):
    shape, message = HUGE_SHAPES[case]
    inputs = [{"name": name, "datatype": "INT32", "shape": shape,
               "parameters": {"binary_data_size": 64}} for name in ("INPUT0", "INPUT1")]
    body, headers = binary_body(inputs, [A.tobytes(), B.tobytes()])
    assert post_refusal(server, "simple", body, headers) == (400, message)
    assert_serves(server)


# ------------------------------------------------------------------------------- byte sizes

def test_raw_contents_shorter_than_shape_grpc(server):
    request = grpc_request(raw=[A.tobytes()[:60], B.tobytes()],
                           INPUT0=int32_input(), INPUT1=int32_input())
    assert raw_grpc_refusal(server, request) == (
        grpc.StatusCode.INVALID_ARGUMENT,
        SHORT_INPUT0)
    assert_serves(server)


def binary_input(name: str, size: int, shape=(1, 16), datatype="INT32") -> dict:
    return {"name": name, "datatype": datatype, "shape": list(shape),
            "parameters": {"binary_data_size": size}}


@pytest.mark.parametrize("sizes, chunks, message", [
    ((60, 64), (A.tobytes()[:60], B.tobytes()),
     SHORT_INPUT0),
    ((64, 80), (A.tobytes(), B.tobytes()),
     "unexpected size for input 'INPUT1', expecting 64 additional bytes for model 'simple'"),
    ((64, 64), (A.tobytes(), B.tobytes(), b"\0" * 8),
     "unexpected additional input data for model 'simple'"),
], ids=["short", "past the end", "left over"])
def test_binary_data_size_http(server, sizes, chunks, message):
    body, headers = binary_body(
        [binary_input("INPUT0", sizes[0]), binary_input("INPUT1", sizes[1])], list(chunks))
    assert post_refusal(server, "simple", body, headers) == (400, message)
    assert_serves(server)


# ------------------------------------------------------------------------------------ BYTES

STRINGS = np.array([[b"hello", b"", b"a b", b"x" * 300]], dtype=np.object_)
UTF8_STRINGS = np.array([["gr\u00fc\u00df".encode(), "\u65e5\u672c".encode(), b"", b"z"]],
                        dtype=np.object_)

BYTES_CASES = {
    "broken length prefix": (
        length_prefixed(b"a", b"b", b"c") + b"\x01\x00",
        NO_ID + "incomplete string length indicator for inference input 'INPUT0' for model "
        "'strings', expecting 4 bytes but only 2 bytes available. Please make sure the string "
        "length indicator is in one buffer."),
    "length past the end": (
        length_prefixed(b"a", b"b", b"c") + struct.pack("<I", 100) + b"xy",
        NO_ID + "expected 4 string elements for inference input 'INPUT0' for model 'strings', "
        "got 3"),
    "too few elements": (
        length_prefixed(b"a", b"b", b"c"),
        NO_ID + "expected 4 string elements for inference input 'INPUT0' for model 'strings', "
        "got 3"),
    "too many elements": (
        length_prefixed(b"a", b"b", b"c", b"d", b"e"),
        NO_ID + "unexpected number of string elements 5 for inference input 'INPUT0' for model "
        "'strings', expecting 4"),
}


def bytes_round_trip(server, protocol: str, strings: np.ndarray) -> None:
    module, triton = client(server, protocol)
    result = triton.infer("strings", [tensor(module, "INPUT0", strings)])
    triton.close()
    output = result.as_numpy("OUTPUT0")
    assert output.shape == strings.shape
    assert list(output.reshape(-1)) == list(strings.reshape(-1))


@pytest.mark.parametrize("protocol", PROTOCOLS)
def test_bytes_round_trip(strings_server, protocol):
    bytes_round_trip(strings_server, protocol, STRINGS)


@pytest.mark.parametrize("protocol", PROTOCOLS)
def test_utf8_bytes_round_trip(strings_server, protocol):
    bytes_round_trip(strings_server, protocol, UTF8_STRINGS)


@pytest.mark.parametrize("case", BYTES_CASES)
def test_bad_bytes_grpc(strings_server, case):
    data, message = BYTES_CASES[case]
    request = grpc_request("strings", raw=[data],
                           INPUT0={"datatype": "BYTES", "shape": [1, 4]})
    assert raw_grpc_refusal(strings_server, request) == (grpc.StatusCode.INVALID_ARGUMENT, message)
    bytes_round_trip(strings_server, "grpc", STRINGS)


@pytest.mark.parametrize("case", BYTES_CASES)
def test_bad_bytes_http(strings_server, case):
    data, message = BYTES_CASES[case]
    body, headers = binary_body([binary_input("INPUT0", len(data), (1, 4), "BYTES")], [data])
    assert post_refusal(strings_server, "strings", body, headers) == (400, message)
    bytes_round_trip(strings_server, "http", STRINGS)


# ------------------------------------------------------------------------- gRPC tensor data

GRPC_CASES = {
    "contents with raw": (
        grpc_request(raw=[A.tobytes(), B.tobytes()],
                     INPUT0=int32_input(contents={"int_contents": A.ravel().tolist()}),
                     INPUT1=int32_input()),
        "contents field must not be specified when using raw_input_contents for 'INPUT0' for "
        "model 'simple'"),
    "fewer raw than inputs": (
        grpc_request(raw=[A.tobytes()], INPUT0=int32_input(), INPUT1=int32_input()),
        "unable to find data for input tensor 'INPUT1' for model 'simple' in request."),
    "wrong typed field": (
        grpc_request(INPUT0=int32_input(contents={"fp32_contents": F32.ravel().tolist()}),
                     INPUT1=int32_input(contents={"int_contents": B.ravel().tolist()})),
        "unexpected explicit tensor data for input tensor 'INPUT0' for model 'simple' of type "
        "'FP32', expected datatype 'INT32'"),
    "two typed fields": (
        grpc_request(INPUT0=int32_input(contents={"int_contents": A.ravel().tolist(),
                                                  "fp32_contents": [1.0]}),
                     INPUT1=int32_input(contents={"int_contents": B.ravel().tolist()})),
        "unexpected explicit tensor data for input tensor 'INPUT0' for model 'simple', binary "
        "data was already supplied."),
    "unknown datatype": (
        grpc_request(raw=[A.tobytes(), B.tobytes()],
                     INPUT0={"datatype": "FOO", "shape": [1, 16]}, INPUT1=int32_input()),
        NO_ID + "inference input 'INPUT0' data-type is 'INVALID', but model 'simple' expects "
        "'INT32'"),
    "typed count short": (
        grpc_request(INPUT0=int32_input(contents={"int_contents": list(range(15))}),
                     INPUT1=int32_input(contents={"int_contents": B.ravel().tolist()})),
        SHORT_INPUT0),
}


@pytest.mark.parametrize("case", GRPC_CASES)
def test_grpc_tensor_data(server, case):
    request, message = GRPC_CASES[case]
    assert raw_grpc_refusal(server, request) == (grpc.StatusCode.INVALID_ARGUMENT, message)
    assert_serves(server)


def test_typed_int_contents_grpc(server):
    request = grpc_request(INPUT0=int32_input(contents={"int_contents": A.ravel().tolist()}),
                           INPUT1=int32_input(contents={"int_contents": B.ravel().tolist()}))
    response = pb.ModelInferResponse.FromString(raw_grpc(server, request))
    outputs = {o.name: np.frombuffer(raw, dtype=np.int32).reshape(list(o.shape))
               for o, raw in zip(response.outputs, response.raw_output_contents)}
    assert [o.datatype for o in response.outputs] == ["INT32", "INT32"]
    np.testing.assert_array_equal(outputs["OUTPUT0"], A + B)
    np.testing.assert_array_equal(outputs["OUTPUT1"], A - B)


@pytest.mark.parametrize("data", [b"\xff\xff\xff", b"\x0a\x10simple"], ids=["varint", "truncated"])
def test_malformed_protobuf_grpc(server, data):
    code, message = raw_grpc_refusal(server, data)
    assert code == grpc.StatusCode.INVALID_ARGUMENT
    assert message.startswith("failed to parse ModelInferRequest: ")
    assert_serves(server)


# ------------------------------------------------------------------------------- HTTP bodies

def json_input(name: str, data, shape=(1, 16), datatype="INT32") -> dict:
    return {"name": name, "datatype": datatype, "shape": list(shape), "data": data}


def test_invalid_json_http(server):
    status, message = post_refusal(server, "simple", b"not json")
    assert status == 500  # Triton's JSON reader fails INTERNAL
    assert message.startswith("failed to parse the request JSON buffer: ")
    assert_serves(server)


def test_invalid_json_text_http(server):
    assert post_refusal(server, "simple", b"not json") == (
        500, "failed to parse the request JSON buffer: Invalid value. at 0")


@pytest.mark.parametrize("count", [15, 18])
def test_json_data_count_http(server, count):
    body = json.dumps({"inputs": [json_input("INPUT0", list(range(count))),
                                  json_input("INPUT1", B.ravel().tolist())]}).encode()
    status, message = post_refusal(server, "simple", body)
    assert status == 500  # INTERNAL, as Triton 2.51 answers it
    assert message == "Unable to parse 'data': Shape does not match true shape of 'data' field"
    assert_serves(server)


ONLY_ONE = ("Input must set only one of the following fields: 'data', 'binary_data_size' in "
            "'parameters', 'shared_memory_region' in 'parameters'. ")

JSON_INPUT_CASES = {
    "FP16 data": (
        json_input("INPUT0", [0.5] * 16, datatype="FP16"),
        "receiving FP16 data via JSON is not supported. Please use the binary data format for "
        "input INPUT0"),
    "unknown datatype": (
        json_input("INPUT0", A.ravel().tolist(), datatype="FOO"),
        "invalid datatype for input INPUT0"),
    "no data field": (
        {"name": "INPUT0", "datatype": "INT32", "shape": [1, 16]},
        ONLY_ONE + "But no field is set"),
    "data and binary size": (
        {**json_input("INPUT0", A.ravel().tolist()), "parameters": {"binary_data_size": 64}},
        ONLY_ONE + "But set 'data' 'binary_data_size'"),
}


@pytest.mark.parametrize("case", JSON_INPUT_CASES)
def test_json_input_http(server, case):
    spec, message = JSON_INPUT_CASES[case]
    body = json.dumps({"inputs": [spec, json_input("INPUT1", B.ravel().tolist())]}).encode()
    assert post_refusal(server, "simple", body) == (400, message)
    assert_serves(server)


MISSHAPEN = {  # case: (header, status as Triton 2.51 answers it)
    "input parameters not an object": ({"inputs": [
        {**json_input("INPUT0", A.ravel().tolist()), "parameters": []},
        json_input("INPUT1", B.ravel().tolist())]}, 200),  # taken as none
    "request parameters not an object": ({"parameters": [], "inputs": [
        json_input("INPUT0", A.ravel().tolist()), json_input("INPUT1", B.ravel().tolist())]}, 500),
    "output without name": ({"outputs": [{}], "inputs": [
        json_input("INPUT0", A.ravel().tolist()), json_input("INPUT1", B.ravel().tolist())]}, 500),
}


@pytest.mark.parametrize("case", MISSHAPEN)
def test_misshapen_header_http(server, case):
    header, expected = MISSHAPEN[case]
    status, answer = post(server, "simple", json.dumps(header).encode())
    assert status == expected, answer
    assert json.loads(answer)["error" if status != 200 else "outputs"]


def test_header_length_past_body_http(server):
    body, _ = binary_body([binary_input("INPUT0", 64), binary_input("INPUT1", 64)],
                          [A.tobytes(), B.tobytes()])
    headers = {"Inference-Header-Content-Length": str(len(body) + 10)}
    assert post_refusal(server, "simple", body, headers) == (
        400, f"inference header size should be in range (0, {len(body)}), got: {len(body) + 10}")
    assert_serves(server)


def test_oversized_body_http(small_body_server):
    status, _ = post(small_body_server, "simple", b"{" + b" " * 4095)
    assert status == 413
    body = json.dumps({"inputs": [json_input("INPUT0", A.ravel().tolist()),
                                  json_input("INPUT1", B.ravel().tolist())]}).encode()
    assert len(body) < 1024
    status, answer = post(small_body_server, "simple", body)
    assert status == 200, answer
    assert_serves(small_body_server)


def test_json_round_trip_http(server):
    body = json.dumps({"id": "j1", "inputs": [json_input("INPUT0", A.ravel().tolist()),
                                              json_input("INPUT1", B.ravel().tolist())],
                       "outputs": [{"name": "OUTPUT1"}, {"name": "OUTPUT0"}]}).encode()
    status, answer = post(server, "simple", body, {"Content-Type": "application/json"})
    assert status == 200, answer
    response = json.loads(answer)
    assert (response["model_name"], response["id"]) == ("simple", "j1")
    assert [(o["name"], o["datatype"], o["shape"]) for o in response["outputs"]] == [
        ("OUTPUT1", "INT32", [1, 16]), ("OUTPUT0", "INT32", [1, 16])]
    assert response["outputs"][0]["data"] == (A - B).ravel().tolist()
    assert response["outputs"][1]["data"] == (A + B).ravel().tolist()


# ----------------------------------------------------------------------------- other RPCs

def test_unimplemented_rpc_grpc(server):
    """Every RPC of Triton's service is served; a method it does not have is UNIMPLEMENTED."""
    with grpc.insecure_channel(server.grpc_url) as channel:
        call = channel.unary_unary("/inference.GRPCInferenceService/NoSuchMethod")
        with pytest.raises(grpc.RpcError) as caught:
            call(b"")
    assert caught.value.code() == grpc.StatusCode.UNIMPLEMENTED
    assert_serves(server)
