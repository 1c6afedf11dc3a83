"""Triton's generate extension for the Python HTTP frontend: the mapping of Triton's
`src/http_server.cc` between a flat JSON object and an inference request.

Request: each top-level key that names a model input is that input (a JSON value or a 1-D
array, shaped by the input's dims: fixed dimensions take their share of the elements, the
innermost variable one takes the rest, others 1); every other key is a request parameter
(string, integer, boolean or number), `id` included (it is also the request's id), and the
keys of a `parameters` object are mapped the same way. Response: `model_name`,
`model_version`, `id` (when given) and each output by name (a single element as a plain
value), keys in Triton's order (sorted).
"""

from __future__ import annotations

import json

import numpy as np

from pyserve.datatypes import NUMPY_DTYPE, serialize_bytes, wire_name
from pyserve.errors import ErrorCode, ServerError
from pyserve.lifecycle import ModelVersion
from pyserve.runner import InputTensor, OutputTensor

ONE_RESPONSE = ("generate expects model to produce exactly 1 response, use generate stream for "
                "model that generates various number of responses")
_NESTED = "parameters"


def generate_request(model: ModelVersion, body: dict) -> tuple[list[InputTensor], dict, str]:
    """(inputs, request parameters, request id) of a generate request's JSON object."""
    config = model.config
    batch = [-1] if config.max_batch_size > 0 else []
    specs = {i.name: (wire_name(i.data_type), batch + list(i.dims)) for i in config.input}
    inputs: list[InputTensor] = []
    parameters: dict = {}

    def exact(key: str, value) -> None:
        if key in specs:
            inputs.append(_tensor(key, value, *specs[key]))
        elif isinstance(value, (str, bool, int, float)):
            parameters[key] = value
        else:
            raise ServerError(f"parameter '{key}' has invalid type. It should be either 'int', "
                              "'bool', or 'string'.")

    for key, value in body.items():
        if key != _NESTED:
            exact(key, value)
            continue
        if key in specs:
            raise ServerError(f"Keyword '{key}' for nested schema also given as input tensor name")
        if not isinstance(value, dict):
            raise ServerError(f"Expected JSON object for keyword: '{key}'")
        for nested_key, nested_value in value.items():
            exact(nested_key, nested_value)
    request_id = body.get("id", "")
    return inputs, parameters, request_id if isinstance(request_id, str) else str(request_id)


def _tensor(name: str, value, datatype: str, dims: list[int]) -> InputTensor:
    elements = value if isinstance(value, list) else [value]
    shape = _shape(name, len(elements), dims)
    if datatype in ("FP16", "BF16") or datatype not in NUMPY_DTYPE:
        raise ServerError(f"receiving {datatype} data via JSON is not supported for input "
                          f"'{name}'")
    try:
        if datatype == "BYTES":
            data = serialize_bytes(np.array(elements, dtype=np.object_).reshape(-1))
        else:
            data = np.array(elements, dtype=NUMPY_DTYPE[datatype]).reshape(-1).tobytes()
    except (ValueError, TypeError, OverflowError) as e:
        raise ServerError(f"Unable to parse 'data' of input '{name}': {e}") from None
    return InputTensor(name, datatype, shape, data)


def _shape(name: str, count: int, dims: list[int]) -> list[int]:
    """Triton's two passes: fixed dimensions divide the element count, the innermost variable
    dimension takes what is left, any other variable one is 1."""
    shape = list(dims)
    for d in reversed(shape):
        if d != -1:
            if d == 0 or count % d:
                raise ServerError(f"The schema can not convert input '{name}' to tensor with "
                                  "proper shape")
            count //= d
    for i in reversed(range(len(shape))):
        if shape[i] == -1:
            shape[i], count = count, 1
    if count != 1:
        raise ServerError(f"The schema can not convert input '{name}' to tensor with proper "
                          "shape")
    return shape


def generate_response(model: ModelVersion, request_id: str, outputs: list[OutputTensor]) -> dict:
    fields: dict = {"model_name": model.name, "model_version": str(model.version)}
    if request_id:
        fields["id"] = request_id
    for output in outputs:
        values = [item.decode("utf-8", "replace") if isinstance(item, bytes) else item
                  for item in output.array.reshape(-1).tolist()]
        fields[output.name] = values[0] if len(values) == 1 else values
    return dict(sorted(fields.items()))


def encode(document: dict, streaming: bool) -> bytes:
    """Compact JSON, as Triton writes it; an SSE event (`data: ...` and a blank line) on
    /generate_stream."""
    text = json.dumps(document, separators=(",", ":"), ensure_ascii=False)
    return f"data: {text}\n\n".encode() if streaming else text.encode()


def error_document(error: ServerError) -> dict:
    return {"error": error.message}


def unsupported_encoding() -> ServerError:
    return ServerError("Unsupported content-encoding, only 'identity' is supported.",
                       ErrorCode.INVALID_ARG)
