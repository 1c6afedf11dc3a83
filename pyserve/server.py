"""Server: wires options, the model manager and the frontends; startup, serve, shutdown."""

from __future__ import annotations

import asyncio
import logging
import os
import signal

from pyserve.devices import gpu_count
from pyserve.errors import ServerError
from pyserve.frontends.grpc import create_grpc_server
from pyserve.frontends.http import start_http_server
from pyserve.frontends.metrics import Metrics, start_metrics_server
from pyserve.lifecycle import ModelManager
from pyserve.options import ServerOptions

log = logging.getLogger("pyserve")


class StartupError(Exception):
    """The server cannot start as asked (e.g. a model failed to load with --exit-on-error)."""


class Server:
    def __init__(self, options: ServerOptions) -> None:
        self.options = options
        self.manager: ModelManager | None = None
        self.grpc_port = self.http_port = self.metrics_port = 0
        self._grpc = None
        self._runners = []  # aiohttp AppRunners: HTTP and metrics
        self._should_exit = asyncio.Event()

    async def start(self) -> None:
        options = self.options
        self.manager = ModelManager(options, asyncio.get_running_loop(), gpu_count())
        try:
            failed = await self.manager.startup()
        except ServerError as e:
            raise StartupError(e.message) from None
        if failed and options.exit_on_error:
            await self.manager.shutdown()
            raise StartupError(f"failed to load {', '.join(repr(n) for n in failed)}; exiting "
                               "(--exit-on-error=false serves the models that did load)")
        metrics = (Metrics(self.manager.statistics, self.manager.pending_counts,
                           self.manager.request_counts)
                   if options.allow_metrics else None)
        if options.allow_grpc:
            self._grpc, self.grpc_port = _grpc_frontend(options, self.manager)
            await self._grpc.start()
            log.info("Started GRPCInferenceService at %s:%d", options.host, self.grpc_port)
        if options.allow_http:
            runner, self.http_port = await start_http_server(
                self.manager, options.host, options.http_port, options.http_max_input_size)
            self._runners.append(runner)
            log.info("Started HTTPService at %s:%d", options.host, self.http_port)
        if metrics is not None:
            runner, self.metrics_port = await start_metrics_server(
                metrics, options.host, options.metrics_port)
            self._runners.append(runner)
            log.info("Started Metrics Service at %s:%d", options.host, self.metrics_port)

    async def stop(self) -> None:
        """Refuse new requests and answer every accepted one, then close the frontends.

        The frontends drain (up to exit_timeout_secs) while the models unload: unloading runs
        every request the schedulers hold, batches still waiting out a delay included, and the
        loop stays free to send their responses.
        """
        frontends = []
        if self._grpc is not None:
            frontends.append(asyncio.ensure_future(self._grpc.stop(self.options.exit_timeout_secs)))
        for runner in self._runners:
            frontends.append(asyncio.ensure_future(_close(runner)))
        if self.manager is not None:
            await self.manager.shutdown()
        await asyncio.gather(*frontends)
        log.info("pyserve stopped")

    def request_exit(self) -> None:
        self._should_exit.set()

    async def serve(self) -> None:
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, self._on_signal)
        try:
            await self.start()
            await self._should_exit.wait()
        finally:
            for sig in (signal.SIGINT, signal.SIGTERM):
                loop.remove_signal_handler(sig)
            loop.add_signal_handler(signal.SIGINT, self._force_exit)
            await self.stop()

    def _on_signal(self) -> None:
        log.info("shutting down (signal again to force)")
        self.request_exit()

    @staticmethod
    def _force_exit() -> None:
        os._exit(1)


def _grpc_frontend(options: ServerOptions, manager: ModelManager):
    """The gRPC server the options ask for: native when built (or asked), else grpc.aio."""
    address = f"{options.host}:{options.grpc_port}"
    if options.grpc_frontend != "python":
        from pyserve.frontends import grpc_native

        if grpc_native.available():
            log.info("gRPC frontend: native (gRPC C++)")
            return grpc_native.create_native_grpc_server(manager, address)
        if options.grpc_frontend == "native":
            raise StartupError("--grpc-frontend=native: the native gRPC frontend is not "
                               f"available ({grpc_native.UNAVAILABLE_REASON})")
        log.warning("gRPC frontend: python (grpc.aio); the native one is not available: %s",
                    grpc_native.UNAVAILABLE_REASON)
    else:
        log.info("gRPC frontend: python (grpc.aio)")
    return create_grpc_server(manager, address)


async def _close(runner) -> None:
    await runner.shutdown()
    await runner.cleanup()


def run(options: ServerOptions) -> int:
    """Serve until a signal; the process's exit status."""
    try:
        asyncio.run(Server(options).serve())
    except StartupError as e:
        log.error("%s", e)
        return 1
    return 0
