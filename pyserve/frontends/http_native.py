"""The native HTTP frontend: pyserve._http_server (Boost.Beast on event-loop threads) serves
KServe v2 inference requests and the health probes in native code and relays every other request (and inference requests it leaves to
the shell, whose refusals keep Triton's texts) to the aiohttp frontend, which then listens on
a loopback port only. One port, one URL for clients.
"""

from __future__ import annotations

import asyncio

from pyserve import _core
from pyserve.lifecycle import ModelManager
from pyserve.options import LISTEN_BACKLOG

try:
    from pyserve import _http_server
except ImportError as e:  # built without Boost, or its library is missing here
    _http_server = None
    UNAVAILABLE_REASON = str(e)
else:
    UNAVAILABLE_REASON = ""


def available() -> bool:
    return _http_server is not None


class NativeHttpServer:
    def __init__(self, manager: ModelManager, host: str, port: int, shell_port: int,
                 threads: int, max_input_size: int,
                 shared_memory: _core.SharedMemoryRegistry | None = None,
                 reuse_port: bool = False,
                 restricted_groups: dict[str, tuple[str, str]] | None = None,
                 header_pattern: str = "", tls: dict | None = None,
                 backlog: int = LISTEN_BACKLOG) -> None:
        # `shared_memory` must be the registry of the shell frontend it relays to, which checks
        # the restricted groups of the routes it answers; the native server checks its own.
        # `tls`: HTTPS, as _http_server.Server takes it (PEM text); the shell stays plain HTTP
        # on its loopback port.
        own = {group: required for group, required in (restricted_groups or {}).items()
               if group in ("health", "inference")}
        self._server = _http_server.Server(manager.table, host, port, shell_port, threads,
                                           max_input_size, shared_memory, reuse_port=reuse_port,
                                           restricted=own, header_forward_pattern=header_pattern,
                                           tls=tls, backlog=backlog)
        self.port = self._server.port

    async def stop(self) -> None:
        """Stop accepting; requests in progress get their answers first."""
        await asyncio.to_thread(self._server.stop)
