"""Tensors between the wire and numpy: the zero-copy split of ModelInferRequest's raw inputs,
the response encoding, typed `contents`, and outputs as wire bytes."""

from __future__ import annotations

import numpy as np

from pyserve.datatypes import NUMPY_DTYPE, serialize_bytes
from pyserve.errors import ServerError
from pyserve.protocol import pb
from pyserve.protocol import wire

_RAW_OUTPUT_TAG = wire.key(6)  # ModelInferResponse.raw_output_contents
_STREAM_RESPONSE_TAG = wire.key(2)  # ModelStreamInferResponse.infer_response


def _read_varint(view: memoryview, pos: int) -> tuple[int, int]:
    result = shift = 0
    while True:
        if pos >= len(view) or shift > 63:
            raise ServerError("failed to parse ModelInferRequest: truncated varint")
        byte = view[pos]
        pos += 1
        result |= (byte & 0x7F) << shift
        if byte < 0x80:
            return result, pos
        shift += 7


def split_infer_request(data: bytes) -> tuple[pb.ModelInferRequest, list[memoryview]]:
    """Parse a serialized ModelInferRequest, leaving `raw_input_contents` as views of `data`.

    protobuf would copy every raw tensor (into its arena, then again on access); walking the
    top-level fields ourselves keeps the tensors where gRPC put them.
    """
    view = memoryview(data)
    header_parts: list[memoryview] = []
    raw: list[memoryview] = []
    pos, end = 0, len(view)
    while pos < end:
        start = pos
        key, pos = _read_varint(view, pos)
        field_number, wire_type = key >> 3, key & 7
        if wire_type == 2:
            length, pos = _read_varint(view, pos)
            if length > end - pos:
                raise ServerError("failed to parse ModelInferRequest: field runs past the end")
            if field_number == wire.RAW_INPUT_CONTENTS:
                raw.append(view[pos:pos + length])
                pos += length
                continue
            pos += length
        elif wire_type == 0:
            _, pos = _read_varint(view, pos)
        elif wire_type == 1:
            pos += 8
        elif wire_type == 5:
            pos += 4
        else:
            raise ServerError(f"failed to parse ModelInferRequest: bad wire type {wire_type}")
        if pos > end or field_number == 0:
            raise ServerError("failed to parse ModelInferRequest: malformed field")
        header_parts.append(view[start:pos])
    try:
        request = pb.ModelInferRequest.FromString(b"".join(header_parts))
    except Exception as e:  # noqa: BLE001 - protobuf's DecodeError
        raise ServerError(f"failed to parse ModelInferRequest: {e}") from None
    return request, raw


def encode_infer_response(response: pb.ModelInferResponse, raw_outputs: list) -> bytes:
    """Serialize `response` with `raw_outputs` appended as raw_output_contents, each copied
    once into the message (protobuf would copy them twice)."""
    parts = [response.SerializeToString()]
    for data in raw_outputs:
        parts += (_RAW_OUTPUT_TAG, wire.varint(memoryview(data).nbytes), data)
    return b"".join(parts)


def encode_stream_response(infer_response: bytes) -> bytes:
    """A ModelStreamInferResponse carrying an already-serialized ModelInferResponse."""
    return b"".join((_STREAM_RESPONSE_TAG, wire.varint(len(infer_response)), infer_response))


def parameters_dict(parameters) -> dict:
    """A protobuf map<string, InferParameter> as plain Python values."""
    return {key: getattr(value, value.WhichOneof("parameter_choice"))
            for key, value in parameters.items() if value.WhichOneof("parameter_choice")}


# Typed `contents` field per wire datatype (InferTensorContents).
CONTENTS_FIELD = {
    "BOOL": "bool_contents", "INT8": "int_contents", "INT16": "int_contents",
    "INT32": "int_contents", "INT64": "int64_contents", "UINT8": "uint_contents",
    "UINT16": "uint_contents", "UINT32": "uint_contents", "UINT64": "uint64_contents",
    "FP32": "fp32_contents", "FP64": "fp64_contents", "BYTES": "bytes_contents",
}
_FIELD_TYPE = {"bool_contents": "BOOL", "int_contents": "INT32", "int64_contents": "INT64",
               "uint_contents": "UINT32", "uint64_contents": "UINT64", "fp32_contents": "FP32",
               "fp64_contents": "FP64", "bytes_contents": "BYTES"}


def contents_to_bytes(tensor, model_name: str) -> bytes:
    """The bytes of a typed InferTensorContents, in the tensor's own datatype."""
    used = [f.name for f, _ in tensor.contents.ListFields()]
    expected = CONTENTS_FIELD.get(tensor.datatype)
    if len(used) > 1:
        raise ServerError(
            f"unexpected explicit tensor data for input tensor '{tensor.name}' for model "
            f"'{model_name}', binary data was already supplied.")
    if used and used[0] != expected:
        raise ServerError(
            f"unexpected explicit tensor data for input tensor '{tensor.name}' for model "
            f"'{model_name}' of type '{_FIELD_TYPE[used[0]]}', expected datatype "
            f"'{tensor.datatype}'")
    if not used:
        return b""
    values = getattr(tensor.contents, used[0])
    if tensor.datatype == "BYTES":
        return serialize_bytes(np.array(list(values), dtype=np.object_))
    return np.array(values, dtype=NUMPY_DTYPE[tensor.datatype]).tobytes()


def output_bytes(array: np.ndarray, datatype: str) -> bytes | memoryview:
    """An output's wire bytes: row-major, little-endian, BYTES length-prefixed."""
    if datatype == "BYTES":
        return serialize_bytes(array)
    array = np.ascontiguousarray(array, dtype=NUMPY_DTYPE[datatype])
    return memoryview(array).cast("B") if array.size else b""  # cast refuses empty shapes
