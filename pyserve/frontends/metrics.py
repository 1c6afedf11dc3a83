"""Prometheus metrics on their own port, with Triton's metric names."""

from __future__ import annotations

from aiohttp import web
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, Counter, generate_latest

from pyserve.frontends.sockets import listen


class Metrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        labels = ["model", "version"]
        self.success = Counter("nv_inference_request_success",
                               "Number of successful inference requests, all batch sizes",
                               labels, registry=self.registry)
        self.failure = Counter("nv_inference_request_failure",
                               "Number of failed inference requests, all batch sizes",
                               labels, registry=self.registry)
        self.duration_us = Counter("nv_inference_request_duration_us",
                                   "Cumulative inference request duration in microseconds",
                                   labels, registry=self.registry)

    def observe(self, model: str, version: str, ok: bool, duration_us: float) -> None:
        (self.success if ok else self.failure).labels(model, version).inc()
        if ok:
            self.duration_us.labels(model, version).inc(duration_us)

    async def handle(self, request: web.Request) -> web.Response:
        body = generate_latest(self.registry)
        return web.Response(body=body, headers={"Content-Type": CONTENT_TYPE_LATEST})


async def start_metrics_server(metrics: Metrics, host: str, port: int) -> tuple[web.AppRunner, int]:
    app = web.Application()
    app.add_routes([web.get("/metrics", metrics.handle)])
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    sock = listen(host, port)
    await web.SockSite(runner, sock).start()
    return runner, sock.getsockname()[1]
