"""Hostile requests with a real server, on both frontends: model names and load-API file paths
checked before any filesystem call, bodies and messages bounded (after decompression too),
malformed requests the fuzzer found (bench/fuzz.py) refused with a clear 400 /
INVALID_ARGUMENT, and the server still serving afterwards without an unhandled error."""

from __future__ import annotations

import gzip
import http.client
import json
import re
import socket

import grpc
import numpy as np
import pytest
import tritonclient.grpc as grpcclient
import tritonclient.http as httpclient
from tritonclient.utils import InferenceServerException

from conftest import EXAMPLES, FRONTENDS, start_server
from pyserve.protocol import pb

LIMIT = 1 << 20  # --http-max-input-size and --grpc-max-message-size of the server below
SIMPLE_CONFIG = json.dumps({"name": "uploaded", "backend": "onnxruntime"})


@pytest.fixture(scope="module", params=FRONTENDS)
def server(request, tmp_path_factory):
    frontend = request.param
    process = start_server(
        [EXAMPLES], tmp_path_factory.mktemp("logs") / f"limits-{frontend}.log",
        "--model-control-mode", "explicit", "--load-model", "simple",
        "--load-model", "add_sub_python",
        "--grpc-frontend", frontend, "--http-frontend", frontend,
        "--http-max-input-size", str(LIMIT), "--grpc-max-message-size", str(LIMIT))
    yield process
    assert process.stop() == 0
    assert "Traceback" not in process.log()  # every refusal was a handled one


def vm_hwm_bytes(pid: int) -> int:
    """The process's peak resident memory."""
    for line in open(f"/proc/{pid}/status"):
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) * 1024
    raise AssertionError("no VmHWM")


def assert_still_serving(server) -> None:
    client = grpcclient.InferenceServerClient(server.grpc_url)
    a = np.arange(16, dtype=np.int32).reshape(1, 16)
    inputs = [grpcclient.InferInput(n, [1, 16], "INT32") for n in ("INPUT0", "INPUT1")]
    for t in inputs:
        t.set_data_from_numpy(a)
    np.testing.assert_array_equal(client.infer("simple", inputs).as_numpy("OUTPUT0"), a * 2)
    body = json.dumps({"inputs": [{"name": n, "datatype": "INT32", "shape": [1, 16],
                                   "data": a.ravel().tolist()} for n in ("INPUT0", "INPUT1")]})
    status, answer = http_request(server, "POST", "/v2/models/simple/infer", body.encode())
    assert status == 200, answer


def http_request(server, method: str, path: str, body: bytes = b"", headers=None,
                 chunked: bool = False) -> tuple[int, bytes]:
    connection = http.client.HTTPConnection(server.http_url, timeout=60)
    if chunked:
        connection.putrequest(method, path)
        for key, value in (headers or {}).items():
            connection.putheader(key, value)
        connection.putheader("Transfer-Encoding", "chunked")
        connection.endheaders()
        for start in range(0, len(body), 1 << 16):
            piece = body[start:start + (1 << 16)]
            try:
                connection.send(b"%x\r\n%s\r\n" % (len(piece), piece))
            except (BrokenPipeError, ConnectionResetError):
                break  # the server refused part way: its answer is waiting
        else:
            connection.send(b"0\r\n\r\n")
    else:
        connection.request(method, path, body=body, headers=headers or {})
    response = connection.getresponse()
    data = response.read()
    connection.close()
    return response.status, data


@pytest.mark.parametrize("name", ["simple/../simple", "..", "a\\b", "/etc"])
def test_path_like_model_names_are_refused_over_grpc(server, name):
    client = grpcclient.InferenceServerClient(server.grpc_url)
    with pytest.raises(InferenceServerException) as refused:
        client.load_model(name)
    assert refused.value.status() == "StatusCode.INVALID_ARGUMENT"
    assert "invalid model name" in refused.value.message()
    assert name not in {m.name for m in client.get_model_repository_index().models}
    assert_still_serving(server)


@pytest.mark.parametrize("name", ["a\x00b", "m" * 300, "simple%2F..%2Fsimple"])
def test_bad_model_names_are_refused_over_http(server, name):
    quoted = name if "%" in name else name.replace("\x00", "%00")
    status, body = http_request(server, "POST", f"/v2/repository/models/{quoted}/load")
    assert status == 400, body
    assert "invalid model name" in json.loads(body)["error"]
    assert_still_serving(server)


def test_load_file_paths_are_checked_before_writing(server):
    client = httpclient.InferenceServerClient(server.http_url)
    model = (EXAMPLES / "simple" / "1" / "model.onnx").read_bytes()
    for path, status, text in [
            ("1/mo\x00del.onnx", 400, "invalid file path"),
            ("1/../../escape.onnx", 400, "invalid file path"),
            ("1/" + "f" * 300, 500, "failed to poll from model repository")]:
        with pytest.raises(InferenceServerException) as refused:
            client.load_model("uploaded", config=SIMPLE_CONFIG,
                              files={"file:1/model.onnx": model, f"file:{path}": b"x"})
        assert refused.value.status() == str(status), refused.value.message()
        assert text in refused.value.message()
    with pytest.raises(InferenceServerException) as refused:
        grpcclient.InferenceServerClient(server.grpc_url).load_model(
            "uploaded", config=SIMPLE_CONFIG,
            files={"file:1/model.onnx": model, "file:1/" + "g" * 300: b"x"})
    assert refused.value.status() == "StatusCode.INTERNAL"
    assert_still_serving(server)


def test_body_over_the_limit_gets_413(server):
    body = json.dumps({"inputs": [{"name": "INPUT0", "datatype": "INT32", "shape": [1, 16],
                                   "data": [0] * 16, "pad": "x" * LIMIT}]}).encode()
    status, _ = http_request(server, "POST", "/v2/models/simple/infer", body)
    assert status == 413
    status, _ = http_request(server, "POST", "/v2/models/simple/infer", body, chunked=True)
    assert status == 413
    assert_still_serving(server)


def test_gzip_bomb_is_bounded(server):
    """64 MiB of zeros compress to 64 KiB: the server stops decompressing at the limit."""
    bomb = gzip.compress(b"\0" * (64 << 20), compresslevel=9)
    assert len(bomb) < LIMIT
    before = vm_hwm_bytes(server.process.pid)
    status, _ = http_request(server, "POST", "/v2/models/simple/infer", bomb,
                             {"Content-Encoding": "gzip", "Content-Type": "application/json"})
    assert status == 413
    assert vm_hwm_bytes(server.process.pid) - before < 32 << 20
    assert_still_serving(server)


def test_grpc_message_over_the_limit_is_refused(server):
    client = grpcclient.InferenceServerClient(server.grpc_url)
    big = np.zeros((1, LIMIT), dtype=np.int32)
    inputs = [grpcclient.InferInput(n, list(big.shape), "INT32") for n in ("INPUT0", "INPUT1")]
    for t in inputs:
        t.set_data_from_numpy(big)
    with pytest.raises(InferenceServerException) as refused:
        client.infer("simple", inputs)
    assert refused.value.status() == "StatusCode.RESOURCE_EXHAUSTED"
    assert_still_serving(server)


def test_declared_huge_shape_costs_nothing(server):
    """A header that declares 10^12 elements but carries 64 bytes is refused before any
    allocation, over both protocols."""
    before = vm_hwm_bytes(server.process.pid)
    header = json.dumps({"inputs": [
        {"name": n, "datatype": "INT32", "shape": [1, 10**12],
         "parameters": {"binary_data_size": 64}} for n in ("INPUT0", "INPUT1")]}).encode()
    status, body = http_request(server, "POST", "/v2/models/simple/infer", header + b"\0" * 128,
                                {"Inference-Header-Content-Length": str(len(header))})
    assert status == 400, body
    channel = grpc.insecure_channel(server.grpc_url)
    client = grpcclient.InferenceServerClient(server.grpc_url)
    inputs = [grpcclient.InferInput(n, [1, 10**12], "INT32") for n in ("INPUT0", "INPUT1")]
    for t in inputs:
        t._raw_content = b"\0" * 64
    with pytest.raises(InferenceServerException) as refused:
        client.infer("simple", inputs)
    assert refused.value.status() == "StatusCode.INVALID_ARGUMENT"
    channel.close()
    assert vm_hwm_bytes(server.process.pid) - before < 32 << 20
    assert_still_serving(server)


def test_half_sent_request_does_not_hold_the_server(server):
    """A client that declares a body and sends part of it, stalls, then vanishes."""
    with socket.create_connection(("127.0.0.1", server.http_port), timeout=10) as s:
        s.sendall(b"POST /v2/models/simple/infer HTTP/1.1\r\nHost: x\r\n"
                  b"Content-Length: 100000\r\n\r\n{\"inputs\": [")
        assert_still_serving(server)  # while it stalls
    assert_still_serving(server)


@pytest.mark.parametrize("head", [
    b"Content-Type: application/json\r\nContent-Type: text/plain\r\n",
    b"X-Long: " + b"x" * 20000 + b"\r\n",
    b"Bad Header Name: 1\r\n",
], ids=["duplicate-content-type", "header-too-long", "bad-header-name"])
def test_malformed_http_messages_are_refused_quietly(server, head):
    """Answered 4xx; the log gains no ERROR line and no traceback (the fixture checks)."""
    log_before = len(server.log())
    with socket.create_connection(("127.0.0.1", server.http_port), timeout=10) as s:
        s.sendall(b"POST /v2/models/simple/infer HTTP/1.1\r\nHost: x\r\n" + head
                  + b"Content-Length: 2\r\n\r\n{}")
        status_line = s.makefile("rb").readline()
    assert 400 <= int(status_line.split()[1]) < 500, status_line
    assert_still_serving(server)
    assert not re.search(r"^E\d{4} ", server.log()[log_before:], re.MULTILINE)  # Triton's format


def test_duplicate_input_names_are_refused(server):
    """Two inputs named INPUT1 (and none named INPUT0), as Triton refuses adding one twice."""
    text = "input 'INPUT1' already exists in request"
    body = json.dumps({"inputs": [{"name": "INPUT1", "datatype": "INT32", "shape": [1, 16],
                                   "data": [0] * 16}] * 2}).encode()
    status, answer = http_request(server, "POST", "/v2/models/simple/infer", body)
    assert status == 400 and text in json.loads(answer)["error"]
    inputs = [grpcclient.InferInput("INPUT1", [1, 16], "INT32") for _ in range(2)]
    for t in inputs:
        t.set_data_from_numpy(np.zeros((1, 16), np.int32))
    with pytest.raises(InferenceServerException) as refused:
        grpcclient.InferenceServerClient(server.grpc_url).infer("simple", inputs)
    assert refused.value.status() == "StatusCode.INVALID_ARGUMENT" and text in refused.value.message()


def test_deeply_nested_json_is_refused(server):
    """300,000 nested arrays once overflowed the native parser's stack."""
    body = (b'{"inputs": [{"name": "INPUT0", "datatype": "INT32", "shape": [1, 16], "data": '
            + b"[" * 300_000 + b"]" * 300_000 + b"}]}")
    status, answer = http_request(server, "POST", "/v2/models/simple/infer", body)
    assert status == 400 and "nested too deeply" in json.loads(answer)["error"]
    assert_still_serving(server)


_VALID = json.dumps({"inputs": [{"name": n, "datatype": "INT32", "shape": [1, 16],
                                  "data": [0] * 16} for n in ("INPUT0", "INPUT1")]}).encode()


@pytest.mark.parametrize("encoding, body", [("gzip", b"\x1f\x8b\x08\x00broken"),
                                            ("deflate", b'{"inputs": []}'),
                                            ("gzip", gzip.compress(_VALID)[:-8])],
                         ids=["broken", "not-deflate", "cut-short"])
def test_bodies_that_do_not_inflate_are_refused(server, encoding, body):
    status, answer = http_request(server, "POST", "/v2/models/simple/infer", body,
                                  {"Content-Encoding": encoding})
    assert status == 400 and json.loads(answer)["error"]
    assert_still_serving(server)


def test_out_of_range_classification_count_is_refused(server):
    body = json.dumps({"inputs": [{"name": n, "datatype": "INT32", "shape": [1, 16],
                                   "data": [0] * 16} for n in ("INPUT0", "INPUT1")],
                       "outputs": [{"name": "OUTPUT0",
                                    "parameters": {"classification": 2**63 - 1}}]}).encode()
    status, answer = http_request(server, "POST", "/v2/models/simple/infer", body)
    assert status == 400 and "classification count" in json.loads(answer)["error"]


def test_malformed_messages_are_invalid_argument(server):
    """An undecodable control RPC, and a ModelInfer whose id is not UTF-8 (protobuf's rule)."""
    channel = grpc.insecure_channel(server.grpc_url)
    for method, message in [("ModelStatistics", b"\xff\xff\xff"),
                            ("ModelInfer", b"\x0a\x06simple\x1a\x02\xff\xfe")]:
        call = channel.unary_unary(f"/inference.GRPCInferenceService/{method}")
        with pytest.raises(grpc.RpcError) as refused:
            call(message, timeout=30)
        assert refused.value.code() == grpc.StatusCode.INVALID_ARGUMENT, refused.value.details()
        assert "failed to parse" in refused.value.details()
    channel.close()


def _field(number: int, data: bytes) -> bytes:
    """A length-delimited protobuf field (numbers and lengths below 128 here)."""
    return bytes([number << 3 | 2, len(data)]) + data


def _simple_request(input0_extra: bytes = b"", head: bytes = b"") -> bytes:
    """ModelInfer for `simple` (zeros), with bytes added to INPUT0's tensor or in front."""
    tensors = [_field(1, name) + _field(2, b"INT32") + b"\x1a\x02\x01\x10"  # shape [1, 16]
               for name in (b"INPUT0", b"INPUT1")]
    tensors[0] += input0_extra
    zeros = bytes(64)
    return (head + _field(1, b"simple") + b"".join(_field(5, t) for t in tensors)
            + bytes([7 << 3 | 2, 64]) + zeros + bytes([7 << 3 | 2, 64]) + zeros)


def test_strings_are_checked_as_protobuf_checks_them(server):
    """Every occurrence of a string field must be UTF-8 (a later valid one does not excuse an
    earlier one), map keys included; a field of an unexpected wire type is an unknown field."""
    channel = grpc.insecure_channel(server.grpc_url)
    call = channel.unary_unary("/inference.GRPCInferenceService/ModelInfer")
    refused = [_simple_request(head=_field(1, b"\xff\xfe")),  # model_name, then a valid one
               _simple_request(_field(1, b"\xc0\x80") + _field(1, b"INPUT0")),  # input name
               _simple_request(_field(4, _field(1, b"\xff")))]  # an input parameter's key
    for message in refused:
        with pytest.raises(grpc.RpcError) as error:
            call(message, timeout=30)
        assert error.value.code() == grpc.StatusCode.INVALID_ARGUMENT, error.value.details()
        assert "failed to parse" in error.value.details()
    # INPUT0's name as a varint: protobuf keeps it as an unknown field and the name stands.
    answer = pb.ModelInferResponse.FromString(call(_simple_request(b"\x08\x05"), timeout=30))
    assert [o.name for o in answer.outputs] == ["OUTPUT0", "OUTPUT1"]
    channel.close()


def test_infinite_outputs_are_readable_json(server):
    """1e308 + 1e308 overflows to inf: the JSON answer spells it as Python's json does."""
    inputs = [{"name": n, "datatype": "FP32", "shape": [1, 4], "data": [3e38, 0, 0, 0]}
              for n in ("INPUT0", "INPUT1")]
    status, answer = http_request(server, "POST", "/v2/models/add_sub_python/infer",
                                  json.dumps({"inputs": inputs}).encode())
    assert status == 200
    outputs = {o["name"]: o["data"] for o in json.loads(answer)["outputs"]}
    assert outputs["OUTPUT0"][0] == float("inf") and outputs["OUTPUT1"][0] == 0


@pytest.mark.parametrize("tensor", [
    {"name": 5, "datatype": "INT32", "shape": [1, 16], "data": [0] * 16},
    {"name": "INPUT0", "datatype": True, "shape": [1, 16], "data": [0] * 16},
    {"name": "INPUT0", "datatype": "INT32", "shape": [1, None], "data": [0] * 16},
    {"name": "INPUT0", "datatype": "INT32", "shape": [1, 2**70], "data": [0] * 16}])
def test_values_of_the_wrong_type_are_refused(server, tensor):
    other = {"name": "INPUT1", "datatype": "INT32", "shape": [1, 16], "data": [0] * 16}
    status, answer = http_request(server, "POST", "/v2/models/simple/infer",
                                  json.dumps({"inputs": [tensor, other]}).encode())
    assert status in (400, 500), answer  # what Triton's JSON reader refuses is INTERNAL
    assert json.loads(answer)["error"]


@pytest.mark.parametrize("tensor", [
    {"name": "INPUT0", "datatype": ["INT32"], "shape": [1, 16], "data": [0] * 16},
    {"name": "INPUT0", "datatype": "BYTES", "shape": [1, 16], "data": [1.5] * 16},
    {"name": "INPUT0", "datatype": "BYTES", "shape": [1, 16], "data": [-1] * 16},
    {"name": "INPUT0", "datatype": "INT32", "shape": [1, 16],
     "parameters": {"binary_data_size": "x" * 400}}])
def test_json_data_of_the_wrong_shape_of_value_is_refused(server, tensor):
    test_values_of_the_wrong_type_are_refused(server, tensor)
