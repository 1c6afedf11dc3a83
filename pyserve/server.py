"""Server: wires options, the model manager and the frontends; startup, serve, shutdown."""

from __future__ import annotations

import asyncio
import logging
import os
import signal
import ssl

from pyserve import _core, restricted, tracing
from pyserve.devices import gpu_count
from pyserve.errors import ServerError
from pyserve.frontends.grpc import create_grpc_server
from pyserve.frontends.http import start_http_server
from pyserve.frontends.metrics import Metrics, start_metrics_server
from pyserve.frontends.system_metrics import SystemSampler
from pyserve.frontends.sockets import in_use
from pyserve.lifecycle import ModelManager
from pyserve.options import ServerOptions, Tls
from triton_python_backend_utils import _model_control as model_control

log = logging.getLogger("pyserve")

# After the listeners close, how long requests already inside a frontend get to reach their
# model before the models stop taking requests (an HTTP body still arriving, say). Unloading
# starts at once when the frontends are idle sooner, and must not wait for them longer: it is
# what answers requests a scheduler holds back.
INTAKE_SECS = 1.0


class StartupError(Exception):
    """The server cannot start as asked (e.g. a model failed to load with --exit-on-error)."""


class Server:
    def __init__(self, options: ServerOptions) -> None:
        self.options = options
        self.manager: ModelManager | None = None
        self.grpc_port = self.http_port = self.metrics_port = 0
        self._grpc = None
        self._http = None  # the native HTTP frontend, when it serves
        self._https: ssl.SSLContext | None = None  # HTTP and metrics over TLS
        self._runners = []  # aiohttp AppRunners: HTTP and metrics
        self._sampler: SystemSampler | None = None  # CPU and GPU figures for metrics
        self._should_exit = asyncio.Event()
        # Client shared-memory regions: one registry for every frontend, as Triton has one.
        self.shared_memory = _core.SharedMemoryRegistry()
        self.drained = True  # False when the exit timeout cut the drain short

    async def start(self) -> None:
        options = self.options
        _core.set_host_memory_pool_bytes(options.pinned_memory_pool_byte_size)
        _core.set_request_limits(options.request_limits)
        # HTTPS (and metrics) as --http-use-ssl asks: its files checked before models load.
        self._https = _https_context(options) if options.http_tls is not None else None
        try:
            self.manager = ModelManager(options, asyncio.get_running_loop(), gpu_count())
            # pb_utils.load_model/unload_model/is_model_ready act on this server's models.
            model_control.attach(self.manager, asyncio.get_running_loop())
            failed = await self.manager.startup()
        except ServerError as e:
            raise StartupError(e.message) from None
        if failed and options.exit_on_error:
            await self.manager.shutdown()
            raise StartupError(f"failed to load {', '.join(repr(n) for n in failed)}; exiting "
                               "(--exit-on-error=false serves the models that did load)")
        metrics = self._metrics() if options.allow_metrics else None
        if options.allow_grpc:
            self.grpc_port = await _service("GRPC", options.address("grpc"), options.grpc_port,
                                            self._start_grpc())
            log.info("Started GRPCInferenceService at %s:%d", options.address("grpc"),
                     self.grpc_port)
        if options.allow_http:
            self.http_port = await _service("HTTP", options.address("http"), options.http_port,
                                            self._start_http())
            log.info("Started HTTPService at %s:%d", options.address("http"), self.http_port)
        if metrics is not None:
            runner, self.metrics_port = await _service(
                "Metrics", options.address("metrics"), options.metrics_port,
                start_metrics_server(metrics, options.address("metrics"), options.metrics_port,
                                     self._https))
            self._runners.append(runner)
            log.info("Started Metrics Service at %s:%d", options.address("metrics"),
                     self.metrics_port)

    async def _start_grpc(self) -> int:
        self._grpc, port = _grpc_frontend(self.options, self.manager, self.shared_memory)
        await self._grpc.start()
        return port

    async def _start_http(self) -> int:
        """The HTTP frontend the options ask for: native when built (or asked), relaying what it
        does not serve to aiohttp on a loopback port; else aiohttp on the public port."""
        options = self.options
        native = None
        if options.http_frontend != "python":
            from pyserve.frontends import http_native

            if http_native.available():
                native = http_native
            elif options.http_frontend == "native":
                raise StartupError("--http-frontend=native: the native HTTP frontend is not "
                                   f"available ({http_native.UNAVAILABLE_REASON})")
            else:
                log.warning("HTTP frontend: python (aiohttp); the native one is not available: "
                            "%s", http_native.UNAVAILABLE_REASON)
        if native is None:
            if options.http_frontend == "python":
                log.info("HTTP frontend: python (aiohttp)")
            runner, port = await start_http_server(
                self.manager, options.address("http"), options.http_port,
                options.http_max_input_size, self.shared_memory, options.http_restricted,
                options.http_header_forward_pattern, options.reuse_http_port, self._https,
                options.http_backlog)
            self._runners.append(runner)
            return port
        runner, shell_port = await start_http_server(
            self.manager, "127.0.0.1", 0, options.http_max_input_size, self.shared_memory,
            options.http_restricted, options.http_header_forward_pattern)
        self._runners.append(runner)
        self._http = native.NativeHttpServer(
            self.manager, options.address("http"), options.http_port, shell_port,
            options.http_thread_count, options.http_max_input_size, self.shared_memory,
            options.reuse_http_port, options.http_restricted,
            options.http_header_forward_pattern, _native_tls(options.http_tls), options.http_backlog)
        log.info("HTTP frontend: native (Boost.Beast), other routes relayed to 127.0.0.1:%d",
                 shell_port)
        return self._http.port

    def _metrics(self) -> Metrics:
        settings = self.options.metrics
        if settings.allow_cpu or settings.allow_gpu:
            self._sampler = SystemSampler(settings.interval_ms, settings.allow_cpu,
                                          settings.allow_gpu)
            if self._sampler.cpu or self._sampler.gpu:
                self._sampler.start()
        return Metrics(self.manager.metric_counts, self.manager.pending_counts, settings,
                       self.manager.response_cache, self._sampler,
                       self.options.pinned_memory_pool_byte_size, self.manager.latency_summaries)

    async def stop(self) -> None:
        """Drain, all within exit_timeout_secs: report not ready at once; keep serving for
        drain_grace_secs; then refuse new connections and requests on every frontend, answer
        every accepted one, and unload the models.

        The frontends drain while the models unload: unloading runs every request the
        schedulers hold, batches still waiting out a delay included, and the loop stays free to
        send their responses. Sets `drained` to False when the timeout cut it short.
        """
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self.options.exit_timeout_secs
        if self._sampler is not None:
            self._sampler.stop()
        if self.manager is not None:
            self.manager.draining = True
        grace = min(self.options.drain_grace_secs, self.options.exit_timeout_secs)
        if grace > 0:
            log.info("draining: not ready; still accepting requests for %g s", grace)
            await asyncio.sleep(grace)
        remaining = max(deadline - loop.time(), 0.0)
        frontends = []
        if self._grpc is not None:
            frontends.append(asyncio.ensure_future(self._grpc.stop(remaining)))
        if self._http is not None:
            frontends.append(asyncio.ensure_future(self._http.stop()))
        for runner in self._runners:
            frontends.append(asyncio.ensure_future(_close(runner, remaining)))
        if frontends:
            await asyncio.wait(frontends, timeout=min(INTAKE_SECS, remaining))
        work = list(frontends)
        if self.manager is not None:
            work.append(asyncio.ensure_future(self.manager.shutdown()))
        if work:
            _, late = await asyncio.wait(work, timeout=max(deadline - loop.time(), 0.0))
            if late:
                self.drained = False
                inflight = self.manager.inflight_count() if self.manager is not None else 0
                log.warning("exit timeout (%g s) expired with %d request(s) in flight",
                            self.options.exit_timeout_secs, inflight)
                return
            for task in work:
                if task.exception() is not None:
                    log.error("shutdown step failed", exc_info=task.exception())
        tracing.close()  # the traces of the requests answered while draining, written
        log.info("pyserve stopped")

    def request_exit(self) -> None:
        self._should_exit.set()

    async def serve(self) -> None:
        try:
            await serve_until_signal(self.start, self.stop, self._should_exit)
        finally:
            if not self.drained:
                # Worker threads may still hold requests: waiting for them (as asyncio.run
                # would) overruns the timeout. Exit now, non-zero: something was cut short.
                logging.shutdown()
                os._exit(1)


async def serve_until_signal(start, stop, should_exit: asyncio.Event) -> None:
    """start(), serve until SIGINT or SIGTERM (or should_exit is set), then stop(); a second
    signal forces the exit."""
    loop = asyncio.get_running_loop()

    def on_signal() -> None:
        log.info("shutting down (signal again to force)")
        should_exit.set()

    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, on_signal)
    try:
        await start()
        await should_exit.wait()
    finally:
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.remove_signal_handler(sig)
            loop.add_signal_handler(sig, lambda: os._exit(1))
        await stop()


def _grpc_frontend(options: ServerOptions, manager: ModelManager,
                   shared_memory: _core.SharedMemoryRegistry):
    """The gRPC server the options ask for: native when built (or asked), else grpc.aio."""
    address = f"{options.address('grpc')}:{options.grpc_port}"
    channel_args = {**options.grpc_channel_args, "grpc.so_reuseport": int(options.reuse_grpc_port)}
    methods = restricted.grpc_methods(options.grpc_restricted)
    tls = None
    if options.grpc_tls is not None:
        try:
            tls = {**options.grpc_tls.pem(), "mutual": options.grpc_tls.mutual}
        except OSError as e:
            raise StartupError(f"failed to start GRPC service: cannot read "
                               f"{e.filename}: {e.strerror}") from None
    if options.grpc_frontend != "python":
        from pyserve.frontends import grpc_native

        if grpc_native.available():
            log.info("gRPC frontend: native (gRPC C++)")
            return grpc_native.create_native_grpc_server(
                manager, address, options.grpc_max_message_size, channel_args, tls,
                shared_memory, methods, options.grpc_header_forward_pattern,
                options.grpc_infer_response_compression_level)
        if options.grpc_frontend == "native":
            raise StartupError("--grpc-frontend=native: the native gRPC frontend is not "
                               f"available ({grpc_native.UNAVAILABLE_REASON})")
        log.warning("gRPC frontend: python (grpc.aio); the native one is not available: %s",
                    grpc_native.UNAVAILABLE_REASON)
    else:
        log.info("gRPC frontend: python (grpc.aio)")
    return create_grpc_server(manager, address, options.grpc_max_message_size, channel_args,
                              tls, shared_memory, methods, options.grpc_header_forward_pattern,
                              options.grpc_infer_response_compression_level)


def _https_context(options: ServerOptions) -> ssl.SSLContext:
    """The SSL context of the HTTP and metrics services (--http-use-ssl...); it also checks,
    before any service starts, that the files can be used."""
    try:
        return options.http_tls.server_context()
    except ssl.SSLError as e:  # an OSError too
        raise StartupError(f"failed to start HTTP service: TLS: {e}") from None
    except OSError as e:
        raise StartupError(f"failed to start HTTP service: cannot read {e.filename}: "
                           f"{e.strerror}") from None


def _native_tls(tls: Tls | None) -> dict | None:
    """--http-use-ssl's files as the native HTTP frontend takes them (PEM text)."""
    if tls is None:
        return None
    pem = tls.pem()
    return {"certificate_chain": pem["server_cert"], "private_key": pem["server_key"],
            "client_ca": pem["root_cert"] if tls.mutual else ""}


async def _close(runner, timeout: float) -> None:
    """Close an aiohttp server: stop listening, close idle connections, let running handlers
    finish for up to `timeout` (aiohttp's own default is 60 s), then close the rest."""
    runner._shutdown_timeout = timeout  # aiohttp >= 3.9 reads it in cleanup()
    await runner.shutdown()
    await runner.cleanup()


async def _service(name: str, host: str, port: int, start):
    """Awaits the start of one service; a port another server holds stops start-up with
    Triton's words."""
    try:
        return await start
    except (OSError, RuntimeError):
        if port and in_use(host, port):
            raise StartupError(f"failed to start {name} service: Unavailable - Socket "
                               f"'{host}:{port}' already in use") from None
        raise


def run(options: ServerOptions) -> int:
    """Serve until a signal; the process's exit status."""
    try:
        asyncio.run(Server(options).serve())
    except StartupError as e:
        log.error("%s", e)
        return 1
    return 0
