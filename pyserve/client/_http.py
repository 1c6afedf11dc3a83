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


_MAX_HEAD = 1 << 16  # bytes of status line and headers
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
    """Reads one response off a socket: status line, headers, then the body as the headers
    frame it (Content-Length, chunked, or up to the end of the connection)."""

    def __init__(self, sock) -> None:
        self.sock = sock
        self.buffer = bytearray()

    def _more(self) -> None:
        chunk = self.sock.recv(65536)
        if not chunk:
            raise ConnectionError("the server closed the connection")
        self.buffer += chunk

    def _take(self, count: int) -> bytes:
        while len(self.buffer) < count:
            self._more()
        data = bytes(self.buffer[:count])
        del self.buffer[:count]
        return data

    def _line(self) -> bytes:
        while (end := self.buffer.find(b"\r\n")) < 0:
            if len(self.buffer) > _MAX_HEAD:
                raise _ProtocolError("line too long")
            self._more()
        line = bytes(self.buffer[:end])
        del self.buffer[:end + 2]
        return line

    def _body(self, length: int) -> bytes:
        if len(self.buffer) >= length:  # the usual: it came with the headers
            return self._take(length)
        body = bytearray(length)  # receive straight into it, not through the buffer
        view = memoryview(body)
        got = len(self.buffer)
        view[:got] = self.buffer
        self.buffer.clear()
        while got < length:
            count = self.sock.recv_into(view[got:])
            if not count:
                raise ConnectionError("the server closed the connection inside a body")
            got += count
        return bytes(body)

    def response(self, method: str) -> tuple[int, ResponseHeaders, bytes, bool]:
        """(status, headers, body, whether the connection can carry another request)."""
        while True:
            while (end := self.buffer.find(b"\r\n\r\n")) < 0:
                if len(self.buffer) > _MAX_HEAD:
                    raise _ProtocolError("response headers too long")
                self._more()
            head = self.buffer[:end].decode("latin-1").split("\r\n")
            del self.buffer[:end + 4]
            version, _, rest = head[0].partition(" ")
            code = rest[:3]
            if not version.startswith("HTTP/1.") or not code.isdigit():
                raise _ProtocolError(f"bad status line {head[0]!r}")
            status = int(code)
            if status >= 200 or status == 101:
                break  # else an interim 1xx answer: the real one follows
        headers = ResponseHeaders()
        for line in head[1:]:
            name, colon, value = line.partition(":")
            if not colon:
                raise _ProtocolError(f"bad header line {line!r}")
            name, value = name.strip().lower(), value.strip()
            headers[name] = f"{headers[name]}, {value}" if name in headers else value
        connection = headers.get("connection", "").lower()
        keep = ("close" not in connection if version == "HTTP/1.1"
                else "keep-alive" in connection)
        if method == "HEAD" or status in (204, 304):
            body = b""
        elif "chunked" in headers.get("transfer-encoding", "").lower():
            body = self._chunked()
        elif "content-length" in headers:
            body = self._body(int(headers["content-length"]))
        else:  # the body runs to the end of the connection
            keep = False
            try:
                while True:
                    self._more()
            except ConnectionError:
                body = bytes(self.buffer)
                self.buffer.clear()
        return status, headers, body, keep and not self.buffer

    def _chunked(self) -> bytes:
        body = bytearray()
        while size := int(self._line().split(b";", 1)[0], 16):
            body += self._take(size)
            if self._take(2) != b"\r\n":
                raise _ProtocolError("chunk without its CRLF")
        while self._line():  # trailers, up to the empty line
            pass
        return bytes(body)


class HttpTransport:
    """Kept-alive connections, one per concurrent caller (thread-safe: a caller takes an
    idle connection or opens one, and puts it back; at most `pool_size` stay idle).

    HTTP/1.1 is spoken here over plain sockets (TLS-wrapped for https): each request
    leaves in one write, request line, headers and body together, and the response is
    parsed in a few string operations. http.client wrote headers and body apart and parsed
    headers with the email package: 45 us more CPU per request on a local server (and
    urllib3 2 more still; bench/client_cost.py)."""

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
            if not select.select([sock], [], [], 0)[0]:
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
