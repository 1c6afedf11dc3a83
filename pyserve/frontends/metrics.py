"""Prometheus metrics on their own port, with Triton 2.51's metric names, help texts and types
(its src/metrics.cc), families in its order; a family without samples is left out, as Triton
leaves it out.

Triton's counters carry no `_total` suffix (`nv_inference_request_success`), in their samples
and in their HELP and TYPE lines; prometheus_client writes the suffix into the HELP and TYPE
lines of every counter, after which Prometheus' parsers file the samples as untyped. So the
families are written here, as Triton writes them. Every figure comes from counts the core
already keeps (request outcomes, statistics, the response cache's, queue lengths, latency
samples), read at scrape time; CPU and GPU figures from the SystemSampler's last sample.
"""

from __future__ import annotations

import ssl
from typing import Callable, Iterator

from aiohttp import web
from prometheus_client import CONTENT_TYPE_LATEST
from prometheus_client.metrics_core import Metric
from prometheus_client.utils import floatToGoString

from pyserve import _core
from pyserve.frontends.sockets import listen
from pyserve.frontends.system_metrics import SystemSampler
from pyserve.options import MetricsSettings

# A version's labels: model, version, and namespace with --model-namespacing (Triton's).
Labels = dict[str, str]
# (labels, cached, counters) per READY version: ModelManager.metric_counts
Counts = Callable[[], list[tuple[Labels, bool, dict[str, float]]]]
# quantiles -> (labels, cached, {phase: (count, sum_us, [quantile values])}) per READY
# version: ModelManager.latency_summaries
Summaries = Callable[[list[float]], list[tuple[Labels, bool, dict[str, tuple[int, int, list[float]]]]]]

_FAILURE_REASONS = ("OTHER", "BACKEND", "CANCELED", "REJECTED")  # Triton's order


def _us(ns: float) -> int:
    return int(ns) // 1000


# name -> (help, the samples' extra labels and values from one version's counters)
_REQUESTS = {
    "nv_inference_request_success": (
        "Number of successful inference requests, all batch sizes",
        lambda c: [({}, c["success"])]),
    "nv_inference_request_failure": (
        "Number of failed inference requests, all batch sizes",
        lambda c: [({"reason": r}, c.get(f"failure.{r}", 0)) for r in _FAILURE_REASONS]),
    "nv_inference_count": (
        "Number of inferences performed (does not include cached requests)",
        lambda c: [({}, c["inference_count"])]),
    "nv_inference_exec_count": (
        "Number of model executions performed (does not include cached requests)",
        lambda c: [({}, c["execution_count"])]),
}
_LATENCIES = {
    "nv_inference_request_duration_us": (
        "Cumulative inference request duration in microseconds (includes cached requests)",
        lambda c: [({}, _us(c["success_ns"]))]),
    "nv_inference_queue_duration_us": (
        "Cumulative inference queuing duration in microseconds (includes cached requests)",
        lambda c: [({}, _us(c["queue.ns"]))]),
    "nv_inference_compute_input_duration_us": (
        "Cumulative compute input duration in microseconds (does not include cached requests)",
        lambda c: [({}, _us(c["compute_input.ns"]))]),
    "nv_inference_compute_infer_duration_us": (
        "Cumulative compute inference duration in microseconds (does not include cached "
        "requests)",
        lambda c: [({}, _us(c["compute_infer.ns"]))]),
    "nv_inference_compute_output_duration_us": (
        "Cumulative inference compute output duration in microseconds (does not include "
        "cached requests)",
        lambda c: [({}, _us(c["compute_output.ns"]))]),
}
_CACHE_PER_MODEL = {
    "nv_cache_num_hits_per_model": ("Number of cache hits per model",
                                    lambda c: [({}, c["cache_hit.count"])]),
    "nv_cache_hit_duration_per_model": ("Total cache hit duration per model, in microseconds",
                                        lambda c: [({}, _us(c["cache_hit.ns"]))]),
    "nv_cache_num_misses_per_model": ("Number of cache misses per model",
                                      lambda c: [({}, c["cache_miss.count"])]),
    "nv_cache_miss_duration_per_model": (
        "Total cache miss (insert+lookup) duration per model, in microseconds",
        lambda c: [({}, _us(c["cache_miss.ns"]))]),
}
# The response cache's own gauges: name -> (help, value from ResponseCache.usage())
_CACHE = {
    "nv_cache_util": ("Cache utilization [0.0 - 1.0]",
                      lambda u: u["used"] / u["capacity"] if u["capacity"] else 0.0),
    "nv_cache_num_entries": ("Number of responses stored in response cache",
                             lambda u: u["entries"]),
    "nv_cache_num_hits": ("Number of cache hits in response cache", lambda u: u["hits"]),
    "nv_cache_num_misses": ("Number of cache misses in response cache", lambda u: u["misses"]),
    "nv_cache_num_lookups": ("Number of cache lookups in response cache",
                             lambda u: u["hits"] + u["misses"]),
    "nv_cache_num_evictions": ("Number of cache evictions in response cache",
                               lambda u: u["evictions"]),
    "nv_cache_lookup_duration": ("Total cache lookup duration (hit and miss), in microseconds",
                                 lambda u: _us(u["lookup_ns"])),
    "nv_cache_insertion_duration": ("Total cache insertion duration, in microseconds",
                                    lambda u: _us(u["insertion_ns"])),
}
# Summaries: phase (as the core names it) -> (name, help)
_SUMMARIES = {
    "request": ("nv_inference_request_summary_us",
                "Summary of inference request duration in microseconds (includes cached "
                "requests)"),
    "queue": ("nv_inference_queue_summary_us",
              "Summary of inference queuing duration in microseconds (includes cached "
              "requests)"),
    "compute_input": ("nv_inference_compute_input_summary_us",
                      "Cumulative compute input duration in microseconds (does not include "
                      "cached requests)"),
    "compute_infer": ("nv_inference_compute_infer_summary_us",
                      "Cumulative compute inference duration in microseconds (does not "
                      "include cached requests)"),
    "compute_output": ("nv_inference_compute_output_summary_us",
                       "Cumulative inference compute output duration in microseconds (does "
                       "not include cached requests)"),
    "cache_hit": ("nv_cache_hit_summary_per_model",
                  "Summary of cache hit counts/durations per model, in microseconds."),
    "cache_miss": ("nv_cache_miss_summary_per_model",
                   "Summary of cache miss counts/durations per model, in microseconds."),
}


def _gauge(name: str, documentation: str, *samples: tuple[dict, float]) -> Metric:
    metric = Metric(name, documentation, "gauge")
    for labels, value in samples:
        metric.add_sample(name, labels, value)
    return metric


class Metrics:
    def __init__(self, counts: Counts | None = None,
                 pending: Callable[[], list[tuple[Labels, int]]] | None = None,
                 settings: MetricsSettings | None = None,
                 cache: _core.ResponseCache | None = None,
                 sampler: SystemSampler | None = None, pinned_pool_bytes: int = 0,
                 summaries: Summaries | None = None) -> None:
        self._counts = counts
        self._pending = pending
        self._settings = settings or MetricsSettings()
        self._cache = cache
        self._sampler = sampler
        self._pinned_pool_bytes = pinned_pool_bytes
        self._summaries = summaries

    def collect(self) -> Iterator[Metric]:
        families = [*self._per_model(), *self._server()]
        if self._settings.summary_latencies and self._summaries is not None:
            families += self._summary_families()
        from triton_python_backend_utils._metrics import collect as python_models_families

        families += python_models_families()  # pb_utils.MetricFamily
        return (family for family in families if family.samples)

    def _per_model(self) -> list[Metric]:
        versions = self._counts() if self._counts is not None else []
        tables = [_REQUESTS]
        if self._settings.counter_latencies:
            tables += [_LATENCIES]
        families = []
        for table in tables:
            for name, (documentation, read) in table.items():
                metric = Metric(name, documentation, "counter")
                for version, _, counts in versions:
                    for labels, value in read(counts):
                        metric.add_sample(name, {**version, **labels}, value)
                families.append(metric)
        if self._settings.counter_latencies:  # Triton's cache counters are latency counters
            for name, (documentation, read) in _CACHE_PER_MODEL.items():
                metric = Metric(name, documentation, "counter")
                for version, cached, counts in versions:
                    if cached:
                        for labels, value in read(counts):
                            metric.add_sample(name, {**version, **labels}, value)
                families.append(metric)
        if self._pending is not None:
            families.append(_gauge(
                "nv_inference_pending_request_count",
                "Instantaneous number of pending requests awaiting execution per-model.",
                *sorted(self._pending(), key=lambda sample: sorted(sample[0].items()))))
        return families

    def _server(self) -> list[Metric]:
        families = [
            _gauge("nv_pinned_memory_pool_total_bytes",
                   "Pinned memory pool total memory size, in bytes",
                   ({}, self._pinned_pool_bytes)),
            _gauge("nv_pinned_memory_pool_used_bytes",
                   "Pinned memory pool used memory size, in bytes",
                   ({}, _core.host_memory_usage()["in_use_bytes"]))]
        sampler = self._sampler
        if sampler is not None and sampler.cpu:
            sample = sampler.latest
            families += [
                _gauge("nv_cpu_utilization", "CPU utilization rate [0.0 - 1.0]",
                       ({}, sample.cpu_utilization)),
                _gauge("nv_cpu_memory_total_bytes", "CPU total memory (RAM), in bytes",
                       ({}, sample.memory_total)),
                _gauge("nv_cpu_memory_used_bytes", "CPU used memory (RAM), in bytes",
                       ({}, sample.memory_used))]
        if sampler is not None and sampler.gpu:
            gpus = sampler.latest.gpus
            families += [
                _gauge(name, documentation, *(({"gpu_uuid": g.uuid}, read(g)) for g in gpus))
                for name, documentation, read in (
                    ("nv_gpu_utilization", "GPU utilization rate [0.0 - 1.0)",
                     lambda g: g.utilization),
                    ("nv_gpu_memory_total_bytes", "GPU total memory, in bytes",
                     lambda g: g.memory_total),
                    ("nv_gpu_memory_used_bytes", "GPU used memory, in bytes",
                     lambda g: g.memory_used),
                    ("nv_gpu_power_usage", "GPU power usage in watts", lambda g: g.power_usage),
                    ("nv_gpu_power_limit", "GPU power management limit in watts",
                     lambda g: g.power_limit))]
            energy = Metric("nv_energy_consumption",
                            "GPU energy consumption in joules since the Triton Server started",
                            "counter")
            for g in gpus:
                energy.add_sample("nv_energy_consumption", {"gpu_uuid": g.uuid}, g.energy)
            families.append(energy)
        if self._cache is not None:
            usage = self._cache.usage()
            families += [_gauge(name, documentation, ({}, read(usage)))
                         for name, (documentation, read) in _CACHE.items()]
        return families

    def _summary_families(self) -> list[Metric]:
        quantiles = [q for q, _ in self._settings.summary_quantiles]
        families = {phase: Metric(name, documentation, "summary")
                    for phase, (name, documentation) in _SUMMARIES.items()}
        for labels, cached, phases in self._summaries(quantiles):
            for phase, (count, total_us, values) in phases.items():
                if (phase == "request" and cached) or (phase.startswith("cache") and not cached):
                    continue  # as Triton: no request summary with the cache (DLIS-4762)
                name = families[phase].name
                families[phase].add_sample(name + "_count", labels, count)
                families[phase].add_sample(name + "_sum", labels, total_us)
                for quantile, value in zip(quantiles, values):
                    families[phase].add_sample(
                        name, {**labels, "quantile": floatToGoString(quantile)}, value)
        return list(families.values())

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
            # Triton's order (prometheus-cpp's): labels by name, a summary's quantile last.
            keys = sorted(sample.labels, key=lambda key: (key == "quantile", key))
            labels = ",".join(f'{key}="{_escape(str(sample.labels[key]))}"' for key in keys)
            lines.append(f"{sample.name}{{{labels}}} {floatToGoString(sample.value)}" if labels
                         else f"{sample.name} {floatToGoString(sample.value)}")
    return "".join(line + "\n" for line in lines).encode()


def _escape(value: str) -> str:
    return value.replace("\\", r"\\").replace("\n", r"\n").replace('"', r'\"')


async def start_metrics_server(metrics: Metrics, host: str, port: int,
                               ssl_context: ssl.SSLContext | None = None,
                               ) -> tuple[web.AppRunner, int]:
    app = web.Application()
    app.add_routes([web.get("/metrics", metrics.handle)])
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    sock = listen(host, port)
    await web.SockSite(runner, sock, ssl_context=ssl_context).start()
    return runner, sock.getsockname()[1]
