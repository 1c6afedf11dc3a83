"""TorchServe 0.12's metrics: metrics_mode, metrics_config (metrics.yaml), the frontend's
metrics (ts_metrics) and the backend's (model_metrics, what handlers add through
`context.metrics`).

In `prometheus` mode the metrics API serves every metric of the yaml as TorchServe's Prometheus
simpleclient 0.9 writes it (names as configured, labels the yaml's dimensions with Hostname last,
"Torchserve prometheus <type> metric with unit: <unit>", Java's number format); a handler's
metric that the yaml does not name reaches it only with model_metrics_auto_detect=true. In
`log` mode the metrics are written as TorchServe's metric log lines (loggers TS_METRICS and
MODEL_METRICS, files logs/ts_metrics.log and logs/model_metrics.log) and the API serves
nothing; `legacy` serves ts_inference_requests_total, ts_inference_latency_microseconds and
ts_queue_latency_microseconds and logs the rest.
"""

from __future__ import annotations

import decimal
import logging
import math
import os
import socket
import threading
import time
from dataclasses import dataclass
from pathlib import Path

from pyserve.errors import ServerError
from pyserve.periodic import Periodic

log = logging.getLogger("pyserve")
ts_metrics_log = logging.getLogger("TS_METRICS")
model_metrics_log = logging.getLogger("MODEL_METRICS")

# TorchServe 0.12's ts/configs/metrics.yaml, the default metrics_config.
DEFAULT_CONFIG = {
    "ts_metrics": {
        "counter": [
            {"name": "Requests2XX", "unit": "Count", "dimensions": ["Level", "Hostname"]},
            {"name": "Requests4XX", "unit": "Count", "dimensions": ["Level", "Hostname"]},
            {"name": "Requests5XX", "unit": "Count", "dimensions": ["Level", "Hostname"]},
            {"name": "ts_inference_requests_total", "unit": "Count",
             "dimensions": ["model_name", "model_version", "hostname"]},
            {"name": "ts_inference_latency_microseconds", "unit": "Microseconds",
             "dimensions": ["model_name", "model_version", "hostname"]},
            {"name": "ts_queue_latency_microseconds", "unit": "Microseconds",
             "dimensions": ["model_name", "model_version", "hostname"]},
        ],
        "gauge": [
            {"name": "QueueTime", "unit": "Milliseconds", "dimensions": ["Level", "Hostname"]},
            {"name": "WorkerThreadTime", "unit": "Milliseconds",
             "dimensions": ["Level", "Hostname"]},
            {"name": "WorkerLoadTime", "unit": "Milliseconds",
             "dimensions": ["WorkerName", "Level", "Hostname"]},
            *({"name": name, "unit": unit, "dimensions": ["Level", "Hostname"]}
              for name, unit in (("CPUUtilization", "Percent"), ("MemoryUsed", "Megabytes"),
                                 ("MemoryAvailable", "Megabytes"),
                                 ("MemoryUtilization", "Percent"), ("DiskUsage", "Gigabytes"),
                                 ("DiskUtilization", "Percent"), ("DiskAvailable", "Gigabytes"))),
            *({"name": name, "unit": unit, "dimensions": ["Level", "DeviceId", "Hostname"]}
              for name, unit in (("GPUMemoryUtilization", "Percent"),
                                 ("GPUMemoryUsed", "Megabytes"), ("GPUUtilization", "Percent"))),
        ],
    },
    "model_metrics": {
        "gauge": [
            {"name": "HandlerTime", "unit": "ms", "dimensions": ["ModelName", "Level"]},
            {"name": "PredictionTime", "unit": "ms", "dimensions": ["ModelName", "Level"]},
        ],
    },
}
STATUS_CLASSES = ("Requests2XX", "Requests4XX", "Requests5XX")
LEGACY = ("ts_inference_requests_total", "ts_inference_latency_microseconds",
          "ts_queue_latency_microseconds")
# simpleclient's default histogram buckets.
BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.075, 0.1, 0.25, 0.5, 0.75, 1.0, 2.5, 5.0, 7.5, 10.0)
TYPES = ("counter", "gauge", "histogram")
FRONTEND = None  # the running server's FrontendMetrics, for what the backend measures


@dataclass(frozen=True)
class Spec:
    name: str
    kind: str  # counter, gauge or histogram
    unit: str
    dimensions: tuple[str, ...]


def load_config(path: Path | None) -> tuple[dict[str, Spec], dict[str, Spec]]:
    """(frontend specs, backend specs) of a metrics.yaml (TorchServe's default without one);
    backend metrics get the Hostname dimension last, as TorchServe's frontend adds it."""
    config = DEFAULT_CONFIG
    if path is not None:
        import yaml

        try:
            config = yaml.safe_load(Path(path).read_text(encoding="utf-8")) or {}
        except (OSError, yaml.YAMLError) as e:
            raise ServerError(f"metrics_config {path}: {e}") from None

    def section(key: str, hostname: bool) -> dict[str, Spec]:
        specs = {}
        for kind, entries in ((config.get(key) or {})).items():
            if kind not in TYPES:
                raise ServerError(f"metrics_config: unknown metric type '{kind}' in {key}")
            for entry in entries or []:
                try:
                    name, unit = str(entry["name"]), str(entry["unit"])
                    dimensions = [str(d) for d in entry.get("dimensions") or []]
                except (KeyError, TypeError):
                    raise ServerError(f"metrics_config: {key} {kind} entries need a name, a "
                                      f"unit and dimensions: {entry}") from None
                if hostname:
                    dimensions.append("Hostname")
                specs[name] = Spec(name, kind, unit, tuple(dimensions))
        return specs

    return section("ts_metrics", False), section("model_metrics", True)


class Family:
    """One metric's samples by label values: counters add, gauges keep the last value,
    histograms count observations in simpleclient's default buckets."""

    def __init__(self, spec: Spec) -> None:
        self.spec = spec
        self.samples: dict[tuple, object] = {}
        self._lock = threading.Lock()

    def update(self, values: tuple, value: float) -> None:
        if len(values) != len(self.spec.dimensions):
            raise ValueError(f"Incorrect number of labels for {self.spec.name}: "
                             f"{list(values)} for {list(self.spec.dimensions)}")
        with self._lock:
            if self.spec.kind == "counter":
                self.samples[values] = self.samples.get(values, 0.0) + value
            elif self.spec.kind == "gauge":
                self.samples[values] = float(value)
            else:
                counts = self.samples.setdefault(values, [0] * (len(BUCKETS) + 1) + [0.0])
                for index, bound in enumerate(BUCKETS):
                    if value <= bound:
                        counts[index] += 1
                counts[len(BUCKETS)] += 1  # +Inf, the count
                counts[-1] += value

    def lines(self, extra: dict | None = None) -> list[str]:
        """The exposition; `extra`: counter samples kept elsewhere, added to these."""
        spec = self.spec
        out = [f"# HELP {spec.name} Torchserve prometheus {spec.kind} metric with unit: "
               f"{spec.unit}", f"# TYPE {spec.name} {spec.kind}"]
        with self._lock:
            samples = {k: (list(v) if isinstance(v, list) else v)
                       for k, v in self.samples.items()}
        for key, value in (extra or {}).items():
            samples[key] = samples.get(key, 0.0) + value
        for values, value in sorted(samples.items()):
            labels = ",".join(f'{n}="{_escape(str(v))}"' for n, v in zip(spec.dimensions,
                                                                          values))
            if spec.kind != "histogram":
                out.append(f"{spec.name}{{{labels}}} {java_double(value)}")
                continue
            prefix = labels + "," if labels else ""
            for bound, count in zip([*BUCKETS, math.inf], value[:-1]):
                out.append(f'{spec.name}_bucket{{{prefix}le="{java_double(bound)}"}} '
                           f"{java_double(count)}")
            out.append(f"{spec.name}_count{{{labels}}} {java_double(value[len(BUCKETS)])}")
            out.append(f"{spec.name}_sum{{{labels}}} {java_double(value[-1])}")
        return out


class FrontendMetrics:
    """The frontend's metrics (ts_metrics of the yaml) and the exposition of both kinds.
    Per-request counts are kept where the request is in Python already; the native inference
    API's come from its own counters (`sources`) when scraped."""

    def __init__(self, mode: str = "prometheus", config: Path | None = None,
                 auto_detect: bool = False, hostname: str | None = None) -> None:
        self.mode = mode
        self.hostname = hostname or socket.gethostname()
        frontend, self.backend_specs = load_config(config)
        self.families = {name: Family(spec) for name, spec in frontend.items()}
        self.auto_detect = auto_detect
        # () -> [(key, requests, latency µs, queue µs)], the key "MODEL" or "MODEL/VERSION".
        self.sources: list = []
        # () -> (2XX, 4XX, 5XX): the answers given without Python (the native predictions).
        self.status_sources: list = []
        self._native_seen: dict[str, tuple[int, int]] = {}
        self._status_logged: dict[int, tuple[int, int, int]] = {}

    def served(self, name: str) -> bool:
        """Whether `name` goes to the metrics API (else, if at all, to the log)."""
        return self.mode == "prometheus" or (self.mode == "legacy" and name in LEGACY)

    def update(self, name: str, values: tuple, value: float) -> None:
        """A frontend metric's new value; `values` without the Hostname (added last)."""
        family = self.families.get(name)
        if family is None:
            return  # not in metrics_config: TorchServe records nothing
        values = (*values, self.hostname)
        if self.served(name):
            try:
                family.update(values, value)
            except ValueError as e:
                log.error("Failed to update frontend metric %s: %s", name, e)
        else:
            ts_metrics_log.info(log_line(family.spec, values, value))

    def request(self, model: str, version: str | None) -> None:
        self.update("ts_inference_requests_total", (model, version or "default"), 1)

    def latency(self, model: str, version: str | None, total_us: float, queue_us: float):
        labels = (model, version or "default")
        self.update("ts_inference_latency_microseconds", labels, total_us)
        self.update("ts_queue_latency_microseconds", labels, queue_us)
        self.update("QueueTime", ("Host",), float(int(queue_us // 1000)))

    def response(self, status: int) -> None:
        """Requests2XX/4XX/5XX: every answer of the three APIs, as NettyUtils counts them."""
        if 200 <= status < 300:
            self.update("Requests2XX", ("Host",), 1)
        elif 400 <= status < 500:
            self.update("Requests4XX", ("Host",), 1)
        elif status >= 500:
            self.update("Requests5XX", ("Host",), 1)

    def log_native_answers(self) -> None:
        """Log and legacy modes write a Requests2XX/4XX/5XX line per answer, as TorchServe does.
        The native path counts its answers without Python; their lines are written here, for
        what it counted since the last call."""
        if self.served("Requests2XX"):
            return  # the exposition reads the native counts itself
        for index, source in enumerate(self.status_sources):
            counts = tuple(source())
            before = self._status_logged.get(index, (0, 0, 0))
            self._status_logged[index] = counts
            for name, now, then in zip(STATUS_CLASSES, counts, before):
                for _ in range(now - then):
                    self.update(name, ("Host",), 1)

    def exposition(self, names: set[str] | None = None) -> str:
        if self.mode == "log":
            return ""
        from pyserve.backends.torchserve import all_metrics

        native = self._native()
        lines: list[str] = []
        for name, family in self.families.items():
            if (names and name not in names) or not self.served(name):
                continue
            lines += family.lines(native.get(name))
        if self.mode == "prometheus":
            for name, family in _backend_families(all_metrics(), self.backend_specs,
                                                  self.auto_detect).items():
                if not names or name in names:
                    lines += family.lines()
        return "\n".join(lines) + "\n" if lines else ""

    def _native(self) -> dict[str, dict[tuple, float]]:
        """The native inference API's counters as samples of the ts_* counters and of
        Requests2XX/4XX/5XX; QueueTime from the requests it served since the last scrape (their
        mean time in the queue)."""
        extra: dict[str, dict[tuple, float]] = {name: {} for name in LEGACY}
        for source in self.status_sources:
            for name, count in zip(STATUS_CLASSES, source()):
                if count:
                    labels = ("Host", self.hostname)
                    extra.setdefault(name, {})[labels] = extra.get(name, {}).get(labels, 0.0) + count
        queued = answered = 0
        for source in self.sources:
            for key, requests, latency_us, queue_us in source():
                model, _, version = key.partition("/")
                labels = (model, version or "default", self.hostname)
                for name, value in zip(LEGACY, (requests, latency_us, queue_us)):
                    extra[name][labels] = extra[name].get(labels, 0.0) + value
                seen_requests, seen_queue = self._native_seen.get(key, (0, 0))
                if requests > seen_requests:
                    answered += requests - seen_requests
                    queued += queue_us - seen_queue
                self._native_seen[key] = (requests, queue_us)
        if answered:
            self.update("QueueTime", ("Host",), float(int(queued / answered // 1000)))
        return extra


def _backend_families(caches, specs: dict[str, Spec], auto_detect: bool) -> dict[str, Family]:
    """The handlers' metrics of every model, by name: those metrics.yaml names (its type and
    unit), others only with model_metrics_auto_detect (their own)."""
    families: dict[str, Family] = {}
    for cache in caches:
        for name, kind, unit, dimension_names, samples in cache.snapshot():
            spec = specs.get(name)
            if spec is None:
                if not auto_detect:
                    continue
                spec = Spec(name, kind if kind in TYPES else "gauge", unit,
                            tuple(dimension_names))
            family = families.get(name) or families.setdefault(name, Family(spec))
            for values, value in samples.items():
                if len(values) != len(spec.dimensions) or \
                        isinstance(value, list) != (spec.kind == "histogram"):
                    continue  # refused (and logged) when it was added
                if isinstance(value, list):  # a histogram's observations
                    family.samples[values] = value
                elif spec.kind == "counter":
                    family.samples[values] = family.samples.get(values, 0.0) + value
                else:
                    family.samples[values] = value
    return families


def log_line(spec: Spec, values: tuple, value: float, request_id: str | None = None) -> str:
    """TorchServe's LogMetric line: NAME.UNIT:VALUE|#DIM:V,...|#hostname:H[,requestID:R],
    timestamp:SECONDS (the last value is the Hostname)."""
    dimensions = ",".join(f"{n}:{v}" for n, v in zip(spec.dimensions[:-1], values[:-1]))
    line = f"{spec.name}.{spec.unit}:{java_double(value)}|#{dimensions}|#hostname:{values[-1]}"
    if request_id is not None:
        line += f",requestID:{request_id}"
    return line + f",timestamp:{int(time.time())}"


def java_double(value: float) -> str:
    """Java's Double.toString, as simpleclient writes sample values: 1.0, 0.25, 1.2345E7."""
    value = float(value)
    if math.isnan(value):
        return "NaN"
    if math.isinf(value):
        return "+Inf" if value > 0 else "-Inf"
    if value == 0 or 1e-3 <= abs(value) < 1e7:
        return repr(value)
    sign, digits, exponent = decimal.Decimal(repr(value)).normalize().as_tuple()
    text = "".join(map(str, digits))
    mantissa = text[0] + "." + (text[1:] or "0")
    return ("-" if sign else "") + f"{mantissa}E{exponent + len(digits) - 1}"


def _escape(text: str) -> str:
    return text.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")


def configure_log_files(directory: Path) -> None:
    """log mode: TS_METRICS and MODEL_METRICS to ts_metrics.log and model_metrics.log in
    `directory` (TorchServe's LOG_LOCATION, ./logs by default), as its log4j2.xml does."""
    directory.mkdir(parents=True, exist_ok=True)
    for logger, filename in ((ts_metrics_log, "ts_metrics.log"),
                             (model_metrics_log, "model_metrics.log")):
        if any(getattr(h, "baseFilename", None) == str(directory / filename)
               for h in logger.handlers):
            continue
        handler = logging.FileHandler(directory / filename, encoding="utf-8")
        handler.setFormatter(logging.Formatter("%(asctime)s - %(message)s"))
        logger.addHandler(handler)
        logger.setLevel(logging.INFO)
        logger.propagate = False


class SystemMetrics(Periodic):
    """TorchServe's system metrics (ts/metrics/system_metrics.py, through psutil) every
    metric_time_interval seconds."""

    def __init__(self, metrics: FrontendMetrics, interval_s: float) -> None:
        super().__init__(self.collect, interval_s, "ps-ts-system-metrics")
        self._metrics = metrics

    def start(self) -> None:
        try:
            import psutil  # noqa: F401
        except ImportError:
            log.warning("system metrics need psutil (pip install psutil); not collected")
            return
        super().start()

    def collect(self) -> None:
        import psutil

        memory = psutil.virtual_memory()
        disk = psutil.disk_usage("/")
        for name, value in (("CPUUtilization", psutil.cpu_percent()),
                            ("MemoryUsed", memory.used / (1024 * 1024)),
                            ("MemoryAvailable", memory.available / (1024 * 1024)),
                            ("MemoryUtilization", memory.percent),
                            ("DiskUsage", disk.used / 1024 ** 3),
                            ("DiskUtilization", disk.percent),
                            ("DiskAvailable", disk.free / 1024 ** 3)):
            self._metrics.update(name, ("Host",), float(value))


def log_directory() -> Path:
    return Path(os.environ.get("LOG_LOCATION") or "logs")
