"""The hand-written parts of the wire codec agree with protobuf and copy nothing they need not."""

from __future__ import annotations

import numpy as np
import pytest

from pyserve.datatypes import deserialize_bytes, serialize_bytes
from pyserve.errors import ServerError
from pyserve.frontends import codec
from pyserve.protocol import pb


def _request(raw: list[bytes]) -> pb.ModelInferRequest:
    request = pb.ModelInferRequest(model_name="simple", model_version="1", id="req-7")
    request.parameters["priority"].uint64_param = 2
    for i, data in enumerate(raw):
        request.inputs.add(name=f"INPUT{i}", datatype="INT32", shape=[1, len(data) // 4])
    request.outputs.add(name="OUTPUT0")
    request.raw_input_contents.extend(raw)
    return request


def test_split_infer_request_matches_protobuf_and_keeps_views():
    raw = [np.arange(16, dtype=np.int32).tobytes(), bytes(300)]  # 300 needs a 2-byte varint
    data = _request(raw).SerializeToString()
    header, views = codec.split_infer_request(data)
    expected = _request(raw)
    expected.ClearField("raw_input_contents")
    assert header == expected
    assert [bytes(v) for v in views] == raw
    assert all(v.obj is data for v in views)  # views of the received bytes, not copies


@pytest.mark.parametrize("data", [b"\xff\xff\xff", b"\x0a\x05ab", b"\x3a\x80", b"\x07"])
def test_split_infer_request_rejects_malformed_bytes(data):
    with pytest.raises(ServerError) as error:
        codec.split_infer_request(data)
    assert "failed to parse ModelInferRequest" in error.value.message


def test_encode_infer_response_parses_back():
    response = pb.ModelInferResponse(model_name="m", model_version="3", id="x")
    response.outputs.add(name="OUT", datatype="FP32", shape=[2, 2])
    out = np.arange(4, dtype=np.float32).reshape(2, 2)
    big = bytes(range(256)) * 2
    encoded = codec.encode_infer_response(response, [codec.output_bytes(out, "FP32"), big])
    parsed = pb.ModelInferResponse.FromString(encoded)
    assert parsed.model_name == "m" and parsed.outputs[0].name == "OUT"
    assert list(parsed.raw_output_contents) == [out.tobytes(), big]
    stream = pb.ModelStreamInferResponse.FromString(codec.encode_stream_response(encoded))
    assert stream.infer_response == parsed and stream.error_message == ""


def test_typed_contents_become_wire_bytes():
    request = pb.ModelInferRequest()
    tensor = request.inputs.add(name="A", datatype="INT16", shape=[3])
    tensor.contents.int_contents.extend([1, -2, 3])
    assert codec.contents_to_bytes(tensor, "m") == np.array([1, -2, 3], np.int16).tobytes()
    strings = request.inputs.add(name="S", datatype="BYTES", shape=[2])
    strings.contents.bytes_contents.extend([b"ab", b""])
    assert codec.contents_to_bytes(strings, "m") == b"\x02\x00\x00\x00ab\x00\x00\x00\x00"


def test_bytes_serialization_round_trip_and_errors():
    items = np.array([b"hello", "w\u00f6rld", b""], dtype=np.object_)
    data = serialize_bytes(items)
    assert deserialize_bytes(data) == [b"hello", "w\u00f6rld".encode(), b""]
    with pytest.raises(ValueError):
        deserialize_bytes(data[:-1] + b"\x09\x00\x00\x00")
    with pytest.raises(ValueError):
        deserialize_bytes(b"\x01\x00")
