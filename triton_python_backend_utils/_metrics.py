"""Custom metrics of Python models (Triton's `pb_utils.MetricFamily` and `Metric`), kept in
this process and written on the server's /metrics with Triton's own families.

    family = pb_utils.MetricFamily(name="tokens", description="...", kind=pb_utils.MetricFamily.COUNTER)
    metric = family.Metric(labels={"model": "m"})   # HISTOGRAM: Metric(labels, buckets=[...])
    metric.increment(1); metric.set(2.0); metric.observe(0.3); metric.value()
"""

from __future__ import annotations

import bisect
import math
import threading

_LOCK = threading.Lock()
_FAMILIES: dict[str, "MetricFamily"] = {}
_KINDS = {0: "counter", 1: "gauge", 2: "histogram"}


def _error(message: str) -> Exception:
    from triton_python_backend_utils import TritonModelException

    return TritonModelException(message)


class MetricFamily:
    COUNTER = 0
    GAUGE = 1
    HISTOGRAM = 2

    def __init__(self, name: str, description: str, kind: int) -> None:
        if kind not in _KINDS:
            raise _error("Error when creating MetricFamily: Unknown metric kind")
        if not isinstance(name, str) or not name:
            raise _error("Error when creating MetricFamily: the name must be a non-empty string")
        self._name, self._description, self._kind = name, str(description), kind
        self._metrics: dict[tuple, Metric] = {}
        with _LOCK:
            existing = _FAMILIES.get(name)
            if existing is not None and existing._kind != kind:
                raise _error(f"Error when creating MetricFamily: a metric family '{name}' of "
                             f"another kind ({_KINDS[existing._kind]}) already exists")
            if existing is not None:  # the same family: its metrics are shared, as Triton's
                self._metrics = existing._metrics
            _FAMILIES[name] = self

    def Metric(self, labels: dict | None = None, buckets: list | None = None) -> "Metric":  # noqa: N802 - Triton's name
        if labels is not None and not isinstance(labels, dict):
            raise _error("Failed to create metric. Labels must be a dictionary.")
        if buckets is not None:
            if not isinstance(buckets, list):
                raise _error("Failed to create metric. Buckets must be a list.")
            if self._kind != self.HISTOGRAM:
                raise _error("Failed to create metric. Unexpected buckets found.")
        elif self._kind == self.HISTOGRAM:
            raise _error("Failed to create metric. Missing required buckets.")
        labels = {str(k): str(v) for k, v in (labels or {}).items()}
        key = tuple(sorted(labels.items()))
        with _LOCK:
            metric = self._metrics.get(key)
            if metric is None:
                metric = self._metrics[key] = Metric(self._kind, labels, buckets)
        return metric


class Metric:
    """One labelled series of a family (made by MetricFamily.Metric)."""

    def __init__(self, kind: int, labels: dict[str, str], buckets: list | None) -> None:
        self._kind, self._labels = kind, labels
        self._value = 0.0
        self._buckets = sorted(float(b) for b in buckets) if buckets is not None else None
        self._counts = [0] * (len(self._buckets) + 1) if buckets is not None else None
        self._sum = 0.0

    def increment(self, value: float) -> None:
        if self._kind == MetricFamily.HISTOGRAM:
            raise _error("Failed to increment metric value: histograms do not support increment")
        if self._kind == MetricFamily.COUNTER and value < 0:
            raise _error("Failed to increment metric value: a counter cannot be incremented "
                         "by a negative value")
        with _LOCK:
            self._value += value

    def set(self, value: float) -> None:
        if self._kind != MetricFamily.GAUGE:
            raise _error("Failed to set metric value: only gauges support set")
        with _LOCK:
            self._value = float(value)

    def observe(self, value: float) -> None:
        if self._kind != MetricFamily.HISTOGRAM:
            raise _error("Failed to observe metric value: only histograms support observe")
        with _LOCK:
            self._counts[bisect.bisect_left(self._buckets, value)] += 1
            self._sum += value

    def value(self) -> float:
        if self._kind == MetricFamily.HISTOGRAM:
            raise _error("Failed to get metric value: histograms do not support value")
        with _LOCK:
            return self._value


def collect():
    """The families as prometheus_client metric families (counters without `_total`)."""
    from prometheus_client.metrics_core import Metric as Family

    with _LOCK:
        snapshot = [(f._name, f._description, f._kind, list(f._metrics.values()))
                    for f in _FAMILIES.values()]
        out = []
        for name, description, kind, metrics in snapshot:
            family = Family(name, description, _KINDS[kind])
            for metric in metrics:
                if kind != MetricFamily.HISTOGRAM:
                    family.add_sample(name, metric._labels, metric._value)
                    continue
                cumulative = 0
                for bound, count in zip(metric._buckets + [math.inf], metric._counts):
                    cumulative += count
                    family.add_sample(f"{name}_bucket", {**metric._labels, "le": _bound(bound)},
                                      cumulative)
                family.add_sample(f"{name}_sum", metric._labels, metric._sum)
                family.add_sample(f"{name}_count", metric._labels, cumulative)
            out.append(family)
    return out


def _bound(value: float) -> str:
    from prometheus_client.utils import floatToGoString

    return floatToGoString(value)
