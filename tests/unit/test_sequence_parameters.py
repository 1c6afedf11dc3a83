"""The Python frontends' reading of sequence_id, sequence_start and sequence_end: what they
pass to the core, and Triton's words for what it refuses (the native decoders' are in
tests/cpp/test_codecs.cc)."""

import pytest

from pyserve.errors import ErrorCode, ServerError
from pyserve.frontends.inference import grpc_sequence, http_sequence
from pyserve.protocol import pb


def grpc_parameters(**values) -> "pb.ModelInferRequest":
    request = pb.ModelInferRequest()
    for key, (field, value) in values.items():
        setattr(request.parameters[key], field, value)
    return request.parameters


def test_grpc_sequence_parameters():
    assert grpc_sequence(grpc_parameters()) == (0, 0)
    assert grpc_sequence(grpc_parameters(sequence_id=("int64_param", 7),
                                         sequence_start=("bool_param", True))) == (7, 1)
    assert grpc_sequence(grpc_parameters(sequence_id=("int64_param", -1),
                                         sequence_end=("bool_param", True))) == (2**64 - 1, 2)
    assert grpc_sequence(grpc_parameters(sequence_id=("string_param", "a"))) == ("a", 0)
    for parameters, message, code in [
        (grpc_parameters(sequence_id=("uint64_param", 7)),
         "invalid value type for 'sequence_id' parameter, expected int64_param or "
         "string_param.", ErrorCode.INVALID_ARG),
        (grpc_parameters(sequence_start=("int64_param", 1)),
         "invalid value type for 'sequence_start' parameter, expected bool_param.",
         ErrorCode.INVALID_ARG),
        (grpc_parameters(sequence_id=("string_param", "x" * 129)),
         "string correlation ID cannot be longer than 128 characters", ErrorCode.UNSUPPORTED),
    ]:
        with pytest.raises(ServerError) as e:
            grpc_sequence(parameters)
        assert (e.value.message, e.value.code) == (message, code)


def test_http_sequence_parameters():
    assert http_sequence({}) == (0, 0)
    assert http_sequence({"sequence_id": 2**64 - 1, "sequence_start": True,
                          "sequence_end": True}) == (2**64 - 1, 3)
    assert http_sequence({"sequence_id": "abc", "sequence_start": False}) == ("abc", 0)
    # Triton's JSON reader fails INTERNAL.
    for parameters, message, code in [
        ({"sequence_id": -1},
         "Unable to parse 'sequence_id': attempt to access JSON non-string as string",
         ErrorCode.INTERNAL),
        ({"sequence_id": 1.5},
         "Unable to parse 'sequence_id': attempt to access JSON non-string as string",
         ErrorCode.INTERNAL),
        ({"sequence_end": 1},
         "Unable to parse 'sequence_end': attempt to access JSON non-boolean as boolean",
         ErrorCode.INTERNAL),
        ({"sequence_id": "x" * 129}, "string correlation ID cannot be longer than 128 characters",
         ErrorCode.UNSUPPORTED),
    ]:
        with pytest.raises(ServerError) as e:
            http_sequence(parameters)
        assert (e.value.message, e.value.code) == (message, code)
