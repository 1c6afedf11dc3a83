"""Client and AsyncClient: one API over gRPC and HTTP.

Every unary method is written once, in `_Api`: it builds a protocol-specific call and hands it
to `_execute`, which is a plain method on `Client` and a coroutine on `AsyncClient`. So
`client.infer(...)` returns the result, and `await aclient.infer(...)` does the same.
"""

from __future__ import annotations

import asyncio
import random
import ssl as _ssl
import time
from typing import Any, AsyncIterator, Iterable, Iterator, Mapping

import numpy as np

from pyserve.client._grpc import (AioGrpcTransport, GrpcProtocol, GrpcTransport, config_json,
                                  decode_infer as grpc_decode, serialize_infer as grpc_serialize)
from pyserve.client._http import AioHttpTransport, HttpProtocol, HttpTransport
from pyserve.client._request import InferRequest, ShmRef, build_request
from pyserve.client._shm import RegionContext, SharedMemoryRegion
from pyserve.client._types import (IndexEntry, InferResult, ModelMetadata, ModelStatistics,
                                   RegionStatus, Request, ServerMetadata)
from pyserve.client.errors import InferenceServerError

_DEFAULT_PORT = {"grpc": 8001, "http": 8000}
_SCHEMES = {"grpc": ("grpc", False), "grpcs": ("grpc", True),
            "http": ("http", False), "https": ("http", True)}


def parse_url(url: str, protocol: str | None = None) -> tuple[str, bool, str, int]:
    """"127.0.0.1:8001" -> ("grpc", False, "127.0.0.1", 8001); "https://h" -> ("http", True, "h", 8000)."""
    scheme, sep, rest = url.partition("://")
    if not sep:
        scheme, rest = (protocol or "grpc"), url
    try:
        kind, tls = _SCHEMES[scheme.lower()]
    except KeyError:
        raise ValueError(f"unknown scheme '{scheme}' in '{url}' (grpc, grpcs, http, https)") from None
    if protocol and protocol != kind:
        raise ValueError(f"url '{url}' says {kind} but protocol='{protocol}'")
    rest = rest.split("/", 1)[0]
    host, colon, port = rest.rpartition(":")
    if not colon or not port.isdigit():
        host, port = rest, str(_DEFAULT_PORT[kind])
    return kind, tls, host.strip("[]") if host.startswith("[") else host, int(port)


def _ssl_context(tls_files) -> _ssl.SSLContext:
    """HTTPS: the system's roots, or the given CA (file or PEM bytes); a client certificate
    (chain file, key file) for mutual TLS."""
    root, key, chain = tls_files
    context = _ssl.create_default_context(cadata=_read(root).decode() if root is not None
                                          else None)
    if key is not None:
        context.load_cert_chain(chain, key)
    return context


def _read(path_or_bytes) -> bytes | None:
    if path_or_bytes is None or isinstance(path_or_bytes, bytes):
        return path_or_bytes
    with open(path_or_bytes, "rb") as f:
        return f.read()


class _Api:
    """The calls both clients share. Each takes keyword-only `headers` (extra headers, or gRPC
    metadata, for this call) and `client_timeout` (seconds; the deadline of this call)."""

    def __init__(self, url: str, *, protocol: str | None = None,
                 headers: Mapping[str, str] | None = None, client_timeout: float | None = None,
                 compression: str | None = None, retries: int = 0, retry_backoff: float = 0.05,
                 retry_max_backoff: float = 2.0, ssl_root_certificates=None,
                 ssl_private_key=None, ssl_certificate_chain=None, keepalive_ms: int = 30000,
                 pool_size: int = 16, channel_args: Iterable = ()) -> None:
        """`url`: "host:port" (gRPC), "grpc://", "grpcs://" (TLS), "http://" or "https://".
        `compression`: None, "gzip" or "deflate" (requests; responses as the server sends).
        `retries`: how many times a call that failed with UNAVAILABLE is tried again, after
        `retry_backoff` * 2**attempt seconds (with jitter, at most `retry_max_backoff`).
        TLS: `ssl_root_certificates` (CA file or PEM bytes) and for mutual TLS
        `ssl_private_key` and `ssl_certificate_chain`."""
        kind, tls, host, port = parse_url(url, protocol)
        if compression not in (None, "none", "gzip", "deflate"):
            raise ValueError(f"compression must be None, 'gzip' or 'deflate', not {compression!r}")
        self.url, self.protocol = url, kind
        self._headers = dict(headers or {})
        self._client_timeout = client_timeout
        self._retries, self._backoff, self._max_backoff = retries, retry_backoff, retry_max_backoff
        self._regions: list[SharedMemoryRegion] = []
        self._protocol = GrpcProtocol if kind == "grpc" else HttpProtocol
        tls_files = (ssl_root_certificates, ssl_private_key, ssl_certificate_chain)
        self._transport = self._make_transport(kind, tls, host, port, compression, keepalive_ms,
                                               pool_size, channel_args, tls_files)
        self._metadata_cache = self._merge(None)

    # -- set-up -------------------------------------------------------------------------------

    def _merge(self, headers):
        merged = {**self._headers, **(headers or {})}
        if self.protocol == "grpc":
            return tuple((k.lower(), str(v)) for k, v in merged.items()) or None
        return merged

    def _call_options(self, headers, client_timeout):
        metadata = self._metadata_cache if headers is None else self._merge(headers)
        return metadata, self._client_timeout if client_timeout is None else client_timeout

    def _delay(self, attempt: int) -> float:
        return min(self._max_backoff, self._backoff * 2**attempt) * (0.5 + random.random() / 2)

    def _shm_lookup(self, array) -> ShmRef | None:
        for region in self._regions:
            found = region.locate(array)
            if found is not None:
                return (region.name, *found)
        return None

    def _request(self, model, inputs, **kwargs) -> InferRequest:
        return build_request(model, inputs, shm_lookup=self._shm_lookup if self._regions else None,
                             **kwargs)

    # -- health and metadata ------------------------------------------------------------------

    def is_server_live(self, *, headers=None, client_timeout=None) -> bool:
        return self._execute(self._protocol.live(), headers, client_timeout)

    def is_server_ready(self, *, headers=None, client_timeout=None) -> bool:
        return self._execute(self._protocol.ready(), headers, client_timeout)

    def is_model_ready(self, model: str, version: str | int = "", *, headers=None,
                       client_timeout=None) -> bool:
        return self._execute(self._protocol.model_ready(model, str(version)), headers,
                             client_timeout)

    def server_metadata(self, *, headers=None, client_timeout=None) -> ServerMetadata:
        return self._execute(self._protocol.server_metadata(), headers, client_timeout)

    def model_metadata(self, model: str, version: str | int = "", *, headers=None,
                       client_timeout=None) -> ModelMetadata:
        return self._execute(self._protocol.model_metadata(model, str(version)), headers,
                             client_timeout)

    def model_config(self, model: str, version: str | int = "", *, headers=None,
                     client_timeout=None):
        """The model's configuration as an `inference.ModelConfig` protobuf message."""
        return self._execute(self._protocol.model_config(model, str(version)), headers,
                             client_timeout)

    def statistics(self, model: str = "", version: str | int = "", *, headers=None,
                   client_timeout=None) -> list[ModelStatistics]:
        """Cumulative statistics of one model ("" = every model), one entry per version."""
        return self._execute(self._protocol.statistics(model, str(version)), headers,
                             client_timeout)

    # -- model repository ---------------------------------------------------------------------

    def repository_index(self, ready: bool = False, *, headers=None,
                         client_timeout=None) -> list[IndexEntry]:
        return self._execute(self._protocol.repository_index(ready), headers, client_timeout)

    def load_model(self, model: str, config=None, files: Mapping[str, bytes] | None = None, *,
                   headers=None, client_timeout=None) -> None:
        """Load (or reload) a model; `config` overrides its config.pbtxt (a dict in Triton's
        JSON form, a JSON string, or a ModelConfig message); `files` maps "<version>/<name>"
        to file contents that replace the model's directory."""
        return self._execute(self._protocol.load(model, config_json(config), files), headers,
                             client_timeout)

    def unload_model(self, model: str, unload_dependents: bool = False, *, headers=None,
                     client_timeout=None) -> None:
        return self._execute(self._protocol.unload(model, unload_dependents), headers,
                             client_timeout)

    # -- trace and log settings ---------------------------------------------------------------

    def get_trace_settings(self, model: str = "", *, headers=None, client_timeout=None) -> dict:
        return self._execute(self._protocol.trace_settings(model, None), headers, client_timeout)

    def update_trace_settings(self, settings: Mapping[str, Any], model: str = "", *,
                              headers=None, client_timeout=None) -> dict:
        """Change trace settings (None as a value resets it to the global one)."""
        return self._execute(self._protocol.trace_settings(model, settings), headers,
                             client_timeout)

    def get_log_settings(self, *, headers=None, client_timeout=None) -> dict:
        return self._execute(self._protocol.log_settings(None), headers, client_timeout)

    def update_log_settings(self, settings: Mapping[str, Any], *, headers=None,
                            client_timeout=None) -> dict:
        return self._execute(self._protocol.log_settings(settings), headers, client_timeout)

    # -- system shared memory -----------------------------------------------------------------

    def register_system_shared_memory(self, name: str, key: str, byte_size: int,
                                      offset: int = 0, *, headers=None, client_timeout=None):
        return self._execute(self._protocol.shm_register(name, key, byte_size, offset), headers,
                             client_timeout)

    def unregister_system_shared_memory(self, name: str = "", *, headers=None,
                                        client_timeout=None):
        return self._execute(self._protocol.shm_unregister(name), headers, client_timeout)

    def system_shared_memory_status(self, name: str = "", *, headers=None,
                                    client_timeout=None) -> list[RegionStatus]:
        return self._execute(self._protocol.shm_status(name), headers, client_timeout)

    def shared_memory(self, name: str, byte_size: int, key: str | None = None) -> RegionContext:
        """`with client.shared_memory("inputs", 1 << 20) as region:` creates a POSIX shared
        memory region, registers it with the server, and unregisters and unlinks it on exit.
        Views from `region.ndarray(shape, dtype)` passed as inputs (or as `outputs={name:
        view}`) travel as references to the region, never as bytes."""
        return RegionContext(self, name, byte_size, key)

    # -- inference ----------------------------------------------------------------------------

    def infer(self, model: str, inputs: Mapping[str, Any], *, outputs=None,
              version: str | int = "", request_id: str = "",
              parameters: Mapping[str, Any] | None = None, sequence_id: int | str = 0,
              sequence_start: bool = False, sequence_end: bool = False, priority: int = 0,
              timeout: int = 0, datatypes: Mapping[str, str] | None = None, headers=None,
              client_timeout: float | None = None) -> InferResult:
        """Run one inference; returns {output name: numpy array} (an InferResult).

        `inputs`: name -> numpy array (or torch tensor); dtypes give the wire types, object
        arrays of bytes/str are BYTES, ml_dtypes.bfloat16 is BF16 (or force types with
        `datatypes={"X": "BF16"}`). `outputs`: names to return (default all), or a dict
        name -> shared memory view to write into. `timeout` is the server-side request
        timeout in microseconds; `client_timeout` the call's deadline in seconds."""
        # build_request directly, not through _request's **kwargs (repacking them costs)
        request = build_request(model, inputs, outputs=outputs, version=version,
                                request_id=request_id, parameters=parameters,
                                sequence_id=sequence_id, sequence_start=sequence_start,
                                sequence_end=sequence_end, priority=priority, timeout=timeout,
                                datatypes=datatypes,
                                shm_lookup=self._shm_lookup if self._regions else None)
        return self._execute(self._protocol.infer(request), headers, client_timeout)

    def _stream_requests(self, model: str, version, items: Iterable,
                         sequence_id) -> Iterator[InferRequest]:
        """Stream items as InferRequests; with `sequence_id`, the first starts the sequence
        and the last ends it."""
        previous = None
        for item in items:
            if previous is not None:
                yield self._stream_request(model, version, sequence_id, *previous, last=False)
            previous = (item, previous is None)
        if previous is not None:
            yield self._stream_request(model, version, sequence_id, *previous, last=True)

    def _stream_request(self, model, version, stream_sequence_id, item, first: bool,
                        last: bool) -> InferRequest:
        if not isinstance(item, Request):
            item = Request(inputs=item)
        sequence_id = item.sequence_id or stream_sequence_id
        start, end = item.sequence_start, item.sequence_end
        if sequence_id and not item.sequence_id:
            start, end = first, last
        return self._request(model, item.inputs, outputs=item.outputs, version=version,
                             request_id=item.request_id, parameters=item.parameters,
                             sequence_id=sequence_id, sequence_start=start, sequence_end=end,
                             priority=item.priority, timeout=item.timeout)


class Client(_Api):
    """A synchronous client; thread-safe (one channel or connection pool for all threads).

    >>> client = Client("127.0.0.1:8001")            # gRPC; "http://127.0.0.1:8000" for HTTP
    >>> client.infer("simple", {"INPUT0": a, "INPUT1": b})["OUTPUT0"]
    """

    def _make_transport(self, kind, tls, host, port, compression, keepalive_ms, pool_size,
                        channel_args, tls_files):
        root, key, chain = (_read(f) for f in tls_files)
        if kind == "grpc":
            credentials = None
            if tls:
                import grpc
                credentials = grpc.ssl_channel_credentials(root, key, chain)
            return GrpcTransport(f"{host}:{port}", credentials=credentials,
                                 compression=compression, keepalive_ms=keepalive_ms,
                                 channel_args=channel_args)
        return HttpTransport(host, port, ssl_context=_ssl_context(tls_files) if tls else None,
                             compression=compression, pool_size=pool_size)

    def _execute(self, call, headers, client_timeout):
        metadata, timeout = self._call_options(headers, client_timeout)
        attempt = 0
        while True:
            try:
                return self._transport.call(call, timeout, metadata)
            except InferenceServerError as e:
                if e.status != "UNAVAILABLE" or attempt >= self._retries:
                    raise
            time.sleep(self._delay(attempt))
            attempt += 1

    def stream(self, model: str, requests: Iterable, *, version: str | int = "",
               sequence_id: int | str = 0, raise_errors: bool = True, headers=None,
               client_timeout: float | None = None) -> Iterator[InferResult]:
        """Send `requests` (dicts of inputs, or `Request`s) on one ModelStreamInfer stream and
        iterate over the responses as they arrive (several per request for decoupled
        models; `result.final` marks the last). With `sequence_id`, the requests form one
        sequence: the first starts it, the last ends it. A response carrying an error
        raises InferenceServerError, or is yielded as one with `raise_errors=False`.
        Over HTTP the requests are sent one after the other (no decoupled models)."""
        metadata, timeout = self._call_options(headers, client_timeout)
        items = self._stream_requests(model, str(version), requests, sequence_id)
        if self.protocol == "http":
            yield from self._http_stream(items, headers, client_timeout, raise_errors)
            return
        shm_outputs: dict[str, np.ndarray] = {}

        def messages():
            for request in items:
                shm_outputs.update(request.shm_outputs)
                yield grpc_serialize(request)

        for response in self._transport.stream(messages(), timeout, metadata):
            if response.error_message:
                error = InferenceServerError(response.error_message, "UNKNOWN")
                if raise_errors:
                    raise error
                yield error
                continue
            yield grpc_decode(response.infer_response, shm_outputs)

    def _http_stream(self, items, headers, client_timeout, raise_errors):
        for request in items:
            try:
                yield self._execute(self._protocol.infer(request), headers, client_timeout)
            except InferenceServerError as error:
                if raise_errors:
                    raise
                yield error

    def close(self) -> None:
        for region in list(self._regions):
            region.close()
        self._regions.clear()
        self._transport.close()

    def __enter__(self) -> "Client":
        return self

    def __exit__(self, *exc) -> None:
        self.close()


class AsyncClient(_Api):
    """The asyncio client: the same methods as Client, as coroutines; `stream()` is an async
    iterator. Open and use it inside one event loop (`async with AsyncClient(url) as c:`)."""

    def _make_transport(self, kind, tls, host, port, compression, keepalive_ms, pool_size,
                        channel_args, tls_files):
        root, key, chain = (_read(f) for f in tls_files)
        if kind == "grpc":
            credentials = None
            if tls:
                import grpc
                credentials = grpc.ssl_channel_credentials(root, key, chain)
            return AioGrpcTransport(f"{host}:{port}", credentials=credentials,
                                    compression=compression, keepalive_ms=keepalive_ms,
                                    channel_args=channel_args)
        scheme = "https" if tls else "http"
        return AioHttpTransport(f"{scheme}://{host}:{port}",
                                ssl=_ssl_context(tls_files) if tls else None,
                                compression=compression, pool_size=max(pool_size, 100))

    async def _execute(self, call, headers, client_timeout):
        metadata, timeout = self._call_options(headers, client_timeout)
        attempt = 0
        while True:
            try:
                return await self._transport.call(call, timeout, metadata)
            except InferenceServerError as e:
                if e.status != "UNAVAILABLE" or attempt >= self._retries:
                    raise
            await asyncio.sleep(self._delay(attempt))
            attempt += 1

    async def stream(self, model: str, requests, *, version: str | int = "",
                     sequence_id: int | str = 0, raise_errors: bool = True, headers=None,
                     client_timeout: float | None = None) -> AsyncIterator[InferResult]:
        """As Client.stream; `requests` may be an iterable or an async iterable."""
        metadata, timeout = self._call_options(headers, client_timeout)
        if hasattr(requests, "__aiter__"):
            requests = [item async for item in requests]  # sequences need to know the last
        items = self._stream_requests(model, str(version), requests, sequence_id)
        if self.protocol == "http":
            for request in items:
                try:
                    yield await self._execute(self._protocol.infer(request), headers,
                                              client_timeout)
                except InferenceServerError as error:
                    if raise_errors:
                        raise
                    yield error
            return
        shm_outputs: dict[str, np.ndarray] = {}

        async def messages():
            for request in items:
                shm_outputs.update(request.shm_outputs)
                yield grpc_serialize(request)

        async for response in self._transport.stream(messages(), timeout, metadata):
            if response.error_message:
                error = InferenceServerError(response.error_message, "UNKNOWN")
                if raise_errors:
                    raise error
                yield error
                continue
            yield grpc_decode(response.infer_response, shm_outputs)

    async def close(self) -> None:
        for region in list(self._regions):
            region.close()
        self._regions.clear()
        await self._transport.close()

    async def __aenter__(self) -> "AsyncClient":
        return self

    async def __aexit__(self, *exc) -> None:
        await self.close()
