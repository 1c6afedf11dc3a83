"""`pyserve torchserve`: TorchServe's three APIs over a model store, on pyserve's core.

Startup first starts pyserve's own server (KServe v2 gRPC and HTTP, metrics, the models of
any `--model-repository`), then registers the `--models`/`load_models` archives with their
workers, which the store also publishes to that server's ModelManager, and opens the
inference, management and metrics APIs. Shutdown closes TorchServe's APIs, drains the KServe
v2 frontends while the archives' workers still answer, then unloads every model (each runner
answers what it accepted) and removes the key file.
"""

from __future__ import annotations

import asyncio
import logging

from pyserve.errors import ServerError
from pyserve.options import ServerOptions
from pyserve.server import Server, serve_until_signal
from pyserve.server import StartupError as KServeStartupError
from pyserve.torchserve.api import Tokens, TorchServeApis, start_site
from pyserve.torchserve import metrics as ts_metrics
from pyserve.torchserve.config import Address, TorchServeOptions
from pyserve.torchserve.context import configure_metrics
from pyserve.torchserve.metrics import FrontendMetrics
from pyserve.torchserve.store import ApiError, ModelStore
from pyserve.torchserve.tls import server_tls

log = logging.getLogger("pyserve")


class StartupError(Exception):
    pass


class TorchServeServer:
    def __init__(self, options: TorchServeOptions, kserve: ServerOptions | None = None) -> None:
        self.options = options
        self.kserve = Server(kserve) if kserve is not None else None
        self.store: ModelStore | None = None
        self.apis: TorchServeApis | None = None
        self.tokens: Tokens | None = None
        self.ports: dict[str, int] = {}
        self._runners = []
        self._native = None
        self._system_metrics = None
        self._native_answer_lines = None
        self.metrics = None
        self._should_exit = asyncio.Event()

    async def start(self) -> None:
        options = self.options
        manager = None
        if self.kserve is not None:
            await self.kserve.start()
            manager = self.kserve.manager
        self.metrics = FrontendMetrics(options.metrics_mode, options.metrics_config,
                                       options.model_metrics_auto_detect)
        configure_metrics(options.metrics_mode, self.metrics.backend_specs,
                          options.model_metrics_auto_detect)
        ts_metrics.FRONTEND = self.metrics
        if options.metrics_mode != "prometheus":
            ts_metrics.configure_log_files(ts_metrics.log_directory())
        if not options.disable_system_metrics:
            self._system_metrics = ts_metrics.SystemMetrics(self.metrics,
                                                            options.metric_time_interval_s)
            self._system_metrics.start()
        self.store = ModelStore(options, asyncio.get_running_loop(), options.service_envelope,
                                manager)
        await self._load_startup_models()
        if options.token_auth:
            self.tokens = Tokens(options.key_file.resolve(), options.token_expiration_min)
            log.info("Token authorization is on: keys are in %s", self.tokens.key_file)
        self.apis = TorchServeApis(self.store, options, self.tokens, self.metrics)
        if options.management_address == options.inference_address and \
                options.inference_address.port != 0:  # port 0: two ports, each chosen freely
            sites = [("Inference", self.apis.shared_app(), options.inference_address)]
            log.info("Management API served on the inference address")
        else:
            sites = [("Inference", self.apis.inference_app(), options.inference_address),
                     ("Management", self.apis.management_app(), options.management_address)]
        if options.enable_metrics_api:
            sites.append(("Metrics", self.apis.metrics_app(), options.metrics_address))
        tls = None
        if any(address.scheme == "https" for _, _, address in sites):
            tls = server_tls(options)
        for name, app, address in sites:
            if name == "Inference" and self._native_inference():
                port = await self._start_native_inference(app, address, tls)
            else:
                runner, port = await start_site(app, address, tls and tls.context)
                self._runners.append(runner)
            self.ports[name.lower()] = port
            log.info("%s API bind to: %s://%s:%d", name, address.scheme, address.host, port)
        self.ports.setdefault("management", self.ports["inference"])
        log.info("Model server started.")

    def _native_inference(self) -> bool:
        """Whether predictions are served natively: the HTTP frontend choice of the KServe
        options (auto: when the native frontend is built)."""
        choice = self.kserve.options.http_frontend if self.kserve is not None else "auto"
        if choice == "python":
            return False
        from pyserve.torchserve import native

        if not native.available():
            if choice == "native":
                raise StartupError("--http-frontend=native: the native HTTP frontend is not "
                                   f"available ({native.UNAVAILABLE_REASON})")
            return False
        return True

    async def _start_native_inference(self, app, address, tls) -> int:
        """Predictions on the native server (https with `tls`'s material), the rest relayed
        to `app` on a loopback port, in plain HTTP."""
        from pyserve.torchserve.native import NativeInferenceApi

        runner, shell_port = await start_site(app, Address("http", "127.0.0.1", 0), None)
        self._runners.append(runner)
        threads = self.kserve.options.http_thread_count if self.kserve is not None else 8
        self._native = NativeInferenceApi(
            self.apis, address.host, address.port, shell_port, threads,
            tls.native() if tls is not None and address.scheme == "https" else None)
        self.apis.attach_native(self._native)
        if not self.metrics.served("Requests2XX"):  # log mode: a line per answer, each second
            self._native_answer_lines = ts_metrics.Periodic(
                self.metrics.log_native_answers, 1.0, "ps-ts-answer-lines")
            self._native_answer_lines.start()
        log.info("Inference API: native predictions (Boost.Beast), other routes relayed to "
                 "127.0.0.1:%d", shell_port)
        return self._native.port

    async def _load_startup_models(self) -> None:
        store = self.store
        wanted = self.options.load_models
        if not wanted:
            return
        if store.options.model_store is None:
            raise StartupError("--model-store (or model_store) is required to load models")
        requests: list[tuple[str, str]] = []  # (model name or "", url)
        if "all" in [w.lower() for w in wanted]:
            requests = [("", path.name) for path in store.store_archives()]
        else:
            for item in wanted:
                name, _, url = item.partition("=") if "=" in item else ("", "", item)
                requests.append((name, url))
        for name, url in requests:
            try:
                entry = await store.register(
                    url, model_name=name, batch_size=self.options.batch_size,
                    max_batch_delay=self.options.max_batch_delay_ms, startup=True)
                workers = self._startup_workers(entry)
                await store.scale(entry.name, entry.version, workers,
                                  max(entry.max_workers, workers))
            except (ApiError, ServerError) as e:
                log.error("failed to load model from %s: %s", url, getattr(e, "message", e))

    def _startup_workers(self, entry) -> int:
        settings = self.options.models.get(entry.name, {}).get(entry.version, {})
        yaml = entry.archive.model_yaml()
        return int(settings.get("minWorkers") or yaml.get("minWorkers")
                   or self.options.workers_per_model)

    async def stop(self) -> None:
        if self._native is not None:
            await self._native.stop()
        for runner in self._runners:
            await runner.shutdown()
        if self.kserve is not None:
            await self.kserve.stop()
        if self.apis is not None:
            await self.apis.drain_background()
        if self.store is not None:
            await self.store.shutdown()
        for runner in self._runners:
            await runner.cleanup()
        if self.tokens is not None:
            self.tokens.remove()
        for periodic in (self._system_metrics, self._native_answer_lines):
            if periodic is not None:
                periodic.stop()
        log.info("pyserve torchserve stopped")

    def request_exit(self) -> None:
        self._should_exit.set()

    async def serve(self) -> None:
        await serve_until_signal(self.start, self.stop, self._should_exit)


def run(options: TorchServeOptions, kserve: ServerOptions | None = None) -> int:
    try:
        asyncio.run(TorchServeServer(options, kserve).serve())
    except (StartupError, KServeStartupError, ServerError, OSError) as e:
        log.error("%s", getattr(e, "message", e))
        return 1
    return 0
