"""The HTTP details Triton's clients rely on, on both frontends, checked against the answers
Triton 2.51 gives: raw binary requests (Inference-Header-Content-Length: 0, the shape deduced
from the config), JSON error bodies on every route, the HTTP status of each error code, and
inference answers compressed as Triton compresses them (which answers, which Accept-Encoding
values and q-values, the bytes zlib writes)."""

from __future__ import annotations

import http.client
import json
import struct
import zlib
from multiprocessing import shared_memory

import numpy as np
import pytest

from conftest import EXAMPLES, FRONTENDS, native_frontends_built, start_server, write_python_model

IDENTITY_PY = """
import triton_python_backend_utils as pb_utils


class TritonPythonModel:
    def execute(self, requests):
        return [pb_utils.InferenceResponse([pb_utils.Tensor("OUT", r.inputs()[0].as_numpy())])
                for r in requests]
"""

# name -> (max_batch_size, input type, input dims): identities answering their input as OUT.
IDENTITIES = {
    "vector": (8, "TYPE_FP32", "-1"),
    "matrix": (0, "TYPE_INT32", "2, 3"),
    "rows": (0, "TYPE_INT16", "2, -1"),
    "text": (4, "TYPE_STRING", "1"),
    "texts": (0, "TYPE_STRING", "-1"),
    "grid": (0, "TYPE_FP32", "-1, -1"),
}
RAW = {"Inference-Header-Content-Length": "0"}
PREFIX = "[request id: <id_unknown>] "


@pytest.fixture(scope="module", params=FRONTENDS)
def server(request, tmp_path_factory):
    if request.param == "native" and not native_frontends_built():
        pytest.skip("pyserve was built without the native frontends")
    repository = tmp_path_factory.mktemp("http_details")
    for name, (batch, datatype, dims) in IDENTITIES.items():
        write_python_model(repository, name,
                           f'input [ {{ name: "X" data_type: {datatype} dims: [ {dims} ] }} ]\n'
                           f'output [ {{ name: "OUT" data_type: {datatype} dims: [ {dims} ] }} ]\n',
                           IDENTITY_PY, max_batch_size=batch)
    process = start_server([EXAMPLES, repository], repository / "server.log",
                           "--model-control-mode", "explicit", "--load-model=simple",
                           *(f"--load-model={name}" for name in IDENTITIES),
                           "--http-frontend", request.param, "--grpc-frontend", request.param)
    yield process
    assert process.stop() == 0


def ask(server, method: str, path: str, body: bytes = b"", headers: dict | None = None):
    """(status, headers, body) of one request."""
    connection = http.client.HTTPConnection(server.http_url, timeout=30)
    try:
        connection.request(method, path, body, headers or {})
        reply = connection.getresponse()
        return reply.status, {k.lower(): v for k, v in reply.getheaders()}, reply.read()
    finally:
        connection.close()


def infer(server, model: str, body: bytes, headers: dict | None = None):
    return ask(server, "POST", f"/v2/models/{model}/infer", body, headers)


def error_of(answer) -> tuple[int, str]:
    status, headers, body = answer
    assert headers["content-type"].startswith("application/json"), headers
    return status, json.loads(body)["error"]


def binary_outputs(answer) -> tuple[list[dict], bytes]:
    """The outputs' JSON and the bytes after it, of a binary answer."""
    status, headers, body = answer
    assert status == 200, body
    assert headers["content-type"] == "application/octet-stream"
    length = int(headers["inference-header-content-length"])
    return json.loads(body[:length])["outputs"], body[length:]


# ------------------------------------------------------------------------ raw binary requests

@pytest.mark.parametrize("model, data, shape", [
    ("vector", np.arange(3, dtype=np.float32), [1, 3]),  # batch 1, the variable dim from the size
    ("matrix", np.arange(6, dtype=np.int32), [2, 3]),
    ("rows", np.arange(4, dtype=np.int16), [2, 2]),
])
def test_raw_request_is_the_one_input(server, model, data, shape):
    outputs, rest = binary_outputs(infer(server, model, data.tobytes(), RAW))
    assert outputs == [{"name": "OUT", "datatype": {"vector": "FP32", "matrix": "INT32",
                                                      "rows": "INT16"}[model],
                        "shape": shape, "parameters": {"binary_data_size": data.nbytes}}]
    assert rest == data.tobytes()


def test_raw_bytes_request_is_one_element(server):
    outputs, rest = binary_outputs(infer(server, "text", b"hello", RAW))
    assert outputs[0]["shape"] == [1, 1] and outputs[0]["datatype"] == "BYTES"
    assert rest == struct.pack("<I", 5) + b"hello"


@pytest.mark.parametrize("value", ["abc", " 0x", "-0"])
def test_header_length_is_read_as_atoi_reads_it(server, value):
    """Triton reads the header with atoi: text that is no number is 0, a raw request."""
    outputs, rest = binary_outputs(infer(server, "vector", b"\0" * 8,
                                         {"Inference-Header-Content-Length": value}))
    assert outputs[0]["shape"] == [1, 2] and rest == b"\0" * 8


def test_empty_body_without_header_is_an_empty_raw_input(server):
    """No header: the whole body is the header's length, 0 here, so a raw request; binary
    outputs of no bytes leave the answer plain JSON, as in Triton."""
    status, headers, body = infer(server, "vector", b"")
    assert status == 200 and headers["content-type"] == "application/json"
    assert "inference-header-content-length" not in headers
    assert json.loads(body)["outputs"] == [{"name": "OUT", "datatype": "FP32", "shape": [1, 0],
                                            "parameters": {"binary_data_size": 0}}]


def test_compressed_raw_request(server):
    data = np.arange(5, dtype=np.float32).tobytes()
    outputs, rest = binary_outputs(infer(server, "vector", zlib.compress(data),
                                         {**RAW, "Content-Encoding": "deflate"}))
    assert outputs[0]["shape"] == [1, 5] and rest == data


@pytest.mark.parametrize("model, body, message", [
    ("vector", b"\0" * 11,
     "input byte size mismatch for input 'raw_input' for model 'vector'. Expected 8, got 11"),
    ("matrix", b"\0" * 20,
     "input byte size mismatch for input 'raw_input' for model 'matrix'. Expected 24, got 20"),
    ("simple", b"\0" * 64, "Raw request must only have 1 input (found 1) to be deduced but got 2 "
                           "inputs in 'simple' model configuration"),
    ("grid", b"\0" * 8, "The shape of the raw input 'X' can not be deduced because there are more "
                        "than one variable-sized dimension"),
    ("texts", b"hello", "For BYTE datatype raw input 'X', the model must have input shape [1]"),
])
def test_raw_request_refusals_are_tritons(server, model, body, message):
    assert error_of(infer(server, model, body, RAW)) == (400, PREFIX + message)


@pytest.mark.parametrize("value", ["-1", "99"])
def test_header_length_out_of_range(server, value):
    assert error_of(infer(server, "vector", b"\0" * 12, {"Inference-Header-Content-Length": value})) \
        == (400, f"inference header size should be in range (0, 12), got: {value}")


def test_raw_request_for_an_unknown_model(server):
    assert error_of(infer(server, "nothing", b"\0" * 4, RAW)) == (
        404, "Request for unknown model: 'nothing' is not found")


# ---------------------------------------------------------- error bodies and status per code

SIMPLE = {"inputs": [{"name": n, "datatype": "INT32", "shape": [1, 16], "data": list(range(16))}
                     for n in ("INPUT0", "INPUT1")]}


@pytest.mark.parametrize("method, path, body, status, message", [
    ("GET", "/nothing", b"", 404, "Not Found"),
    ("GET", "/v2/models/simple/versions/x", b"", 404, "Not Found"),
    ("DELETE", "/v2/models/simple/infer", b"", 405, "Method Not Allowed"),
    ("GET", "/v2/models/simple/infer", b"", 405, "Method Not Allowed"),
    ("POST", "/v2/health/live", b"", 405, "Method Not Allowed"),
    ("GET", "/v2/models/nothing", b"", 404, "Request for unknown model: 'nothing' is not found"),
    ("GET", "/v2/models/nothing/config", b"", 404,
     "Request for unknown model: 'nothing' is not found"),
    ("GET", "/v2/models/simple/versions/7", b"", 404,
     "Request for unknown model: 'simple' version 7 is not found"),
    ("POST", "/v2/models/simple/versions/7/infer", json.dumps(SIMPLE).encode(), 404,
     "Request for unknown model: 'simple' version 7 is not found"),
    ("GET", "/v2/models/nothing/ready", b"", 400, "Model version not ready"),
    ("GET", "/v2/models/simple/versions/7/ready", b"", 400, "Model version not ready"),
    ("GET", "/v2/models/nothing/stats", b"", 400, "requested model 'nothing' is not available"),
    ("GET", "/v2/models/simple/versions/7/stats", b"", 400,
     "requested model version is not available for model 'simple'"),
    ("POST", "/v2/models/simple/infer", b"{bad", 500,
     "failed to parse the request JSON buffer: Missing a name for object member. at 1"),
    ("POST", "/v2/models/simple/infer", b"  ", 500,
     "failed to parse the request JSON buffer: The document is empty. at 2"),
    ("POST", "/v2/models/simple/infer", b"{}", 500,
     "Unable to parse 'inputs': attempt to access non-existing object member 'inputs'"),
    ("POST", "/v2/models/simple/infer", b'{"inputs": 5}', 500,
     "Unable to parse 'inputs': attempt to access JSON non-array as array"),
    ("POST", "/v2/repository/index", b"{bad", 500,
     "failed to parse the request JSON buffer: Missing a name for object member. at 1"),
    ("POST", "/v2/systemsharedmemory/region/r/register", b"{}", 400,
     "Shared memory register request has no 'key' field"),
    ("POST", "/v2/systemsharedmemory/region/r/register", b'{"key": "k", "offset": 0}', 400,
     "Shared memory register request has no 'byte_size' field"),
    ("POST", "/v2/systemsharedmemory/region/r/register", b'{"key": 5}', 500,
     "attempt to access JSON non-string as string"),
    ("POST", "/v2/systemsharedmemory/region/r/register", b'{"key": "k", "offset": -1}', 500,
     "attempt to access JSON non-unsigned-integer as unsigned-integer"),
    ("POST", "/v2/cudasharedmemory/region/r/register", b"{}", 400,
     "Shared memory register request has no 'raw_handle' field"),
    ("POST", "/v2/cudasharedmemory/region/r/register", b'{"raw_handle": {}}', 500,
     "attempt to access non-existing object member 'b64'"),
    ("POST", "/v2/cudasharedmemory/region/r/register", b'{"raw_handle": {"b64": "AAAA"}}', 500,
     "attempt to access non-existing object member 'byte_size'"),
    ("POST", "/v2/logging", b'{"log_format": "xml"}', 503, None),  # UNAVAILABLE, as in Triton
    ("POST", "/v2/models/simple/infer", json.dumps({"inputs": SIMPLE["inputs"][:1]}).encode(), 400,
     None),  # INVALID_ARG
])
def test_errors_are_json_with_tritons_status(server, method, path, body, status, message):
    got_status, got_message = error_of(ask(server, method, path, body))
    assert got_status == status
    if message is not None:
        assert got_message == message


def test_an_existing_region_registered_again_is_400(server):
    """ALREADY_EXISTS answers 400, as Triton maps it."""
    region = shared_memory.SharedMemory(create=True, size=64)
    body = json.dumps({"key": "/" + region.name, "offset": 0, "byte_size": 64}).encode()
    try:
        path = "/v2/systemsharedmemory/region/twice/register"
        assert ask(server, "POST", path, body)[0] == 200
        status, message = error_of(ask(server, "POST", path, body))
        assert status == 400 and "twice" in message
    finally:
        ask(server, "POST", "/v2/systemsharedmemory/region/twice/unregister")
        region.close()
        region.unlink()


def test_unsupported_content_encoding_is_501(server):
    status, headers, body = infer(server, "simple", b"{}", {"Content-Encoding": "br"})
    assert (status, json.loads(body)) == (501, {"error": "Unsupported compression type"})
    assert headers["accept-encoding"] == "gzip, deflate"


def test_status_of_every_code():
    from pyserve.errors import ErrorCode, http_status

    assert {code: http_status(code) for code in ErrorCode} == {
        ErrorCode.INVALID_ARG: 400, ErrorCode.NOT_FOUND: 404, ErrorCode.UNAVAILABLE: 503,
        ErrorCode.INTERNAL: 500, ErrorCode.UNSUPPORTED: 501, ErrorCode.ALREADY_EXISTS: 400,
        ErrorCode.CANCELLED: 400, ErrorCode.UNKNOWN: 400}


# ------------------------------------------------------------------------ compressed answers

SIMPLE_BODY = json.dumps(SIMPLE).encode()


def zlib_bytes(body: bytes, encoding: str) -> bytes:
    """What Triton's DataCompressor writes: zlib's defaults, gzip's wrapper for gzip."""
    compressor = zlib.compressobj(zlib.Z_DEFAULT_COMPRESSION, zlib.DEFLATED,
                                  zlib.MAX_WBITS | (16 if encoding == "gzip" else 0))
    return compressor.compress(body) + compressor.flush()


@pytest.mark.parametrize("accept, encoding", [
    ("gzip", "gzip"), ("deflate", "deflate"), ("gzip, deflate", "gzip"),
    ("deflate, gzip", "deflate"), ("gzip;q=0.5, deflate", "deflate"), ("gzip;q=0", None),
    ("identity, gzip", None), ("gzip;q=0.5, identity;q=0.6", None), ("*", None), ("GZIP", None),
    ("gzip ;q=1", None), ("br, deflate;q=0.1", "deflate"), ("gzip;q=abc, deflate;q=0.2", "deflate"),
    ("gzip; q=0.5, deflate;q=0.6", "deflate"), (" gzip", "gzip"),
])
@pytest.mark.parametrize("binary", [False, True], ids=["json", "binary"])
def test_inference_answers_are_compressed_as_triton_compresses_them(server, accept, encoding,
                                                                    binary):
    body = (SIMPLE_BODY if not binary else
            json.dumps({**SIMPLE, "parameters": {"binary_data_output": True}}).encode())
    plain = infer(server, "simple", body)
    status, headers, answer = infer(server, "simple", body, {"Accept-Encoding": accept})
    assert status == 200 and headers.get("content-encoding") == encoding
    assert headers["content-type"] == plain[1]["content-type"]
    assert headers.get("inference-header-content-length") == \
        plain[1].get("inference-header-content-length")  # the JSON's length, uncompressed
    assert answer == (plain[2] if encoding is None else zlib_bytes(plain[2], encoding))


@pytest.mark.parametrize("method, path, body", [
    ("GET", "/v2", b""), ("GET", "/v2/models/simple", b""), ("GET", "/v2/models/simple/config", b""),
    ("POST", "/v2/repository/index", b""), ("POST", "/v2/models/nothing/infer", SIMPLE_BODY),
    ("POST", "/v2/models/simple/infer", b"{bad"),
])
def test_other_answers_are_never_compressed(server, method, path, body):
    status, headers, answer = ask(server, method, path, body, {"Accept-Encoding": "gzip"})
    assert "content-encoding" not in headers
    json.loads(answer)


@pytest.mark.parametrize("algorithm", ["gzip", "deflate"])
def test_tritonclient_compression_both_ways(server, algorithm):
    import tritonclient.http as httpclient

    client = httpclient.InferenceServerClient(server.http_url)
    inputs = []
    for name in ("INPUT0", "INPUT1"):
        inputs.append(httpclient.InferInput(name, [1, 16], "INT32"))
        inputs[-1].set_data_from_numpy(np.arange(16, dtype=np.int32).reshape(1, 16))
    result = client.infer("simple", inputs, request_compression_algorithm=algorithm,
                          response_compression_algorithm=algorithm)
    np.testing.assert_array_equal(result.as_numpy("OUTPUT0"), 2 * np.arange(16).reshape(1, 16))
    client.close()
