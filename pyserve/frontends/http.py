"""The KServe v2 HTTP/REST frontend (aiohttp), with Triton's binary tensor extension."""

from __future__ import annotations

import asyncio
import base64
import binascii
import functools
import json
import math
import re
import ssl
import zlib

import numpy as np
from aiohttp import web

from pyserve import __version__, _core
from pyserve.config import config_to_json
from pyserve.datatypes import ELEMENT_SIZE, NUMPY_DTYPE, serialize_bytes, wire_name
from pyserve import logs, restricted, tracing
from pyserve.errors import ErrorCode, ServerError, http_status
from pyserve.frontends import codec, generate
from pyserve.frontends.grpc import SERVER_EXTENSIONS
from pyserve.frontends.inference import (DECOUPLED_HTTP, check_declared, http_sequence,
                                         load_parameters, model_metadata, run_inference,
                                         stream_inference)
from pyserve.frontends.shared_memory import (ShmRef, http_ref, input_block, no_classification,
                                             output_blocks)
from pyserve.frontends.sockets import listen
from pyserve.lifecycle import ModelManager
from pyserve.options import LISTEN_BACKLOG
from pyserve.runner import InputTensor, OutputTensor

HEADER_LENGTH = "Inference-Header-Content-Length"
_MODEL = "/v2/models/{model}"
_VERSION = "/v2/models/{model}/versions/{version:[0-9]+}"


def _dumps(value) -> str:
    """Compact, as Triton writes its JSON."""
    return json.dumps(value, separators=(",", ":"))


_json_response = functools.partial(web.json_response, dumps=_dumps)


def _error(message: str, status: int) -> web.Response:
    return _json_response({"error": message}, status=status)


MAX_INPUT_SIZE = web.AppKey("max_input_size", int)


@web.middleware
async def _refusals(request: web.Request, handler):
    try:
        return await handler(request)
    except ServerError as e:
        return _error(e.message, http_status(e.code))
    except (web.HTTPNotFound, web.HTTPMethodNotAllowed) as e:  # JSON, as Triton answers them
        return _error(e.reason, e.status)
    except RecursionError:
        return _error("failed to parse the request JSON buffer: nested too deeply", 400)


def _restrictions(groups: dict[str, tuple[str, str]]):
    """--http-restricted-api: a restricted group's routes answer 403 without their header."""
    @web.middleware
    async def check(request: web.Request, handler):
        required = groups.get(restricted.http_group(request.path))
        if required is not None and request.headers.get(required[0]) != required[1]:
            return _error(restricted.http_refusal(required[0]), 403)
        return await handler(request)
    return check


class HttpFrontend:
    def __init__(self, manager: ModelManager,
                 shared_memory: _core.SharedMemoryRegistry | None = None,
                 header_pattern: str = "") -> None:
        self._manager = manager
        # --http-header-forward-pattern: headers whose name it finds become request parameters.
        self._forward = re.compile(header_pattern) if header_pattern else None
        self._shared_memory = (shared_memory if shared_memory is not None
                               else _core.SharedMemoryRegistry())

    def routes(self) -> list[web.RouteDef]:
        routes = [
            web.get("/v2/health/live", self.live),
            web.get("/v2/health/ready", self.ready),
            web.get("/v2", self.server_metadata),
            web.get("/v2/models/stats", self.statistics),
            web.get("/v2/logging", self.log_settings),
            web.post("/v2/logging", self.log_settings),
            web.get("/v2/trace/setting", self.trace_settings),
            web.post("/v2/trace/setting", self.trace_settings),
            web.get(_MODEL + "/trace/setting", self.trace_settings),
            web.post(_MODEL + "/trace/setting", self.trace_settings),
        ]
        for base in ("/v2/repository", "/v2/repository/{repository}"):
            routes += [
                web.post(base + "/index", self.repository_index),
                web.post(base + "/models/{model}/load", self.load),
                web.post(base + "/models/{model}/unload", self.unload),
            ]
        for kind in ("system", "cuda"):
            base = f"/v2/{kind}sharedmemory"
            status, register, unregister = (self._shm_status(kind), self._shm_register(kind),
                                            self._shm_unregister(kind))
            routes += [
                web.get(base + "/status", status),
                web.get(base + "/region/{region}/status", status),
                web.post(base + "/region/{region}/register", register),
                web.post(base + "/unregister", unregister),
                web.post(base + "/region/{region}/unregister", unregister),
            ]
        for base in (_MODEL, _VERSION):
            routes += [
                web.get(base, self.model_metadata),
                web.get(base + "/ready", self.model_ready),
                web.get(base + "/config", self.model_config),
                web.get(base + "/stats", self.statistics),
                web.post(base + "/infer", self.infer),
                web.post(base + "/generate", self.generate),
                web.post(base + "/generate_stream", self.generate),
            ]
        return routes

    async def live(self, request: web.Request) -> web.Response:
        return web.Response(status=200)

    async def ready(self, request: web.Request) -> web.Response:
        return web.Response(status=200 if self._manager.all_ready() else 400)

    async def server_metadata(self, request: web.Request) -> web.Response:
        return _json_response(
            {"name": self._manager.server_id, "version": __version__, "extensions": SERVER_EXTENSIONS})

    async def model_ready(self, request: web.Request) -> web.Response:
        name, version = request.match_info["model"], request.match_info.get("version", "")
        if not self._manager.is_ready(name, version):
            return _error("Model version not ready", 400)
        return web.Response(status=200)

    async def model_metadata(self, request: web.Request) -> web.Response:
        model = self._manager.get(request.match_info["model"], request.match_info.get("version", ""))
        versions = [str(v.version) for v in self._manager.ready_versions(request.match_info["model"])]
        return _json_response(model_metadata(model, versions))

    async def model_config(self, request: web.Request) -> web.Response:
        model = self._manager.get(request.match_info["model"], request.match_info.get("version", ""))
        return _json_response(config_to_json(model.config))

    async def statistics(self, request: web.Request) -> web.Response:
        entries = self._manager.statistics(request.match_info.get("model", ""),
                                           request.match_info.get("version", ""))
        return _json_response({"model_stats": entries})

    async def log_settings(self, request: web.Request) -> web.Response:
        """The logging extension: GET reads the settings, POST changes the ones it names."""
        if request.method == "GET":
            return _json_response(logs.settings())
        body = await _body(request)
        changes = _parse_json(body) if body.strip() else {}
        try:
            return _json_response(logs.update(changes if isinstance(changes, dict) else {}))
        except ServerError as e:
            if e.code != ErrorCode.INVALID_ARG:
                raise
            # Triton's HTTP frontend words and codes a bad format as its command line does.
            raise ServerError(e.message.replace("for log_format", "for --log_format"),
                              ErrorCode.UNAVAILABLE) from None

    async def trace_settings(self, request: web.Request) -> web.Response:
        """The trace extension: GET reads, POST changes the settings it names (null clears
        one); trace_level is a list of strings, the others strings, as Triton reads them."""
        model = request.match_info.get("model", "")
        changes: dict[str, list[str] | None] = {}
        if request.method == "POST":
            body = await _body(request)
            try:
                settings = json.loads(body)
            except ValueError as e:
                raise ServerError(f"failed to parse the request JSON buffer: {e}",
                                  ErrorCode.INTERNAL) from None
            for key, value in (settings.items() if isinstance(settings, dict) else ()):
                if value is None or key == "trace_file":
                    changes[key] = None
                elif key != "trace_level":
                    changes[key] = [_json_string(value)]
                elif not isinstance(value, list):
                    raise ServerError("attempt to access JSON non-array as array",
                                      ErrorCode.INTERNAL)
                else:
                    changes[key] = [_json_string(v) for v in value]
        try:
            return web.json_response(tracing.handle_settings(
                model, changes, lambda name: self._manager.is_ready(name, "")))
        except ServerError as e:  # Triton's HTTP frontend words this one without the space
            raise ServerError(e.message.replace("Expecting value >= -1, got: ",
                                                "Expecting value >= -1, got:"), e.code) from None

    async def repository_index(self, request: web.Request) -> web.Response:
        body = await _json_body(request)
        return _json_response(self._manager.index(ready_only=bool(body.get("ready", False))))

    async def load(self, request: web.Request) -> web.Response:
        self._manager.check_control_allowed()
        config, files = load_parameters(request.match_info["model"],
                                        _parameters(await _json_body(request)))
        # Shielded: a client that goes away does not cut a load or unload short.
        await asyncio.shield(self._manager.load(request.match_info["model"], config, files))
        return web.Response(status=200)

    async def unload(self, request: web.Request) -> web.Response:
        self._manager.check_control_allowed()
        parameters = _parameters(await _json_body(request))
        await asyncio.shield(self._manager.unload(
            request.match_info["model"], bool(parameters.get("unload_dependents", False))))
        return web.Response(status=200)

    def _shm_status(self, kind: str):
        async def status(request: web.Request) -> web.Response:
            return _json_response(
                self._shared_memory.status(request.match_info.get("region", ""), kind))
        return status

    def _shm_register(self, kind: str):
        async def register(request: web.Request) -> web.Response:
            body, name = await _json_body(request), request.match_info["region"]
            # Read in Triton's order, with its words.
            if kind == "system":
                key = _field(body, "key", str, _no_field("key"))
                offset = _field(body, "offset", int, 0)
                self._shared_memory.register_system(
                    name, key, offset, _field(body, "byte_size", int, _no_field("byte_size")))
            else:
                handle = _raw_handle(body)
                byte_size = _field(body, "byte_size", int)
                self._shared_memory.register_cuda(name, handle, _field(body, "device_id", int),
                                                  byte_size)
            return web.Response(status=200)
        return register

    def _shm_unregister(self, kind: str):
        async def unregister(request: web.Request) -> web.Response:
            self._shared_memory.unregister(request.match_info.get("region", ""), kind)
            return web.Response(status=200)
        return unregister

    def _forwarded(self, request: web.Request) -> dict:
        if self._forward is None:
            return {}
        return {key.lower(): value for key, value in request.headers.items()
                if self._forward.search(key.lower())}

    async def infer(self, request: web.Request) -> web.Response:
        name, version = request.match_info["model"], request.match_info.get("version", "")
        model = self._manager.get(name, version)  # an unknown model is refused first, as in Triton
        body = await _body(request)
        length = _header_length(request.headers.get(HEADER_LENGTH), len(body))
        if length == 0:  # a raw binary request: the body is the model's one input
            header = {"parameters": {"binary_data_output": True}}
            inputs = [_raw_input(model, name, body)]
        else:
            header, binary = _split_body(body, length)
            _check_declared(header)
            inputs, offset = [], 0
            for spec in _objects(header, "inputs"):
                tensor, offset = _decode_input(spec, binary, offset, name, self._shared_memory)
                inputs.append(tensor)
            if offset != len(binary):
                raise ServerError(f"unexpected additional input data for model '{name}'")

        binary_default = bool(_parameters(header).get("binary_data_output", False))
        requested = _objects(header, "outputs")
        for output in requested:  # Triton's JSON reader's words
            if not isinstance(output.get("name"), str):
                raise ServerError("Unable to parse 'name': " + (
                    "attempt to access non-existing object member 'name'" if "name" not in output
                    else "attempt to access JSON non-string as string"), ErrorCode.INTERNAL)
        classification = {o["name"]: _parameters(o)["classification"] for o in requested
                          if "classification" in _parameters(o)}
        in_shm = _output_refs(requested, classification)
        model, outputs = await run_inference(self._manager, name, version, inputs,
                                             [o["name"] for o in requested], str(header.get("id", "")),
                                             {**self._forwarded(request), **_parameters(header)},
                                             classification,
                                             output_blocks(self._shared_memory, in_shm),
                                             request.headers.get("traceparent", ""),
                                             http_sequence(_parameters(header)), DECOUPLED_HTTP)
        as_binary = {o["name"]: bool(_parameters(o).get("binary_data", binary_default))
                     for o in requested}
        response = {"model_name": model.name, "model_version": str(model.version)}
        if header.get("id"):
            response["id"] = header["id"]
        response["outputs"], chunks = _encode_outputs(
            outputs, lambda n: as_binary.get(n, binary_default), in_shm)
        head = _dumps(response).encode()
        # Binary outputs of no bytes leave the answer plain JSON, as in Triton.
        headers = ({"Content-Type": "application/json"} if not any(map(len, chunks)) else
                   {HEADER_LENGTH: str(len(head)), "Content-Type": "application/octet-stream"})
        body = b"".join([head, *chunks])
        encoding = _response_encoding(request.headers.get("Accept-Encoding", ""))
        if encoding:
            body = _compress(body, encoding)
            headers["Content-Encoding"] = encoding
        return web.Response(body=body, headers=headers)

    async def generate(self, request: web.Request) -> web.StreamResponse:
        """Triton's generate extension (pyserve/frontends/generate.py): /generate answers the
        model's one response as JSON; /generate_stream sends each response as a server-sent
        event. The status is that of the first response, as Triton's."""
        streaming = request.path.endswith("_stream")
        name, version = request.match_info["model"], request.match_info.get("version", "")
        model = self._manager.get(name, version)
        if request.headers.get("Content-Encoding", "identity").strip().lower() != "identity":
            raise generate.unsupported_encoding()
        inputs, parameters, request_id = generate.generate_request(model, await _json_body(request))
        model, answers = stream_inference(self._manager, name, version, inputs, [], request_id,
                                          {**self._forwarded(request), **parameters})
        documents, status = [], 0
        stream: web.StreamResponse | None = None
        async for outputs, error, _ in answers:  # leaving it early cancels the request
            if status == 0:
                status = 200 if error is None else http_status(error.code)
            if error is not None:
                documents.append(generate.error_document(error))
            elif outputs is not None:
                documents.append(generate.generate_response(model, request_id, outputs))
            if streaming and documents:
                stream = stream or await _event_stream(request, status)
                await stream.write(generate.encode(documents.pop(), True))
        if streaming:
            stream = stream or await _event_stream(request, status)
            await stream.write_eof()
            return stream
        if len(documents) != 1:
            documents = [{"error": generate.ONE_RESPONSE}]
        return web.Response(status=status, body=generate.encode(documents[0], False),
                            content_type="application/json")


def _json_string(value) -> str:
    if not isinstance(value, str):
        raise ServerError("attempt to access JSON non-string as string", ErrorCode.INTERNAL)
    return value


async def _event_stream(request: web.Request, status: int) -> web.StreamResponse:
    stream = web.StreamResponse(status=status,
                                headers={"Content-Type": "text/event-stream; charset=utf-8"})
    await stream.prepare(request)
    return stream


async def _body(request: web.Request) -> bytes:
    """The request body, inflated here rather than by aiohttp (whose server is started with
    auto_decompress off), so that the size limit bounds what a small compressed body expands
    to and a body that does not inflate is a plain 400."""
    body = await request.read()  # at most client_max_size bytes as sent
    encoding = request.headers.get("Content-Encoding", "identity").strip().lower()
    if encoding == "identity":
        return body
    if encoding not in ("gzip", "deflate"):
        raise web.HTTPNotImplemented(  # Triton's answer, with the encodings it takes
            text=_dumps({"error": "Unsupported compression type"}),
            content_type="application/json", headers={"Accept-Encoding": "gzip, deflate"})
    limit = request.app[MAX_INPUT_SIZE]
    inflater = zlib.decompressobj(zlib.MAX_WBITS | (16 if encoding == "gzip" else 0))
    try:
        inflated = inflater.decompress(body, limit + 1)
    except zlib.error as e:
        raise ServerError(f"failed to decompress the request body ({encoding}): {e}") from None
    if len(inflated) > limit:
        raise web.HTTPRequestEntityTooLarge(max_size=limit, actual_size=len(inflated))
    if not inflater.eof:  # zlib hands over what a cut stream holds without complaint
        raise ServerError(f"failed to decompress the request body ({encoding}): truncated")
    return inflated


async def _json_body(request: web.Request) -> dict:
    """An optional JSON object body (tritonclient sends none for some calls)."""
    body = await _body(request)
    if not body.strip():
        return {}
    document = _parse_json(body)
    if not isinstance(document, dict):
        raise ServerError("the request body must be a JSON object")
    return document


def _header_length(value: str | None, body_size: int) -> int:
    """Inference-Header-Content-Length as Triton reads it, with atoi (text that is no number
    reads 0: a raw request); absent, the whole body is the JSON header."""
    if value is None:
        return body_size
    number = re.match(r"[ \t\n\v\f\r]*([+-]?[0-9]+)", value)
    length = int(number.group(1)) if number else 0
    if length < 0 or length > body_size:
        raise ServerError(f"inference header size should be in range (0, {body_size}), got: {value}")
    return length


def _raw_input(model, name: str, body: bytes) -> InputTensor:
    """A raw request's body as the model's one input, its shape deduced from the config as
    Triton deduces it (as the native decoder, infer_json.cc, does)."""
    prefix = "[request id: <id_unknown>] "  # a raw request has no id
    config = model.config
    if len(config.input) != 1:
        raise ServerError(f"{prefix}Raw request must only have 1 input (found 1) to be deduced but "
                          f"got {len(config.input)} inputs in '{name}' model configuration")
    spec = config.input[0]
    datatype = wire_name(spec.data_type)
    shape = [1] if config.max_batch_size else []
    shape += list(spec.dims)
    variable = [i for i, d in enumerate(shape) if d == -1]
    if len(variable) > 1:
        raise ServerError(f"{prefix}The shape of the raw input '{spec.name}' can not be deduced "
                          "because there are more than one variable-sized dimension")
    elements = int(np.prod([d for d in spec.dims if d != -1]))
    if datatype == "BYTES":
        if variable or elements != 1:
            raise ServerError(f"{prefix}For BYTE datatype raw input '{spec.name}', the model must "
                              "have input shape [1]")
        return InputTensor(spec.name, datatype, shape, len(body).to_bytes(4, "little") + body)
    row = elements * ELEMENT_SIZE[datatype]
    if variable:
        shape[variable[0]] = len(body) // row if row else 0
    expected = row * (shape[variable[0]] if variable else 1)
    if expected != len(body):  # worded as Triton words it: the input is still 'raw_input'
        raise ServerError(f"{prefix}input byte size mismatch for input 'raw_input' for model "
                          f"'{name}'. Expected {expected}, got {len(body)}")
    return InputTensor(spec.name, datatype, shape, body)


def _response_encoding(accept_encoding: str) -> str:
    """The encoding Triton answers an inference in: Accept-Encoding read as its
    CompressionTypeUsed reads it (compression.h says how); "" for identity."""
    chosen, chosen_weight = "", 0.0
    for entry in accept_encoding.split(","):
        stripped = entry.lstrip(" ")
        type_, q, weight_text = stripped.partition(";q=")
        if not stripped or (q and not type_):
            continue
        weight = 1.0
        if q:  # read as std::stod reads it: a leading number
            number = _LEADING_NUMBER.match(weight_text)
            if number is None:
                continue
            weight = float(number.group(0))
            if math.isinf(weight) and "inf" not in number.group(0).lower():
                continue  # out of a double's range: std::stod throws
        if type_ in ("gzip", "deflate", "identity") and weight > chosen_weight:
            chosen, chosen_weight = ("" if type_ == "identity" else type_), weight
    return chosen


_LEADING_NUMBER = re.compile(r"[ \t\n\v\f\r]*[+-]?(?:(?:[0-9]+\.?[0-9]*|\.[0-9]+)(?:[eE][+-]?[0-9]+)?"
                             r"|inf(?:inity)?|nan)", re.IGNORECASE)


def _compress(body: bytes, encoding: str) -> bytes:
    """zlib's defaults, as Triton's DataCompressor uses them (gzip: the 16 of wbits)."""
    compressor = zlib.compressobj(zlib.Z_DEFAULT_COMPRESSION, zlib.DEFLATED,
                                  zlib.MAX_WBITS | (16 if encoding == "gzip" else 0))
    return compressor.compress(body) + compressor.flush()


def _split_body(body: bytes, length: int) -> tuple[dict, memoryview]:
    view = memoryview(body)
    header = _parse_json(view[:length].tobytes() if length != len(body) else body)
    if isinstance(header, dict) and not isinstance(header.get("parameters", {}), dict):
        raise ServerError("failed to get request params.: attempt to get members for non-object",
                          ErrorCode.INTERNAL)
    inputs = header.get("inputs") if isinstance(header, dict) else None
    if inputs is None or not isinstance(inputs, list):  # Triton's JSON reader's words
        raise ServerError("Unable to parse 'inputs': " + (
            "attempt to access non-existing object member 'inputs'" if inputs is None
            else "attempt to access JSON non-array as array"), ErrorCode.INTERNAL)
    return header, view[length:]


def _parse_json(body: bytes):
    """A request's JSON; what does not parse is refused as Triton refuses it (INTERNAL, 500),
    in RapidJSON's words where Python's parser names the same fault."""
    try:
        return json.loads(body)
    except json.JSONDecodeError as e:
        text = ("The document is empty." if not body.strip() else
                _RAPIDJSON_TEXT.get(e.msg, e.msg + "."))
        raise ServerError(f"failed to parse the request JSON buffer: {text} at {e.pos}",
                          ErrorCode.INTERNAL) from None
    except ValueError as e:  # not UTF-8
        raise ServerError(f"failed to parse the request JSON buffer: {e}",
                          ErrorCode.INTERNAL) from None


_RAPIDJSON_TEXT = {
    "Expecting value": "Invalid value.",
    "Extra data": "The document root must not be followed by other values.",
    "Expecting property name enclosed in double quotes": "Missing a name for object member.",
    "Expecting ':' delimiter": "Missing a colon after a name of object member.",
    "Unterminated string starting at": "Missing a closing quotation mark in string.",
    "Invalid \\escape": "Invalid escape character in string.",
    "Invalid \\uXXXX escape": "Incorrect hex digit after \\u escape in string.",
}


def _check_declared(header: dict) -> None:
    """The request limits, counted as the native decoder counts them (malformed parts are
    left to the checks that word them)."""
    def listed(value) -> list:
        return [v for v in value if isinstance(v, dict)] if isinstance(value, list) else []

    def parameters(entry: dict) -> int:
        value = entry.get("parameters")
        return len(value) if isinstance(value, dict) else 0

    inputs, outputs = header.get("inputs"), header.get("outputs")
    specs = listed(inputs)
    check_declared(len(inputs) if isinstance(inputs, list) else 0,
                   len(outputs) if isinstance(outputs, list) else 0,
                   sum(map(parameters, [header, *specs, *listed(outputs)])),
                   (s["shape"] for s in specs if isinstance(s.get("shape"), list)))


def _objects(header: dict, key: str) -> list[dict]:
    value = header.get(key, [])
    if not isinstance(value, list) or not all(isinstance(v, dict) for v in value):
        raise ServerError(f"'{key}' must be a JSON array of objects")
    return value


def _parameters(entry: dict) -> dict:
    value = entry.get("parameters", {})
    if not isinstance(value, dict):
        raise ServerError("'parameters' must be a JSON object")
    return value


def _decode_input(spec: dict, binary: memoryview, offset: int, model: str,
                  shared_memory: _core.SharedMemoryRegistry) -> tuple[InputTensor, int]:
    try:
        name, datatype, shape = spec["name"], spec["datatype"], [int(d) for d in spec["shape"]]
    except (KeyError, TypeError, ValueError) as e:
        raise ServerError(f"input for model '{model}' is missing or has a bad field: {e}") from None
    if not isinstance(name, str) or not isinstance(datatype, str):
        raise ServerError(f"input for model '{model}': 'name' and 'datatype' must be strings")
    parameters = spec.get("parameters")
    if not isinstance(parameters, dict):  # Triton finds no member in what is no object
        parameters = {}
    size = parameters.get("binary_data_size")
    given = [field for field, present in (("data", "data" in spec),
                                          ("binary_data_size", size is not None),
                                          ("shared_memory_region",
                                           "shared_memory_region" in parameters)) if present]
    if len(given) != 1:
        which = " no field is set" if not given else " set" + "".join(f" '{f}'" for f in given)
        raise ServerError("Input must set only one of the following fields: 'data', "
                          "'binary_data_size' in 'parameters', 'shared_memory_region' in "
                          f"'parameters'. But{which}")
    ref = http_ref(parameters)
    if ref is not None:
        return InputTensor(name, datatype, shape, input_block(shared_memory, ref)), offset
    if size is not None:
        if isinstance(size, bool) or not isinstance(size, int):
            raise ServerError(f"'binary_data_size' of input '{name}' must be an integer")
        if size < 0 or size > len(binary) - offset:
            raise ServerError(f"unexpected size for input '{name}', expecting "
                              f"{len(binary) - offset} additional bytes for model '{model}'")
        return InputTensor(name, datatype, shape, binary[offset:offset + size]), offset + size
    return InputTensor(name, datatype, shape, _json_data(name, datatype, shape, spec["data"])), offset


def _output_refs(requested: list[dict], classification: dict) -> dict[str, ShmRef]:
    """The requested outputs to write into shared memory, checked as Triton checks them."""
    refs = {}
    for output in requested:
        ref = http_ref(_parameters(output))
        if ref is not None:
            if _parameters(output).get("binary_data", False) is True:
                raise ServerError(
                    "Output can't set both 'shared_memory_region' and 'binary_data'")
            refs[output["name"]] = ref
    no_classification(refs, classification,
                      "Output can't set both 'shared_memory_region' and 'classification'")
    return refs


_REQUIRED = object()


def _no_field(key: str) -> ServerError:
    return ServerError(f"Shared memory register request has no '{key}' field")


def _field(body: dict, key: str, kind: type, missing=_REQUIRED):
    """A string or unsigned integer member, read as Triton's JSON reader reads it (a value of
    another type fails INTERNAL, in its words); when absent, `missing` is raised if it is an
    error, returned otherwise, or the reader's own refusal given for _REQUIRED."""
    if not isinstance(body, dict) or key not in body:
        if missing is _REQUIRED:
            raise ServerError(f"attempt to access non-existing object member '{key}'",
                              ErrorCode.INTERNAL)
        if isinstance(missing, ServerError):
            raise missing
        return missing
    value = body[key]
    if kind is str and not isinstance(value, str):
        raise ServerError("attempt to access JSON non-string as string", ErrorCode.INTERNAL)
    if kind is int and (not isinstance(value, int) or isinstance(value, bool) or value < 0):
        raise ServerError("attempt to access JSON non-unsigned-integer as unsigned-integer",
                          ErrorCode.INTERNAL)
    return value


def _raw_handle(body: dict) -> bytes:
    """A CUDA IPC handle, sent as {"b64": "..."}."""
    encoded = _field(_field(body, "raw_handle", object, _no_field("raw_handle")), "b64", str)
    try:
        return base64.b64decode(encoded, validate=True)
    except binascii.Error:
        raise ServerError("'raw_handle' must be a valid base64 encoded "
                          "cudaIpcMemHandle_t") from None


def _json_data(name: str, datatype: str, shape: list[int], data) -> bytes:
    if datatype in ("FP16", "BF16"):
        raise ServerError(f"receiving {datatype} data via JSON is not supported. Please use the "
                          f"binary data format for input {name}")
    if datatype not in NUMPY_DTYPE:
        raise ServerError(f"invalid datatype for input {name}")
    try:
        if datatype == "BYTES":
            array = np.array(data, dtype=np.object_).reshape(-1)
        else:
            array = np.array(data, dtype=NUMPY_DTYPE[datatype]).reshape(-1)
    except (ValueError, TypeError, OverflowError) as e:
        raise ServerError(f"Unable to parse 'data': {e}") from None
    if array.size != int(np.prod(shape)):
        raise ServerError("Unable to parse 'data': Shape does not match true shape of 'data' field",
                          ErrorCode.INTERNAL)  # Triton's JSON reader's code
    if datatype != "BYTES":
        return array.tobytes()
    try:
        return serialize_bytes(array)
    except (TypeError, ValueError, OverflowError) as e:  # an element that is not text or bytes
        raise ServerError(f"Unable to parse 'data': {e}") from None


def _encode_outputs(outputs: list[OutputTensor], binary, in_shm) -> tuple[list[dict], list]:
    """Outputs in shared memory are described without data, as Triton does."""
    described, chunks = [], []
    for output in outputs:
        entry = {"name": output.name, "datatype": output.datatype,
                 "shape": list(output.array.shape)}
        if output.name in in_shm:
            described.append(entry)
            continue
        if binary(output.name):
            data = codec.output_bytes(output.array, output.datatype)
            entry["parameters"] = {"binary_data_size": memoryview(data).nbytes}
            chunks.append(data)
        elif output.datatype in ("FP16", "BF16"):
            raise ServerError(f"sending {output.datatype} data via JSON is not supported. Please "
                              "use the binary data format for output")
        elif output.datatype == "BYTES":
            entry["data"] = [item.decode("utf-8", "replace") if isinstance(item, bytes) else str(item)
                             for item in output.array.reshape(-1)]
        else:
            entry["data"] = output.array.reshape(-1).tolist()
        described.append(entry)
    return described, chunks


async def start_http_server(manager: ModelManager, host: str, port: int, max_input_size: int,
                            shared_memory: _core.SharedMemoryRegistry | None = None,
                            restricted_groups: dict[str, tuple[str, str]] | None = None,
                            header_pattern: str = "", reuse_port: bool = False,
                            ssl_context: ssl.SSLContext | None = None,
                            backlog: int = LISTEN_BACKLOG) -> tuple[web.AppRunner, int]:
    middlewares = [_restrictions(restricted_groups)] if restricted_groups else []
    app = web.Application(middlewares=[*middlewares, _refusals], client_max_size=max_input_size)
    app[MAX_INPUT_SIZE] = max_input_size
    app.add_routes(HttpFrontend(manager, shared_memory, header_pattern).routes())
    # handler_cancellation: a client that closes its connection cancels its inference, which
    # the core then answers without computing it if it is still queued.
    runner = web.AppRunner(app, access_log=None, handler_cancellation=True,
                           auto_decompress=False)
    await runner.setup()
    sock = listen(host, port, reuse_port, backlog)
    # The site listens again, with its own backlog.
    await web.SockSite(runner, sock, ssl_context=ssl_context, backlog=backlog).start()
    return runner, sock.getsockname()[1]
