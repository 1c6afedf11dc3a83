"""One TorchServe request as a worker sees it, and the response its handler makes.

The inference API builds a TorchServeRequest and hands it to the core with the request
(RequestInfo.parameters[REQUEST_KEY]); the backend gives its `parameters` to the handler as
that request's entry of the batch list and writes the response back into it.
"""

from __future__ import annotations

import io
import json
import struct
from typing import Callable

from pyserve.errors import ErrorCode, ServerError

REQUEST_KEY = "torchserve.request"
# A request from the native inference API (pyserve._http_server) carries these parameters: the
# frontend's token for it and its headers as JSON; its body is the one element of `data`, and
# its answer goes back as a frame (`frame`), the one element of `output`.
NATIVE_TOKEN = "torchserve.token"
NATIVE_HEADERS = "torchserve.headers"
# A multipart/form-data body's parts, split natively: [[name, content type, offset, size], ...].
NATIVE_PARTS = "torchserve.parts"
# The native inference API while it runs (its `push` and `started`), for the backend.
native_frontend = None

# Chunk callback for streamed responses: (body, status, phrase, headers), on a worker thread.
ChunkCallback = Callable[[bytes, int, str, dict], None]


class TorchServeError(ServerError):
    """A failed prediction with TorchServe's HTTP status and message (the error body's type is
    InternalServerException, as TorchServe's frontend writes it for worker errors)."""

    def __init__(self, message: str, status: int) -> None:
        super().__init__(message, ErrorCode.INTERNAL if status >= 500 else ErrorCode.INVALID_ARG)
        self.status = status


class TorchServeRequest:
    def __init__(self, parameters: dict, headers: dict, request_id: str,
                 on_chunk: ChunkCallback | None = None, tensors: bool = False) -> None:
        self.parameters = parameters  # what the handler sees: {"body": ...} or form fields
        self.headers = headers  # lower-case request headers, plus per-parameter content types
        self.request_id = request_id
        self.on_chunk = on_chunk
        self.status = 200
        self.phrase = ""
        self.response_headers: dict[str, str] = {}
        self.body = b""
        self.answer = None  # the handler's own answer, before encoding
        # A KServe v2 request: its response is the config's outputs, not a body.
        self.tensors = tensors
        self.started_ns = 0  # time.perf_counter_ns() when its batch started (queue latency)
        self.token: int | None = None  # the native inference API's, when it came from there

    @property
    def kind(self) -> str:
        if self.headers.get("describe") == "True":
            return "describe"
        if self.headers.get("explain") == "True":
            return "explain"
        return "predict"

    @property
    def content_type(self) -> str:
        return self.response_headers.get("content-type", "")


def native_request(body: bytes, request_id: str, token: int, headers_json: str,
                   parts_json: str | None = None) -> TorchServeRequest:
    """A request of the native inference API as the inference API would have made it."""
    headers = json.loads(headers_json)
    if parts_json:  # a form's parts, each an entry of its own (api._parse_body's)
        parameters = {}
        for name, part_type, offset, size in json.loads(parts_json):
            parameters[name] = decode_parameter(body[offset:offset + size], part_type)
            headers[name] = {"content-type": part_type}
    else:
        mime = headers.get("content-type", "").split(";")[0].strip().lower()
        parameters = {"body": decode_parameter(body, mime)}
        headers["body"] = {"content-type": mime}
    headers.update(explain="False", url_path="")
    frontend = native_frontend
    on_chunk = None
    if frontend is not None:
        def on_chunk(chunk: bytes, status: int, phrase: str, chunk_headers: dict) -> None:
            frontend.push(token, frame(status, phrase, chunk_headers, chunk))
    request = TorchServeRequest(parameters, headers, request_id, on_chunk)
    request.token = token
    return request


def frame(status: int, phrase: str, headers: dict, body: bytes, started_ns: int = 0,
          error: bool = False) -> bytes:
    """An answer for the native inference API (csrc/http/predictions.h): u32 length of the
    meta JSON, the meta JSON, the body."""
    meta = json.dumps({"status": status, "phrase": phrase, "headers": headers,
                       "started_ns": started_ns, "error": error}).encode("utf-8")
    return struct.pack("<I", len(meta)) + meta + body


def answer_frame(request: TorchServeRequest, error: TorchServeError | None) -> bytes:
    """The frame of a native request's final answer, or of its batch's failure."""
    if error is not None:
        body = json.dumps({"code": error.status, "type": "InternalServerException",
                           "message": error.message}, indent=2).encode("utf-8")
        return frame(error.status, "", {"content-type": "application/json; charset=utf-8"},
                     body, error=True)
    return frame(request.status, request.phrase, request.response_headers, request.body,
                 request.started_ns)


def decode_parameter(value: bytes, content_type: str):
    """A request part as TorchServe's worker decodes it: JSON for application/json, text for
    text/*, bytes otherwise (undecodable JSON or text stays bytes)."""
    mime = content_type.split(";")[0].strip().lower()
    if mime == "application/json":
        try:
            return json.loads(value.decode("utf-8"))
        except (ValueError, UnicodeDecodeError):
            return value
    if mime.startswith("text"):
        try:
            return value.decode("utf-8")
        except UnicodeDecodeError:
            return value
    return value


def encode_output(value) -> bytes:
    """One entry of a handler's returned list as TorchServe's worker sends it back: bytes as
    they are, str as UTF-8, a torch.Tensor through torch.save, anything else as JSON."""
    if isinstance(value, (bytes, bytearray)):
        return bytes(value)
    if isinstance(value, str):
        return value.encode("utf-8")
    if type(value).__module__.startswith("torch") and type(value).__name__ == "Tensor":
        import torch

        buffer = io.BytesIO()
        torch.save(value, buffer)
        return buffer.getvalue()
    try:
        return json.dumps(value, indent=2).encode("utf-8")
    except TypeError:
        raise TorchServeError("Unsupported model output data type.", 503) from None


def parse_predict_message(message: bytes) -> list[tuple[str, str, int, str, dict, bytes]]:
    """TorchServe's worker-to-frontend predict response (what
    ts.protocol.otf_message_handler.create_predict_response writes, and what
    send_intermediate_predict_response sends through context.cl_socket): for each request,
    (request id, content type, status, phrase, headers, body)."""
    view = memoryview(message)
    offset = 0

    def integer() -> int:
        nonlocal offset
        (value,) = struct.unpack_from("!i", view, offset)
        offset += 4
        return value

    def chunk(length: int) -> bytes:
        nonlocal offset
        data = bytes(view[offset:offset + length])
        offset += length
        return data

    integer()  # the batch's code
    chunk(integer())  # the batch's message
    responses = []
    while offset < len(view):
        length = integer()
        if length == -1:
            break
        request_id = chunk(length).decode("utf-8")
        content_type = chunk(integer()).decode("utf-8")
        status = integer()
        phrase = chunk(integer()).decode("utf-8")
        headers = {}
        for _ in range(integer()):
            key = chunk(integer()).decode("utf-8")
            headers[key] = chunk(integer()).decode("utf-8")
        body = chunk(integer())
        responses.append((request_id, content_type, status, phrase, headers, body))
    return responses
