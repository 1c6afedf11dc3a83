"""The protocol-independent part of an inference for the Python frontends: find the model and
hand the request to the core, which checks it, runs it and picks the outputs to return."""

from __future__ import annotations

import base64
import logging
from typing import Iterable, Sequence

from pyserve import _core
from pyserve.config import parse_config_json
from pyserve.datatypes import wire_name
from pyserve.errors import ErrorCode, ServerError
from pyserve.lifecycle import ModelManager, ModelVersion
from pyserve.protocol import pb
from pyserve.runner import InputTensor, OutputTensor

log = logging.getLogger("pyserve")

# Request parameters the server itself acts on; the rest are the model's.
_SERVER_PARAMETERS = {"priority", "timeout", "binary_data_output", "sequence_id",
                      "sequence_start", "sequence_end"}
_MAX_CORRELATION_ID_LENGTH = 128  # characters of a string ID, as Triton

# TRITONSERVER_RequestFlag
SEQUENCE_START, SEQUENCE_END = 1, 2

# Triton's refusals of decoupled models on the one-response endpoints.
DECOUPLED_GRPC = "ModelInfer RPC doesn't support models with decoupled transaction policy"
DECOUPLED_HTTP = "HTTP end point doesn't support models with decoupled transaction policy"


async def run_inference(manager: ModelManager, model_name: str, version: str,
                        inputs: Sequence[InputTensor], requested_outputs: Sequence[str],
                        request_id: str = "", parameters: dict | None = None,
                        classification: dict[str, int] | None = None,
                        shared_memory: dict | None = None, traceparent: str = "",
                        sequence: tuple[int | str, int] = (0, 0), decoupled_refusal: str = "",
                        ) -> tuple[ModelVersion, list[OutputTensor]]:
    """Outputs in the order requested, or every output of the config in config order.
    `parameters` are the request's (priority and timeout are read here); `classification`
    asks for the top k classes of some outputs instead of their values; `shared_memory` maps
    outputs to the _core.SharedMemoryBlock the core writes them into; `traceparent` is the
    request's W3C trace context; `sequence` is the correlation ID and flags (grpc_sequence,
    http_sequence). A decoupled model is refused with `decoupled_refusal` (UNSUPPORTED)."""
    model = manager.get(model_name, version)
    if model.runner.decoupled:
        raise ServerError(decoupled_refusal or DECOUPLED_GRPC, ErrorCode.UNSUPPORTED)
    model, outputs, custom, priority, timeout = _request(
        model, requested_outputs, parameters, classification, shared_memory)
    results = await model.runner.infer(inputs, outputs, request_id, custom, priority, timeout,
                                       traceparent=traceparent, sequence=sequence)
    return model, results


def stream_inference(manager: ModelManager, model_name: str, version: str,
                     inputs: Sequence[InputTensor], requested_outputs: Sequence[str],
                     request_id: str = "", parameters: dict | None = None,
                     classification: dict[str, int] | None = None,
                     shared_memory: dict | None = None, traceparent: str = "",
                     sequence: tuple[int | str, int] = (0, 0)):
    """As run_inference, for any model, decoupled or not: (model, an async iterator of
    (outputs or None, ServerError or None, final) per response, the final one last)."""
    model = manager.get(model_name, version)
    model, outputs, custom, priority, timeout = _request(
        model, requested_outputs, parameters, classification, shared_memory)
    return model, model.runner.infer_decoupled(inputs, outputs, request_id, custom, priority,
                                               timeout, traceparent, sequence)


def _request(model: ModelVersion, requested_outputs, parameters, classification, shared_memory):
    parameters = parameters or {}
    classification = classification or {}
    for k in classification.values():
        if isinstance(k, bool) or not isinstance(k, int) or not 1 <= k <= 2**32 - 1:
            raise ServerError(f"classification count must be a positive integer, got {k!r}")
    shared_memory = shared_memory or {}
    outputs = [(name, classification.get(name, 0), shared_memory.get(name))
               for name in requested_outputs]
    custom = {k: v for k, v in parameters.items() if k not in _SERVER_PARAMETERS}
    return (model, outputs, custom, _unsigned(parameters, "priority"),
            _unsigned(parameters, "timeout"))


def grpc_sequence(parameters) -> tuple[int | str, int]:
    """The correlation ID and flags of a ModelInferRequest's parameters, in Triton's words."""
    correlation_id: int | str = 0
    flags = 0
    if "sequence_id" in parameters:
        value = parameters["sequence_id"]
        kind = value.WhichOneof("parameter_choice")
        if kind == "int64_param":
            correlation_id = value.int64_param % 2**64  # as Triton: the bits, unsigned
        elif kind == "string_param":
            correlation_id = _text_id(value.string_param)
        else:
            raise ServerError("invalid value type for 'sequence_id' parameter, expected "
                              "int64_param or string_param.")
    for key, flag in (("sequence_start", SEQUENCE_START), ("sequence_end", SEQUENCE_END)):
        if key in parameters:
            value = parameters[key]
            if value.WhichOneof("parameter_choice") != "bool_param":
                raise ServerError(f"invalid value type for '{key}' parameter, expected "
                                  "bool_param.")
            flags |= flag if value.bool_param else 0
    return correlation_id, flags


def http_sequence(parameters: dict) -> tuple[int | str, int]:
    """The correlation ID and flags of a JSON request's parameters, in Triton's words (and its
    code: its JSON reader fails INTERNAL)."""
    correlation_id = parameters.get("sequence_id", 0)
    if isinstance(correlation_id, str):
        correlation_id = _text_id(correlation_id)
    elif isinstance(correlation_id, bool) or not isinstance(correlation_id, int) or not (
            0 <= correlation_id < 2**64):
        raise ServerError("Unable to parse 'sequence_id': attempt to access JSON non-string as "
                          "string", ErrorCode.INTERNAL)
    flags = 0
    for key, flag in (("sequence_start", SEQUENCE_START), ("sequence_end", SEQUENCE_END)):
        value = parameters.get(key, False)
        if not isinstance(value, bool):
            raise ServerError(f"Unable to parse '{key}': attempt to access JSON non-boolean as "
                              "boolean", ErrorCode.INTERNAL)
        flags |= flag if value else 0
    return correlation_id, flags


def _text_id(text: str) -> str:
    if len(text) > _MAX_CORRELATION_ID_LENGTH:
        raise ServerError("string correlation ID cannot be longer than 128 characters",
                          ErrorCode.UNSUPPORTED)
    return text


def check_declared(inputs: int, outputs: int, parameters: int, shapes: Iterable) -> None:
    """What a message declares against the server's request limits, before anything is
    decoded from it: the native parsers count the same and word it the same."""
    limits = _core.request_limits()
    for what, key, count in (("inputs", "inputs", inputs),
                             ("requested outputs", "outputs", outputs),
                             ("parameters", "parameters", parameters)):
        if count > limits[key]:
            raise ServerError(f"too many {what}: the limit is {limits[key]} "
                              f"(--request-limit {key}=N)")
    if any(len(shape) > limits["rank"] for shape in shapes):
        raise ServerError(f"too many dimensions in a shape: the limit is {limits['rank']} "
                          "(--request-limit rank=N)")


def _unsigned(parameters: dict, key: str) -> int:
    value = parameters.get(key, 0)
    if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value < 2**64:
        raise ServerError(f"parameter '{key}' must be a non-negative integer, got {value!r}")
    return value


def model_metadata(model: ModelVersion, versions: list[str]) -> dict:
    """ModelMetadata as a dict of the KServe v2 fields: shapes are config dims, with -1 for
    the batch dimension when the model batches."""
    config = model.config
    batch = [-1] if config.max_batch_size > 0 else []
    def tensors(specs):
        return [{"name": s.name, "datatype": wire_name(s.data_type), "shape": batch + list(s.dims)}
                for s in specs]
    return {
        "name": config.name,
        "versions": versions,
        "platform": config.platform or config.backend,
        "inputs": tensors(config.input),
        "outputs": tensors(config.output),
    }


def load_parameters(name: str, parameters: dict) -> tuple[pb.ModelConfig | None, dict[str, bytes]]:
    """The load API's parameters for model `name`: `config` (JSON ModelConfig) and
    `file:<version>/<path>` contents (bytes, or base64 text over HTTP)."""
    config, files = None, {}
    for key, value in parameters.items():
        if key == "config":
            if not isinstance(value, str):
                raise ServerError("Invalid config override: 'config' must be a JSON string")
            try:
                config = parse_config_json(value)
            except ServerError as e:
                # Triton words a bad override as a failed poll of the model (the clients' own
                # examples look for "failed to load"), and logs why.
                log.error("Poll failed for model directory '%s': %s", name, e.message)
                raise ServerError(f"failed to load '{name}', failed to poll from model "
                                  "repository", ErrorCode.INTERNAL) from None
        elif key.startswith("file:"):
            if isinstance(value, str):
                try:
                    value = base64.b64decode(value, validate=True)
                except ValueError:
                    raise ServerError(f"load parameter '{key}' is not valid base64") from None
            if not isinstance(value, bytes):
                raise ServerError(f"load parameter '{key}' must hold the file's bytes")
            files[key] = value
        else:
            raise ServerError(f"Unrecognized load parameter '{key}'.")
    return config, files
