"""The native gRPC frontend: pyserve._grpc_server (gRPC C++) serves ModelInfer and
ModelStreamInfer in native code and hands every other RPC here, as serialized bytes, to the
same servicers the Python frontend uses, on the event loop. One port, one URL for clients.

Inference requests the core's model table cannot resolve (an unknown model or version, a
version that is loading) come here too, so that their refusals keep the shell's texts.
"""

from __future__ import annotations

import asyncio
import logging
import os
from typing import Callable

import grpc
from google.protobuf.message_factory import GetMessageClass

from pyserve import _core
from pyserve.errors import ServerError
from pyserve.options import COMPRESSION_LEVELS
from pyserve.frontends.grpc import GRPC_STATUS, HealthServicer, InferenceServicer
from pyserve.lifecycle import ModelManager
from pyserve.protocol import HEALTH_SERVICE, INFERENCE_SERVICE

log = logging.getLogger("pyserve")

try:
    from pyserve import _grpc_server
except ImportError as e:  # built without gRPC C++, or its libraries are missing here
    _grpc_server = None
    UNAVAILABLE_REASON = str(e)
else:
    UNAVAILABLE_REASON = ""

_INT32_MAX = 2**31 - 1


def available() -> bool:
    return _grpc_server is not None


class _Abort(Exception):
    def __init__(self, code: grpc.StatusCode, details: str) -> None:
        super().__init__(details)
        self.code, self.details = code, details


class _Context:
    """What the servicers use of grpc.aio's ServicerContext."""

    async def abort(self, code: grpc.StatusCode, details: str = "") -> None:
        raise _Abort(code, details)

    def invocation_metadata(self) -> tuple:  # the native server forwards headers itself
        return ()


def _completion_queue_threads() -> int:
    """Half the cores, at most 2: a second thread polling the completion queues on a machine
    of 2 cores wakes and hands over more than it serves (10-13% fewer requests per second)."""
    return max(1, min(2, (os.cpu_count() or 1) // 2))


class NativeGrpcServer:
    """Same interface as grpc.aio.Server where pyserve's Server uses it: start, stop, port."""

    def __init__(self, manager: ModelManager, address: str, threads: int | None = None,
                 max_message_size: int = _INT32_MAX, channel_args: dict[str, int] | None = None,
                 tls: dict | None = None,
                 shared_memory: _core.SharedMemoryRegistry | None = None,
                 restricted_methods: dict[str, tuple[str, str]] | None = None,
                 header_pattern: str = "", infer_compression: str = "none") -> None:
        self._loop = asyncio.get_running_loop()
        self._methods: dict[str, tuple[Callable, Callable, Callable]] = {}
        if shared_memory is None:
            shared_memory = _core.SharedMemoryRegistry()
        for service, servicer in ((INFERENCE_SERVICE, InferenceServicer(manager, shared_memory)),
                                  (HEALTH_SERVICE, HealthServicer(manager))):
            for method in service.methods:
                behaviour = getattr(servicer, method.name, None)
                if behaviour is None or method.client_streaming or method.server_streaming:
                    continue  # the stream is native; the rest are unimplemented
                raw = method.name == "ModelInfer"
                self._methods[f"/{service.full_name}/{method.name}"] = (
                    behaviour,
                    (lambda b: b) if raw else GetMessageClass(method.input_type).FromString,
                    (lambda m: m) if raw else GetMessageClass(method.output_type).SerializeToString)
        self._server = _grpc_server.Server(manager.table, address, self._dispatch,
                                           threads or _completion_queue_threads(),
                                           max_message_size, channel_args or {},
                                           **(tls or {}), restricted=restricted_methods or {},
                                           header_forward_pattern=header_pattern,
                                           shared_memory=shared_memory,
                                           infer_compression_level=COMPRESSION_LEVELS.index(
                                               infer_compression))
        self.port = self._server.port

    async def start(self) -> None:
        """The native server serves from construction on."""

    async def stop(self, grace: float | None) -> None:
        await asyncio.to_thread(self._server.stop, grace or 0.0)

    def _dispatch(self, method: str, request: bytes, reply: Callable) -> None:
        """Native control thread, GIL held: run the RPC on the event loop. A ModelInfer
        `request` is a buffer owning the message's bytes (read through a memoryview), not
        bytes: it can be large, and it is handed over without a copy."""
        self._loop.call_soon_threadsafe(
            lambda: asyncio.ensure_future(self._handle(method, request, reply)))

    async def _handle(self, method: str, request: bytes, reply: Callable) -> None:
        entry = self._methods.get(method)
        if entry is None:
            reply(grpc.StatusCode.UNIMPLEMENTED.value[0],
                  "this RPC is not implemented by pyserve yet" if method.startswith("/inference.")
                  else f"Method not found: {method}", b"")
            return
        behaviour, deserialize, serialize = entry
        try:
            response = serialize(await behaviour(deserialize(request), _Context()))
        except _Abort as e:
            reply(e.code.value[0], e.details, b"")
        except ServerError as e:
            reply(GRPC_STATUS[e.code].value[0], e.message, b"")
        except Exception as e:  # noqa: BLE001 - a bad request must not go unanswered
            if type(e).__name__ == "DecodeError":
                reply(grpc.StatusCode.INVALID_ARGUMENT.value[0], f"failed to parse request: {e}", b"")
                return
            log.exception("gRPC %s failed", method)
            reply(grpc.StatusCode.INTERNAL.value[0], f"{type(e).__name__}: {e}", b"")
        else:
            reply(0, "", response)


def create_native_grpc_server(manager: ModelManager, address: str,
                              max_message_size: int = _INT32_MAX,
                              channel_args: dict[str, int] | None = None,
                              tls: dict | None = None,
                              shared_memory: _core.SharedMemoryRegistry | None = None,
                              restricted_methods: dict[str, tuple[str, str]] | None = None,
                              header_pattern: str = "",
                              infer_compression: str = "none") -> tuple[NativeGrpcServer, int]:
    server = NativeGrpcServer(manager, address, max_message_size=max_message_size,
                              channel_args=channel_args, tls=tls, shared_memory=shared_memory,
                              restricted_methods=restricted_methods,
                              header_pattern=header_pattern,
                              infer_compression=infer_compression)
    return server, server.port
