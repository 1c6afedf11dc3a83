"""TorchServe's inference API on the native HTTP frontend (pyserve._http_server): `POST` (or
`PUT`) `/predictions/{model}[/{version}]` is served in native code, from the connection to the
core's batcher and back (the handler still runs once per batch; multipart/form-data bodies are
split there into the handler's entries); every other request, and any prediction the native
path leaves (url-encoded forms, unusual multipart bodies, a missing or wrong token, a model
restarting its workers, an archive with its own config.pbtxt), is relayed to the aiohttp
inference app on a loopback port, which answers it as before.
"""

from __future__ import annotations

import asyncio

from pyserve import _core
from pyserve.frontends.http_native import UNAVAILABLE_REASON, available  # noqa: F401
from pyserve.torchserve import request as ts_request
from pyserve.torchserve.api import cors_headers


class NativeInferenceApi:
    def __init__(self, apis, host: str, port: int, shell_port: int, threads: int,
                 tls: dict | None = None) -> None:
        from pyserve import _http_server

        options = apis.options
        self._apis = apis
        self._loop = asyncio.get_running_loop()
        # "NAME" (the default version) and "NAME/VERSION" -> the version's core model.
        self.table = _core.ModelTable()
        self._keys: dict[str, set[str]] = {}
        # The table serves as the KServe v2 one too: a predictions server routes nothing there.
        self._server = _http_server.Server(
            self.table, host, port, shell_port, threads, options.max_request_size,
            predictions_table=self.table, max_response_bytes=options.max_response_size,
            response_headers=list(cors_headers(options).items()), on_timeout=self._timed_out,
            tls=tls)
        self.port = self._server.port
        ts_request.native_frontend = self._server

    def publish(self, name: str, versions: dict) -> None:
        """The versions of `name` the native path serves now: {key: (core model, response
        timeout s)}; keys left out are served by the shell."""
        for key, (model, timeout) in versions.items():
            self._server.set_response_timeout(key, int(timeout))
            self.table.publish(key, [model])
        for key in self._keys.get(name, set()) - versions.keys():
            self.table.publish(key, [])
        self._keys[name] = set(versions)

    def set_healthy(self, healthy: bool) -> None:
        """What GET /ping answers natively (TorchServeApis' ping rule, as the store finds it)."""
        self._server.set_healthy(healthy)

    def set_inference_key(self, key: str, expires_unix_s: int) -> None:
        self._server.set_inference_key(key, expires_unix_s)

    def counters(self) -> list[tuple[str, int, int, int]]:
        """(key, requests, latency µs, queue µs) of the predictions served natively."""
        return self._server.prediction_counters()

    def status_classes(self) -> tuple[int, int, int]:
        """The answers the native path gave, by status class: 2XX, 4XX, 5XX."""
        return self._server.status_classes()

    def _timed_out(self, key: str) -> None:
        # A connection's thread, with the GIL: the restart is the loop's work.
        self._loop.call_soon_threadsafe(self._apis.worker_timed_out, *_split(key))

    async def stop(self) -> None:
        """Stop accepting; requests in progress get their answers first."""
        await asyncio.to_thread(self._server.stop)
        if ts_request.native_frontend is self._server:
            ts_request.native_frontend = None


def _split(key: str) -> tuple[str, str | None]:
    name, _, version = key.partition("/")
    return name, version or None
