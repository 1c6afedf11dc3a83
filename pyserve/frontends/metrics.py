"""Prometheus metrics on their own port, with Triton's metric names.

Triton's counters carry no `_total` suffix (`nv_inference_request_success`), in their samples
and in their HELP and TYPE lines; prometheus_client writes the suffix into the HELP and TYPE
lines of every counter, after which Prometheus' parsers file the samples as untyped. So the
families are written here, as Triton writes them. Every figure comes from counts the core
already keeps (request outcomes, statistics, queue lengths), read at scrape time.
"""

from __future__ import annotations

from typing import Callable

from aiohttp import web
from prometheus_client import CONTENT_TYPE_LATEST
from prometheus_client.metrics_core import Metric
from prometheus_client.utils import floatToGoString

from pyserve.frontends.sockets import listen

# Triton's request counters: name -> (help, the samples' extra labels and values from the
# core's counts)
_COUNTERS = {
    "nv_inference_request_success": ("Number of successful inference requests, all batch sizes",
                                     lambda c: [({}, c["success"])]),
    "nv_inference_request_failure": ("Number of failed inference requests, all batch sizes",
                                     lambda c: [({"reason": reason}, count)
                                                for reason, count in c["failures"].items()]),
    "nv_inference_request_duration_us": ("Cumulative inference request duration in microseconds",
                                         lambda c: [({}, c["success_ns"] / 1000)]),
}


# Triton's per-model counters that the core's ModelStatistics already hold:
# name -> (help, how to read the value from one statistics entry)
_FROM_STATISTICS = {
    "nv_inference_count": ("Number of inferences performed (a batch of n counts n)",
                           lambda s: s["inference_count"]),
    "nv_inference_exec_count": ("Number of model executions performed",
                                lambda s: s["execution_count"]),
    **{f"nv_inference_{phase}_duration_us": (
        f"Cumulative {phase.replace('_', ' ')} duration in microseconds",
        lambda s, phase=phase: s["inference_stats"][phase]["ns"] / 1000)
       for phase in ("queue", "compute_input", "compute_infer", "compute_output")},
}


class Metrics:
    def __init__(self, statistics: Callable[[], list[dict]] | None = None,
                 pending: Callable[[], dict[tuple[str, str], int]] | None = None,
                 request_counts: Callable[[], dict[tuple[str, str], dict]] | None = None) -> None:
        self._statistics = statistics
        self._pending = pending
        self._request_counts = request_counts

    def collect(self):
        counts = self._request_counts() if self._request_counts is not None else {}
        for name, (documentation, read) in _COUNTERS.items():
            metric = Metric(name, documentation, "counter")
            for (model, version), entry in sorted(counts.items()):
                for labels, value in read(entry):
                    metric.add_sample(name, {"model": model, "version": version, **labels}, value)
            yield metric
        entries = self._statistics() if self._statistics is not None else []
        for name, (documentation, read) in _FROM_STATISTICS.items():
            metric = Metric(name, documentation, "counter")
            for entry in entries:
                metric.add_sample(name, {"model": entry["name"], "version": entry["version"]},
                                  read(entry))
            yield metric
        if self._pending is not None:
            name = "nv_inference_pending_request_count"
            metric = Metric(name, "Instantaneous number of pending requests awaiting execution "
                                  "per-model.", "gauge")
            for (model, version), count in sorted(self._pending().items()):
                metric.add_sample(name, {"model": model, "version": version}, count)
            yield metric
        # Python models' own families (pb_utils.MetricFamily).
        from triton_python_backend_utils._metrics import collect

        yield from collect()

    async def handle(self, request: web.Request) -> web.Response:
        return web.Response(body=exposition(self.collect()),
                            headers={"Content-Type": CONTENT_TYPE_LATEST})


def exposition(families) -> bytes:
    """Prometheus' text format of `families`, each named in its HELP and TYPE lines as in its
    samples."""
    lines = []
    for family in families:
        documentation = family.documentation.replace("\\", r"\\").replace("\n", r"\n")
        lines += [f"# HELP {family.name} {documentation}", f"# TYPE {family.name} {family.type}"]
        for sample in family.samples:
            labels = ",".join(f'{key}="{_escape(str(value))}"'
                              for key, value in sample.labels.items())
            lines.append(f"{sample.name}{{{labels}}} {floatToGoString(sample.value)}" if labels
                         else f"{sample.name} {floatToGoString(sample.value)}")
    return "".join(line + "\n" for line in lines).encode()


def _escape(value: str) -> str:
    return value.replace("\\", r"\\").replace("\n", r"\n").replace('"', r'\"')


async def start_metrics_server(metrics: Metrics, host: str, port: int) -> tuple[web.AppRunner, int]:
    app = web.Application()
    app.add_routes([web.get("/metrics", metrics.handle)])
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    sock = listen(host, port)
    await web.SockSite(runner, sock).start()
    return runner, sock.getsockname()[1]
