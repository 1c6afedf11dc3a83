"""The HTTP/REST protocol (KServe v2 with Triton's binary tensor extension): calls built as
(method, path, body, decoder), and two transports (HTTP/1.1 over pooled sockets, and aiohttp)
that carry them.

Tensors travel in binary: the JSON header, then each tensor's bytes
(`Inference-Header-Content-Length` says where the JSON ends), and outputs come back the same
way. Connections are pooled and kept alive.
"""

from __future__ import annotations

import base64
import gzip
import json
import select
import socket
import zlib
from collections import deque
from dataclasses import dataclass, field
from typing import Any, Callable, Mapping
from urllib.parse import quote

import httptools
from google.protobuf import json_format

from pyserve.client._request import InferRequest
from pyserve.client._shm import filled_view
from pyserve.client._tensors import from_bytes, from_json_data
from pyserve.client._types import (IndexEntry, InferResult, ModelMetadata, ModelStatistics,
                                   RegionStatus, ServerMetadata, TensorMetadata)
from pyserve.client.errors import InferenceServerError
from pyserve.protocol import pb

HEADER_LENGTH = "Inference-Header-Content-Length"


@dataclass(frozen=True)
class HttpResponse:
    status: int
    headers: Mapping[str, str]
    body: bytes


@dataclass(frozen=True)
class HttpCall:
    method: str
    path: str
    decode: Callable[[HttpResponse], Any]
    body: bytes | None = None
    headers: Mapping[str, str] = field(default_factory=dict)
    ok: tuple[int, ...] = (200,)


def _json(response: HttpResponse):
    return json.loads(response.body) if response.body.strip() else {}


def _model_path(model: str, version: str) -> str:
    path = f"/v2/models/{quote(model, safe='')}"
    return f"{path}/versions/{quote(str(version), safe='')}" if version else path


def _post_json(path: str, document, decode) -> HttpCall:
    body = json.dumps(document).encode() if document is not None else b""
    return HttpCall("POST", path, decode, body, {"Content-Type": "application/json"})


def _none(response: HttpResponse) -> None:
    return None


def error_of(response: HttpResponse) -> InferenceServerError:
    try:
        message = json.loads(response.body).get("error", "")
    except (ValueError, AttributeError):
        message = response.body.decode(errors="replace")
    return InferenceServerError.from_http(response.status, message or f"HTTP {response.status}")


# ------------------------------------------------------------------------------------ infer

def encode_infer(request: InferRequest) -> tuple[bytes, dict[str, str]]:
    header: dict[str, Any] = {}
    if request.id:
        header["id"] = request.id
    parameters = dict(request.parameters)
    inputs, chunks = [], []
    for tensor in request.inputs:
        entry = {"name": tensor.name, "shape": tensor.shape, "datatype": tensor.datatype}
        if tensor.shm is not None:
            entry["parameters"] = _shm_parameters(tensor.shm)
        else:
            entry["parameters"] = {"binary_data_size": len(tensor.data)}
            chunks.append(tensor.data)
        inputs.append(entry)
    header["inputs"] = inputs
    if request.outputs:
        outputs = []
        for output in request.outputs:
            params = dict(output.parameters)
            if output.shm is not None:
                params.update(_shm_parameters(output.shm))
            else:
                params["binary_data"] = True
            outputs.append({"name": output.name, "parameters": params})
        header["outputs"] = outputs
    else:
        parameters["binary_data_output"] = True
    if parameters:
        header["parameters"] = parameters
    head = json.dumps(header, separators=(",", ":")).encode()
    return b"".join([head, *chunks]), {HEADER_LENGTH: str(len(head)),
                                       "Content-Type": "application/octet-stream"}


def _shm_parameters(ref) -> dict[str, Any]:
    region, offset, byte_size = ref
    params = {"shared_memory_region": region, "shared_memory_byte_size": byte_size}
    if offset:
        params["shared_memory_offset"] = offset
    return params


def decode_infer(response: HttpResponse, shm_outputs: Mapping | None = None) -> InferResult:
    length = response.headers.get(HEADER_LENGTH)
    body = response.body
    if length is None:
        header, binary = json.loads(body), memoryview(b"")
    else:
        split = int(length)
        header, binary = json.loads(body[:split]), memoryview(body)[split:]
    outputs, offset = {}, 0
    for tensor in header.get("outputs", []):
        name, datatype, shape = tensor["name"], tensor["datatype"], tensor["shape"]
        params = tensor.get("parameters") or {}
        if shm_outputs and name in shm_outputs:  # no data: it is in the region (as Triton)
            outputs[name] = filled_view(shm_outputs[name], shape)
        elif "binary_data_size" in params:
            size = int(params["binary_data_size"])
            outputs[name] = from_bytes(binary[offset:offset + size], datatype, shape)
            offset += size
        else:
            outputs[name] = from_json_data(tensor.get("data", []), datatype, shape)
    parameters = header.get("parameters") or {}
    return InferResult(outputs, model_name=header.get("model_name", ""),
                       model_version=str(header.get("model_version", "")),
                       id=header.get("id", ""), parameters=parameters,
                       final=bool(parameters.get("triton_final_response", True)))


# ------------------------------------------------------------------------------- the calls

def _ready(response: HttpResponse) -> bool:
    return response.status == 200


def _metadata(response: HttpResponse) -> ModelMetadata:
    doc = _json(response)

    def tensors(items):
        return [TensorMetadata(t["name"], t["datatype"], [int(d) for d in t["shape"]])
                for t in items or []]
    return ModelMetadata(doc.get("name", ""), list(doc.get("versions", [])),
                         doc.get("platform", ""), tensors(doc.get("inputs")),
                         tensors(doc.get("outputs")))


def _config(response: HttpResponse):
    return json_format.ParseDict(_json(response), pb.ModelConfig(), ignore_unknown_fields=True)


class HttpProtocol:
    """Builds each call of the API as an HttpCall."""

    name = "http"

    @staticmethod
    def live():
        return HttpCall("GET", "/v2/health/live", _ready, ok=(200, 400))

    @staticmethod
    def ready():
        return HttpCall("GET", "/v2/health/ready", _ready, ok=(200, 400))

    @staticmethod
    def model_ready(model: str, version: str):
        return HttpCall("GET", _model_path(model, version) + "/ready", _ready, ok=(200, 400))

    @staticmethod
    def server_metadata():
        def decode(response):
            doc = _json(response)
            return ServerMetadata(doc.get("name", ""), doc.get("version", ""),
                                  list(doc.get("extensions", [])))
        return HttpCall("GET", "/v2", decode)

    @staticmethod
    def model_metadata(model: str, version: str):
        return HttpCall("GET", _model_path(model, version), _metadata)

    @staticmethod
    def model_config(model: str, version: str):
        return HttpCall("GET", _model_path(model, version) + "/config", _config)

    @staticmethod
    def statistics(model: str, version: str):
        path = _model_path(model, version) + "/stats" if model else "/v2/models/stats"
        return HttpCall("GET", path, lambda r: [ModelStatistics.from_json(s)
                                                for s in _json(r).get("model_stats", [])])

    @staticmethod
    def repository_index(ready: bool):
        return _post_json("/v2/repository/index", {"ready": ready} if ready else None,
                          lambda r: [IndexEntry(m.get("name", ""), m.get("version", ""),
                                                m.get("state", ""), m.get("reason", ""))
                                     for m in (_json(r) or [])])

    @staticmethod
    def load(model: str, config: str | None, files: Mapping[str, bytes] | None):
        parameters: dict[str, Any] = {}
        if config is not None:
            parameters["config"] = config
        for path, content in (files or {}).items():
            parameters[f"file:{path}"] = base64.b64encode(content).decode()
        return _post_json(f"/v2/repository/models/{quote(model, safe='')}/load",
                          {"parameters": parameters} if parameters else None, _none)

    @staticmethod
    def unload(model: str, unload_dependents: bool):
        return _post_json(f"/v2/repository/models/{quote(model, safe='')}/unload",
                          {"parameters": {"unload_dependents": unload_dependents}}, _none)

    @staticmethod
    def trace_settings(model: str, settings: Mapping[str, Any] | None):
        path = (_model_path(model, "") if model else "/v2") + "/trace/setting"
        if settings is None:
            return HttpCall("GET", path, _json)
        return _post_json(path, dict(settings), _json)

    @staticmethod
    def log_settings(settings: Mapping[str, Any] | None):
        if settings is None:
            return HttpCall("GET", "/v2/logging", _json)
        return _post_json("/v2/logging", dict(settings), _json)

    @staticmethod
    def shm_register(name: str, key: str, byte_size: int, offset: int):
        return _post_json(f"/v2/systemsharedmemory/region/{quote(name, safe='')}/register",
                          {"key": key, "offset": offset, "byte_size": byte_size}, _none)

    @staticmethod
    def shm_unregister(name: str):
        path = (f"/v2/systemsharedmemory/region/{quote(name, safe='')}/unregister" if name
                else "/v2/systemsharedmemory/unregister")
        return _post_json(path, None, _none)

    @staticmethod
    def shm_status(name: str):
        path = (f"/v2/systemsharedmemory/region/{quote(name, safe='')}/status" if name
                else "/v2/systemsharedmemory/status")
        return HttpCall("GET", path, lambda r: [
            RegionStatus(s.get("name", ""), s.get("key", ""), int(s.get("offset", 0)),
                         int(s.get("byte_size", 0))) for s in (_json(r) or [])])

    @staticmethod
    def infer(request: InferRequest):
        body, headers = encode_infer(request)
        shm_outputs = request.shm_outputs
        return HttpCall("POST", _model_path(request.model, request.version) + "/infer",
                        lambda r: decode_infer(r, shm_outputs), body, headers)


# ----------------------------------------------------------------------------- transports

def _compress(body: bytes | None, headers: dict, compression: str | None):
    if compression and compression != "none":
        headers["Accept-Encoding"] = "gzip, deflate"
        if body:
            body = gzip.compress(body, 1) if compression == "gzip" else zlib.compress(body, 1)
            headers["Content-Encoding"] = compression
    return body, headers


def _decompressed(body: bytes, encoding: str | None) -> bytes:
    if encoding == "gzip":
        return gzip.decompress(body)
    if encoding == "deflate":
        return zlib.decompress(body)
    return body


class ResponseHeaders(dict):
    """A response's headers: names kept lowercased, looked up in any case."""

    def __getitem__(self, name: str) -> str:
        return dict.__getitem__(self, name.lower())

    def __contains__(self, name) -> bool:
        return dict.__contains__(self, name.lower())

    def get(self, name: str, default=None):
        return dict.get(self, name.lower(), default)


class _ProtocolError(Exception):
    """The server's answer is not HTTP/1.x as this client reads it."""


_ONE_WRITE_MAX = 1 << 16  # bodies up to this size leave in the headers' write
_AUTOMATIC = frozenset({"host", "accept-encoding", "content-length"})


def request_head(method: str, path: str, host: str, headers: Mapping[str, str],
                 body_length: int | None) -> bytes:
    """An HTTP/1.1 request's line and headers (what http.client would send)."""
    lines = [f"{method} {path} HTTP/1.1"]
    given = {name.lower() for name in headers} & _AUTOMATIC if headers else ()
    if "host" not in given:
        lines.append(f"Host: {host}")
    if "accept-encoding" not in given:
        lines.append("Accept-Encoding: identity")
    for name, value in headers.items():
        line = f"{name}: {value}"
        if "\r" in line or "\n" in line or ":" in name:
            raise ValueError(f"invalid HTTP header {name!r}: {value!r}")
        lines.append(line)
    if body_length is not None and "content-length" not in given:
        lines.append(f"Content-Length: {body_length}")
    lines.append("\r\n")
    return "\r\n".join(lines).encode("latin-1")


class _Reader:
    """Reads one response off a socket. httptools (llhttp, Node.js's parser) frames it:
    status line, headers, then the body by Content-Length, chunked encoding, or up to the end
    of the connection; interim 1xx answers are skipped."""

    def __init__(self, sock) -> None:
        self.sock = sock
        self.parser = httptools.HttpResponseParser(self)
        self.status = 0
        self.headers = ResponseHeaders()
        self.chunks: list[bytes] = []
        self.headers_done = self.complete = self.extra = self.head = self.keep_alive = False

    # httptools' callbacks
    def on_message_begin(self) -> None:
        if self.complete:  # bytes past the answer: nothing this client asked for
            self.extra = True
        self.headers, self.chunks, self.headers_done = ResponseHeaders(), [], False

    def on_header(self, name: bytes, value: bytes) -> None:
        name, text = name.decode("latin-1").lower(), value.decode("latin-1")
        self.headers[name] = f"{self.headers[name]}, {text}" if name in self.headers else text

    def on_headers_complete(self) -> None:
        self.status = self.parser.get_status_code()
        self.keep_alive = self.parser.should_keep_alive()  # (llhttp forgets it once complete)
        self.headers_done = True
        if self.head:  # its answer has headers only, whatever Content-Length says
            self.complete = True

    def on_body(self, body: bytes) -> None:
        self.chunks.append(body)

    def on_message_complete(self) -> None:
        if self.status >= 200 or self.status == 101:
            self.complete = True  # else an interim 1xx answer: the real one follows

    def response(self, method: str) -> tuple[int, ResponseHeaders, bytes, bool]:
        """(status, headers, body, whether the connection can carry another request)."""
        self.head = method == "HEAD"
        to_the_end = False
        while not self.complete:
            data = self.sock.recv(65536)
            if not data:
                if not (self.headers_done and "content-length" not in self.headers
                        and "transfer-encoding" not in self.headers):
                    raise ConnectionError("the server closed the connection")
                to_the_end = True  # a body that runs to the end of the connection
                break
            try:
                self.parser.feed_data(data)
            except httptools.HttpParserError as e:
                if not self.complete:
                    raise _ProtocolError(str(e)) from None
                self.extra = True
        keep = self.keep_alive and not (to_the_end or self.extra or self.head)
        return self.status, self.headers, b"".join(self.chunks), keep


def _readable(sock: socket.socket) -> bool:
    poller = select.poll()
    poller.register(sock, select.POLLIN)
    return bool(poller.poll(0))


class HttpTransport:
    """Kept-alive connections, one per concurrent caller (thread-safe: a caller takes an
    idle connection or opens one, and puts it back; at most `pool_size` stay idle).

    HTTP/1.1 goes over plain sockets (TLS-wrapped for https): each request leaves in one
    write, request line, headers and body together, and httptools parses the answer.
    http.client wrote headers and body apart and parsed headers with the email package, and
    h11 frames in Python: 45-55 us more CPU per request on a local server
    (bench/client_cost.py)."""

    def __init__(self, host: str, port: int, *, ssl_context=None,
                 compression: str | None = None, pool_size: int = 16) -> None:
        self._host, self._port, self._ssl = host, port, ssl_context
        self._host_header = f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
        self._idle: deque[socket.socket] = deque()
        self._pool_size = pool_size
        self.compression = compression

    def _connection(self, timeout: float | None) -> socket.socket:
        while True:
            try:
                sock = self._idle.pop()
            except IndexError:
                break
            # a kept-alive connection the server has closed reads as ready (EOF): drop it
            # (poll, not select, which refuses descriptors past 1023)
            if not _readable(sock):
                sock.settimeout(timeout)
                return sock
            sock.close()
        try:
            sock = socket.create_connection((self._host, self._port), timeout)
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            if self._ssl is not None:
                sock = self._ssl.wrap_socket(sock, server_hostname=self._host)
        except TimeoutError as e:
            raise InferenceServerError(f"Deadline Exceeded (connecting: {e})",
                                       "DEADLINE_EXCEEDED") from None
        except OSError as e:
            raise InferenceServerError(f"failed to connect: {e}", "UNAVAILABLE") from None
        return sock

    def call(self, call: HttpCall, timeout: float | None, headers: Mapping[str, str]):
        response = self.send(call.method, call.path, call.body,
                             {**call.headers, **headers} if headers else call.headers, timeout)
        if response.status not in call.ok:
            raise error_of(response)
        return call.decode(response)

    def send(self, method: str, path: str, body, headers: Mapping[str, str],
             timeout) -> HttpResponse:
        if self.compression:
            body, headers = _compress(body, dict(headers), self.compression)
        if body is None and method in ("POST", "PUT", "PATCH"):
            body = b""
        head = request_head(method, path, self._host_header, headers,
                            None if body is None else len(body))
        sock = self._connection(timeout)
        try:
            if body and len(body) > _ONE_WRITE_MAX:  # joining would copy it all again
                sock.sendall(head)
                sock.sendall(body)
            else:
                sock.sendall(head + body if body else head)
            status, response_headers, data, keep = _Reader(sock).response(method)
            data = _decompressed(data, response_headers.get("content-encoding"))
        except TimeoutError as e:
            sock.close()
            raise InferenceServerError(f"Deadline Exceeded ({e})", "DEADLINE_EXCEEDED") from None
        except (OSError, EOFError, ValueError, _ProtocolError, zlib.error) as e:
            sock.close()
            raise InferenceServerError(f"failed to reach the server: {e!r}",
                                       "UNAVAILABLE") from None
        if keep and len(self._idle) < self._pool_size:
            self._idle.append(sock)
        else:
            sock.close()
        return HttpResponse(status, response_headers, data)

    def close(self) -> None:
        while self._idle:
            self._idle.pop().close()


class AioHttpTransport:
    """aiohttp's session, opened on first use inside the running event loop."""

    def __init__(self, base_url: str, *, ssl=None, compression: str | None = None,
                 pool_size: int = 100) -> None:
        self._base, self._ssl, self._pool_size = base_url.rstrip("/"), ssl, pool_size
        self.compression = compression
        self._session = None

    def _open(self):
        import aiohttp

        if self._session is None:
            self._session = aiohttp.ClientSession(
                connector=aiohttp.TCPConnector(limit=self._pool_size, ssl=self._ssl))
        return self._session

    async def call(self, call: HttpCall, timeout: float | None, headers: Mapping[str, str]):
        response = await self.send(call.method, call.path, call.body,
                                   {**call.headers, **headers}, timeout)
        if response.status not in call.ok:
            raise error_of(response)
        return call.decode(response)

    async def send(self, method: str, path: str, body, headers: dict, timeout) -> HttpResponse:
        import asyncio

        import aiohttp

        session = self._open()
        body, headers = _compress(body, dict(headers), self.compression)
        try:
            async with session.request(method, self._base + path, data=body, headers=headers,
                                       timeout=aiohttp.ClientTimeout(total=timeout)) as r:
                return HttpResponse(r.status, r.headers, await r.read())
        except asyncio.TimeoutError:
            raise InferenceServerError("Deadline Exceeded", "DEADLINE_EXCEEDED") from None
        except aiohttp.ClientError as e:
            raise InferenceServerError(f"failed to reach the server: {e}", "UNAVAILABLE") from None

    async def close(self) -> None:
        if self._session is not None:
            await self._session.close()
            self._session = None
