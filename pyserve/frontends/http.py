"""The KServe v2 HTTP/REST frontend (aiohttp), with Triton's binary tensor extension."""

from __future__ import annotations

import asyncio
import base64
import binascii
import json
import re
import zlib

import numpy as np
from aiohttp import web

from pyserve import __version__, _core
from pyserve.config import config_to_json
from pyserve.datatypes import NUMPY_DTYPE, serialize_bytes
from pyserve import logs, restricted
from pyserve.errors import ErrorCode, ServerError, http_status
from pyserve.frontends import codec, generate
from pyserve.frontends.grpc import SERVER_EXTENSIONS
from pyserve.frontends.inference import (DECOUPLED_HTTP, check_declared, load_parameters,
                                         model_metadata, run_inference, stream_inference)
from pyserve.frontends.shared_memory import (ShmRef, http_ref, input_block, no_classification,
                                             output_blocks)
from pyserve.frontends.sockets import listen
from pyserve.lifecycle import ModelManager
from pyserve.runner import InputTensor, OutputTensor

HEADER_LENGTH = "Inference-Header-Content-Length"
_MODEL = "/v2/models/{model}"
_VERSION = "/v2/models/{model}/versions/{version:[0-9]+}"


def _error(message: str, status: int) -> web.Response:
    return web.json_response({"error": message}, status=status)


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
        return web.json_response(
            {"name": self._manager.server_id, "version": __version__, "extensions": SERVER_EXTENSIONS})

    async def model_ready(self, request: web.Request) -> web.Response:
        name, version = request.match_info["model"], request.match_info.get("version", "")
        return web.Response(status=200 if self._manager.is_ready(name, version) else 400)

    async def model_metadata(self, request: web.Request) -> web.Response:
        model = self._manager.get(request.match_info["model"], request.match_info.get("version", ""))
        versions = [str(v.version) for v in self._manager.models[model.name].ready_versions()]
        return web.json_response(model_metadata(model, versions))

    async def model_config(self, request: web.Request) -> web.Response:
        model = self._manager.get(request.match_info["model"], request.match_info.get("version", ""))
        return web.json_response(config_to_json(model.config))

    async def statistics(self, request: web.Request) -> web.Response:
        entries = self._manager.statistics(request.match_info.get("model", ""),
                                           request.match_info.get("version", ""))
        return web.json_response({"model_stats": entries})

    async def log_settings(self, request: web.Request) -> web.Response:
        """The logging extension: GET reads the settings, POST changes the ones it names."""
        if request.method == "GET":
            return web.json_response(logs.settings())
        body = await _body(request)
        try:
            changes = json.loads(body) if body.strip() else {}
        except ValueError as e:
            raise ServerError(f"failed to parse the request JSON buffer: {e}",
                              ErrorCode.INTERNAL) from None
        try:
            return web.json_response(logs.update(changes if isinstance(changes, dict) else {}))
        except ServerError as e:
            if e.code != ErrorCode.INVALID_ARG:
                raise
            # Triton's HTTP frontend words and codes a bad format as its command line does.
            raise ServerError(e.message.replace("for log_format", "for --log_format"),
                              ErrorCode.UNAVAILABLE) from None

    async def repository_index(self, request: web.Request) -> web.Response:
        body = await _json_body(request)
        return web.json_response(self._manager.index(ready_only=bool(body.get("ready", False))))

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
            return web.json_response(
                self._shared_memory.status(request.match_info.get("region", ""), kind))
        return status

    def _shm_register(self, kind: str):
        async def register(request: web.Request) -> web.Response:
            body, name = await _json_body(request), request.match_info["region"]
            if kind == "system":
                self._shared_memory.register_system(
                    name, _field(body, "key", str), _field(body, "offset", int),
                    _field(body, "byte_size", int))
            else:
                self._shared_memory.register_cuda(
                    name, _raw_handle(body), _field(body, "device_id", int),
                    _field(body, "byte_size", int))
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
        body = await _body(request)
        header, binary = _split_body(body, request.headers.get(HEADER_LENGTH))
        _check_declared(header)
        inputs, offset = [], 0
        for spec in _objects(header, "inputs"):
            tensor, offset = _decode_input(spec, binary, offset, name, self._shared_memory)
            inputs.append(tensor)
        if offset != len(binary):
            raise ServerError(f"unexpected additional input data for model '{name}'")

        binary_default = bool(_parameters(header).get("binary_data_output", False))
        requested = _objects(header, "outputs")
        if any(not isinstance(o.get("name"), str) for o in requested):
            raise ServerError("each requested output must have a string 'name'")
        classification = {o["name"]: _parameters(o)["classification"] for o in requested
                          if "classification" in _parameters(o)}
        in_shm = _output_refs(requested, classification)
        model, outputs = await run_inference(self._manager, name, version, inputs,
                                             [o["name"] for o in requested], str(header.get("id", "")),
                                             {**self._forwarded(request), **_parameters(header)},
                                             classification,
                                             output_blocks(self._shared_memory, in_shm),
                                             DECOUPLED_HTTP)
        as_binary = {o["name"]: bool(_parameters(o).get("binary_data", binary_default))
                     for o in requested}
        response = {"model_name": model.name, "model_version": str(model.version)}
        if header.get("id"):
            response["id"] = header["id"]
        response["outputs"], chunks = _encode_outputs(
            outputs, lambda n: as_binary.get(n, binary_default), in_shm)
        if not chunks:
            return web.json_response(response)
        head = json.dumps(response).encode()
        return web.Response(body=b"".join([head, *chunks]),
                            headers={HEADER_LENGTH: str(len(head)),
                                     "Content-Type": "application/octet-stream"})


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
        raise ServerError(f"unsupported Content-Encoding '{encoding}'", ErrorCode.UNSUPPORTED)
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
    try:
        document = json.loads(body)
    except ValueError as e:
        raise ServerError(f"failed to parse the request JSON buffer: {e}") from None
    if not isinstance(document, dict):
        raise ServerError("the request body must be a JSON object")
    return document


def _split_body(body: bytes, header_length: str | None) -> tuple[dict, memoryview]:
    view = memoryview(body)
    length = len(body)
    if header_length is not None:
        try:
            length = int(header_length)
        except ValueError:
            raise ServerError(f"Unable to parse {HEADER_LENGTH}, got: {header_length}") from None
        if length == 0:
            raise ServerError("must specify valid 'Infer-Header-Content-Length' in request header "
                              "and 'binary_data_size' when passing inputs in binary data format")
        if length < 0 or length > len(body):
            raise ServerError(f"inference header size should be in range (0, {len(body)}), "
                              f"got: {header_length}")
    try:
        header = json.loads(view[:length].tobytes() if length != len(body) else body)
    except json.JSONDecodeError as e:
        raise ServerError(f"failed to parse the request JSON buffer: "
                          f"{_RAPIDJSON_TEXT.get(e.msg, e.msg + '.')} at {e.pos}") from None
    except ValueError as e:  # not UTF-8
        raise ServerError(f"failed to parse the request JSON buffer: {e}") from None
    if not isinstance(header, dict):
        raise ServerError("failed to parse the request JSON buffer: expected a JSON object")
    return header, view[length:]


# Triton parses with RapidJSON; clients and scripts match its wording.
_RAPIDJSON_TEXT = {
    "Expecting value": "Invalid value.",
    "Extra data": "The document root must not be followed by other values.",
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
    parameters = _parameters(spec)
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


def _field(body: dict, key: str, kind: type):
    value = body.get(key)
    if not isinstance(value, kind) or isinstance(value, bool) or (kind is int and value < 0):
        raise ServerError(f"Unable to parse '{key}'")
    return value


def _raw_handle(body: dict) -> bytes:
    """A CUDA IPC handle, sent as {"b64": "..."}."""
    handle = body.get("raw_handle")
    try:
        return base64.b64decode(handle["b64"], validate=True)
    except (TypeError, KeyError, binascii.Error):
        raise ServerError("Unable to parse 'raw_handle'") from None


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
        raise ServerError("Unable to parse 'data': Shape does not match true shape of 'data' field")
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
                            ) -> tuple[web.AppRunner, int]:
    middlewares = [_restrictions(restricted_groups)] if restricted_groups else []
    app = web.Application(middlewares=[*middlewares, _refusals], client_max_size=max_input_size)
    app[MAX_INPUT_SIZE] = max_input_size
    app.add_routes(HttpFrontend(manager, shared_memory, header_pattern).routes())
    # handler_cancellation: a client that closes its connection cancels its inference, which
    # the core then answers without computing it if it is still queued.
    runner = web.AppRunner(app, access_log=None, handler_cancellation=True,
                           auto_decompress=False)
    await runner.setup()
    sock = listen(host, port, reuse_port)
    await web.SockSite(runner, sock).start()
    return runner, sock.getsockname()[1]
