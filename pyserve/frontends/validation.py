"""Checks of an inference request against its model's config, in Triton's order and with
Triton's texts (core InferenceRequest::Normalize), before anything reaches the core."""

from __future__ import annotations

import math
import struct
from typing import Sequence

from pyserve.datatypes import ELEMENT_SIZE, NUMPY_DTYPE, wire_name
from pyserve.errors import ServerError
from pyserve.protocol import pb
from pyserve.runner import InputTensor

_BATCH_NOTE = (
    "NOTE: Setting a non-zero max_batch_size in the model config requires a batch dimension to "
    "be prepended to each input shape. If you want to specify the full shape including the "
    "batch dim in your input dims config, try setting max_batch_size to zero. See the model "
    "configuration docs for more info on max_batch_size.")


def _dims(dims: Sequence[int]) -> str:
    return "[" + ",".join(str(d) for d in dims) + "]"


def _names(names: Sequence[str]) -> str:
    return "[" + ",".join(f"'{n}'" for n in names) + "]"


def _missing(names: Sequence[str]) -> str:
    # Triton pops the last character of "[" + "'a'," ... before adding "]": with nothing
    # missing that is the "[" itself, so the list renders as a lone "]".
    return _names(names) if names else "]"


def validate_request(config: pb.ModelConfig, inputs: Sequence[InputTensor],
                     requested_outputs: Sequence[str], request_id: str = "") -> int:
    """Raise ServerError(INVALID_ARG) for a request the model cannot run; return its batch size
    (1 for models that do not batch)."""
    model = config.name
    prefix = f"[request id: {request_id or '<id_unknown>'}] "
    config_outputs = {o.name for o in config.output}
    for name in requested_outputs:
        if name not in config_outputs:
            raise ServerError(f"unexpected inference output '{name}' for model '{model}'")

    config_inputs = {i.name: i for i in config.input}
    given = [t.name for t in inputs]
    required = [i.name for i in config.input if not i.optional]
    missing = [name for name in required if name not in given]
    # Triton compares counts only: a wrong name in place of a required one is reported by the
    # unknown-input check below, not here.
    if len(inputs) > len(config_inputs) or len(inputs) < len(required):
        counts = (f"expected {len(config_inputs)} inputs" if len(required) == len(config_inputs)
                  else f"expected number of inputs between {len(required)} and "
                       f"{len(config_inputs)}")
        raise ServerError(
            f"{prefix}{counts} but got {len(inputs)} inputs for model '{model}'. Got input(s) "
            f"{_names(given)}, but missing required input(s) {_missing(missing)}. Please provide "
            "all required input(s).")
    for tensor in inputs:
        if tensor.name not in config_inputs:
            raise ServerError(f"unexpected inference input '{tensor.name}' for model '{model}'")

    batch_size = 1
    if config.max_batch_size > 0:
        for index, tensor in enumerate(inputs):
            if not tensor.shape:
                raise ServerError(f"{prefix}input '{tensor.name}' has no shape but model requires "
                                  f"batch dimension for '{model}'")
            if index == 0:
                batch_size = tensor.shape[0]
            elif tensor.shape[0] != batch_size:
                raise ServerError(f"{prefix}input '{tensor.name}' batch size does not match other "
                                  f"inputs for '{model}'")
        if batch_size > config.max_batch_size:
            raise ServerError(f"{prefix}inference request batch-size must be <= "
                              f"{config.max_batch_size} for '{model}'")

    for tensor in inputs:
        _validate_input(config, config_inputs[tensor.name], tensor, prefix)
    return batch_size


def _validate_input(config: pb.ModelConfig, spec: pb.ModelInput, tensor: InputTensor,
                    prefix: str) -> None:
    model = config.name
    expected_type = wire_name(spec.data_type)
    if tensor.datatype != expected_type:
        # Triton parses the wire name first; a name it does not know becomes TYPE_INVALID.
        given_type = tensor.datatype if tensor.datatype in NUMPY_DTYPE else "INVALID"
        raise ServerError(f"{prefix}inference input '{tensor.name}' data-type is "
                          f"'{given_type}', but model '{model}' expects '{expected_type}'")
    if any(d < 0 for d in tensor.shape):
        raise ServerError(f"{prefix}All input dimensions should be specified for input "
                          f"'{tensor.name}' for model '{model}', got {_dims(tensor.shape)}")
    batching = config.max_batch_size > 0
    shape = tensor.shape[1:] if batching else tensor.shape
    if len(shape) != len(spec.dims) or any(d != c and c != -1 for d, c in zip(shape, spec.dims)):
        full = ([-1] if batching else []) + list(spec.dims)
        raise ServerError(
            f"{prefix}unexpected shape for input '{tensor.name}' for model '{model}'. Expected "
            f"{_dims(full)}, got {_dims(tensor.shape)}. {_BATCH_NOTE if batching else ''}")

    count = math.prod(tensor.shape)
    byte_size = memoryview(tensor.data).nbytes
    if tensor.datatype == "BYTES":
        _validate_bytes(tensor, count, prefix, model)
    elif byte_size != count * ELEMENT_SIZE[tensor.datatype]:
        raise ServerError(
            f"{prefix}input byte size mismatch for input '{tensor.name}' for model '{model}'. "
            f"Expected {count * ELEMENT_SIZE[tensor.datatype]}, got {byte_size}")


def _validate_bytes(tensor: InputTensor, count: int, prefix: str, model: str) -> None:
    """Walk the 4-byte length prefixes: exactly `count` elements must fill the buffer."""
    view = memoryview(tensor.data).cast("B")
    offset, seen, end = 0, 0, len(view)
    while offset < end:
        if end - offset < 4:
            raise ServerError(
                f"{prefix}incomplete string length indicator for inference input "
                f"'{tensor.name}' for model '{model}', expecting 4 bytes but only "
                f"{end - offset} bytes available. Please make sure the string length indicator "
                "is in one buffer.")
        (length,) = struct.unpack_from("<I", view, offset)
        offset += 4 + length
        seen += 1
        if seen > count:
            raise ServerError(
                f"{prefix}unexpected number of string elements {seen} for inference input "
                f"'{tensor.name}' for model '{model}', expecting {count}")
    if offset > end:
        seen -= 1  # the last length prefix runs past the end: that element is not there
    if seen != count:
        raise ServerError(
            f"{prefix}expected {count} string elements for inference input '{tensor.name}' for "
            f"model '{model}', got {seen}")
