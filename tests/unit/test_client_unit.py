"""pyserve.client pieces that need no server: datatypes, BYTES, URLs, errors, requests."""

from __future__ import annotations

import ml_dtypes
import numpy as np
import pytest

from pyserve.client import InferenceServerError, parse_url
from pyserve.client._grpc import decode_infer, encode_infer, serialize_infer
from pyserve.client._http import HttpResponse, decode_infer as http_decode, encode_infer as http_encode
from pyserve.client._request import build_request
from pyserve.client._tensors import (as_array, datatype_of, deserialize_bytes, from_bytes,
                                     numpy_dtype, serialize_bytes, to_bytes)
from pyserve.protocol import pb

NUMERIC = {"BOOL": np.bool_, "UINT8": np.uint8, "UINT16": np.uint16, "UINT32": np.uint32,
           "UINT64": np.uint64, "INT8": np.int8, "INT16": np.int16, "INT32": np.int32,
           "INT64": np.int64, "FP16": np.float16, "FP32": np.float32, "FP64": np.float64,
           "BF16": ml_dtypes.bfloat16}


@pytest.mark.parametrize("datatype", NUMERIC)
def test_datatypes_both_ways(datatype):
    dtype = np.dtype(NUMERIC[datatype])
    assert numpy_dtype(datatype) == dtype
    array = np.arange(6).astype(dtype).reshape(2, 3)
    assert datatype_of(array) == datatype
    back = from_bytes(to_bytes(array, datatype), datatype, [2, 3])
    assert back.dtype == dtype
    np.testing.assert_array_equal(back, array)


def test_bf16_is_the_upper_half_of_fp32():
    array = np.array([1.0, -2.5], dtype=ml_dtypes.bfloat16)
    fp32 = np.array([1.0, -2.5], dtype=np.float32)
    assert to_bytes(array, "BF16") == (fp32.view(np.uint32) >> 16).astype(np.uint16).tobytes()


def test_big_endian_arrays_are_sent_little_endian():
    array = np.array([1, 2], dtype=">i4")
    assert to_bytes(array, "INT32") == np.array([1, 2], dtype="<i4").tobytes()


def test_bytes_tensors():
    array = np.array([[b"ab", "c\u00e9"], [b"", b"\x00\xff"]], dtype=np.object_)
    assert datatype_of(array) == "BYTES"
    wire = serialize_bytes(array)
    assert wire[:6] == b"\x02\x00\x00\x00ab"
    back = from_bytes(wire, "BYTES", [2, 2])
    assert back.tolist() == [[b"ab", "c\u00e9".encode()], [b"", b"\x00\xff"]]
    assert datatype_of(np.array(["x", "yz"])) == "BYTES"
    assert serialize_bytes(np.array(["x", "yz"])) == b"\x01\x00\x00\x00x\x02\x00\x00\x00yz"
    with pytest.raises(ValueError):
        deserialize_bytes(b"\x09\x00\x00\x00abc", 1)


def test_unknown_dtypes_are_refused():
    with pytest.raises(ValueError):
        datatype_of(np.zeros(2, dtype=np.complex64))
    with pytest.raises(ValueError):
        numpy_dtype("FP8")


def test_as_array_forces_a_datatype():
    array, datatype = as_array(np.zeros(3, dtype=np.uint16), "BF16")
    assert datatype == "BF16"
    array, datatype = as_array([1.0, 2.0])
    assert datatype == "FP64" and array.shape == (2,)


@pytest.mark.parametrize("url,expected", [
    ("127.0.0.1:8001", ("grpc", False, "127.0.0.1", 8001)),
    ("grpc://h:9", ("grpc", False, "h", 9)),
    ("grpcs://h", ("grpc", True, "h", 8001)),
    ("http://127.0.0.1:8000", ("http", False, "127.0.0.1", 8000)),
    ("https://h/", ("http", True, "h", 8000)),
    ("localhost", ("grpc", False, "localhost", 8001)),
])
def test_urls(url, expected):
    assert parse_url(url) == expected


def test_bad_urls():
    with pytest.raises(ValueError):
        parse_url("ftp://h")
    with pytest.raises(ValueError):
        parse_url("http://h:1", protocol="grpc")


def test_errors_from_http_statuses():
    assert InferenceServerError.from_http(400, "bad").status == "INVALID_ARGUMENT"
    assert InferenceServerError.from_http(503, "busy").status == "UNAVAILABLE"
    assert InferenceServerError.from_http(501, "no").status == "UNIMPLEMENTED"
    error = InferenceServerError.from_http(404, "gone")
    assert (error.status, error.http_status, error.message) == ("NOT_FOUND", 404, "gone")
    assert str(error) == "[NOT_FOUND] gone"


def test_reserved_parameters_on_the_grpc_wire():
    request = build_request("m", {"X": np.zeros((1, 2), np.float32)}, sequence_id=5,
                            sequence_start=True, priority=2, timeout=100,
                            parameters={"custom": "v", "f": 0.5, "b": False})
    message = encode_infer(request)
    params = message.parameters
    assert params["sequence_id"].int64_param == 5
    assert params["sequence_start"].bool_param is True
    assert params["sequence_end"].bool_param is False
    assert params["priority"].uint64_param == 2
    assert params["timeout"].int64_param == 100
    assert params["custom"].string_param == "v" and params["f"].double_param == 0.5
    assert params["b"].WhichOneof("parameter_choice") == "bool_param"
    assert message.raw_input_contents == [np.zeros(2, np.float32).tobytes()]
    assert list(message.inputs[0].shape) == [1, 2] and message.inputs[0].datatype == "FP32"
    no_sequence = encode_infer(build_request("m", {"X": np.zeros(1)}))
    assert "sequence_id" not in no_sequence.parameters


@pytest.mark.parametrize("kwargs", [
    {},
    {"request_id": "r-1", "version": 3, "outputs": ["A", "B"]},
    {"sequence_id": 7, "sequence_start": True, "priority": 1, "parameters": {"k": "v"}},
])
def test_grpc_wire_bytes_are_protobufs_own(kwargs):
    """serialize_infer assembles the message from cached pieces; it must give exactly what
    protobuf gives, for one-byte and longer lengths, empty and BYTES tensors, and the same
    layout with other data (the cached pieces carry no tensor bytes)."""
    for fill in (1, 2):
        inputs = {"X": np.full((2, 3), fill, np.float32), "BIG": np.arange(300, dtype=np.int64),
                  "EMPTY": np.zeros((0, 4), np.int8),
                  "S": np.array([b"a" * fill, "\u00e9"], dtype=np.object_)}
        request = build_request("m", inputs, **kwargs)
        wire = serialize_infer(request)
        assert wire == encode_infer(request).SerializeToString()
        back = pb.ModelInferRequest.FromString(wire)
        assert back.raw_input_contents[0] == np.full(6, fill, np.float32).tobytes()
        assert [list(t.shape) for t in back.inputs] == [[2, 3], [300], [0, 4], [2]]


def test_grpc_wire_bytes_with_tensors_in_shared_memory():
    request = build_request("m", {"X": np.zeros(4, np.float32), "Y": np.ones(2, np.int32)},
                            shm_lookup=lambda a: ("region", 64, 16) if a.dtype == np.float32
                            else None)
    message = pb.ModelInferRequest.FromString(serialize_infer(request))
    assert message.inputs[0].parameters["shared_memory_region"].string_param == "region"
    assert message.inputs[0].parameters["shared_memory_offset"].int64_param == 64
    assert message.raw_input_contents == [np.ones(2, np.int32).tobytes()]


def test_grpc_response_decoding():
    response = pb.ModelInferResponse(model_name="m", model_version="3", id="i")
    response.outputs.add(name="A", datatype="INT32", shape=[2])
    response.outputs.add(name="S", datatype="BYTES", shape=[1])
    response.raw_output_contents.extend([np.array([1, 2], np.int32).tobytes(),
                                         b"\x01\x00\x00\x00z"])
    result = decode_infer(response)
    assert result["A"].tolist() == [1, 2] and result["S"].tolist() == [b"z"]
    assert result["A"].shape == (2,) and not result["A"].flags.writeable
    assert (result.model_name, result.model_version, result.id, result.final) == ("m", "3", "i", True)


def test_http_binary_round_trip():
    request = build_request("m", {"X": np.arange(3, dtype=np.int64)}, outputs=["Y"],
                            request_id="q")
    body, headers = http_encode(request)
    length = int(headers["Inference-Header-Content-Length"])
    assert body[length:] == np.arange(3, dtype=np.int64).tobytes()
    assert b'"binary_data":true' in body[:length] and b'"id":"q"' in body[:length]
    head = b'{"model_name":"m","model_version":"1","outputs":[' \
           b'{"name":"Y","datatype":"FP32","shape":[2],"parameters":{"binary_data_size":8}},' \
           b'{"name":"J","datatype":"BYTES","shape":[1],"data":["hi"]}]}'
    payload = head + np.array([0.5, 1.5], np.float32).tobytes()
    result = http_decode(HttpResponse(200, {"Inference-Header-Content-Length": str(len(head))},
                                      payload))
    assert result["Y"].tolist() == [0.5, 1.5] and result["J"].tolist() == [b"hi"]


def test_outputs_in_unregistered_memory_are_refused():
    with pytest.raises(ValueError):
        build_request("m", {"X": np.zeros(1)}, outputs={"Y": np.zeros(1)})
