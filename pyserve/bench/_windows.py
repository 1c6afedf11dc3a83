"""Measurement windows as perf_analyzer defines them: fixed-length windows, stable once three
consecutive ones agree within 10% on throughput and average latency; at most ten, after which
the level is reported as unstable. Pure functions over per-window samples."""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np


@dataclass
class Window:
    """What completed during one window: latencies (seconds) of the successes, errors, and
    the load generator's CPU seconds."""
    seconds: float
    latencies: np.ndarray = field(default_factory=lambda: np.empty(0))
    errors: int = 0
    cpu_seconds: float = 0.0

    @property
    def throughput(self) -> float:
        return len(self.latencies) / self.seconds

    @property
    def avg_latency(self) -> float:
        return float(self.latencies.mean()) if len(self.latencies) else 0.0


def is_stable(windows: list[Window], count: int = 3, threshold: float = 0.10) -> bool:
    """The last `count` windows agree within ±threshold of their mean, on throughput and on
    average latency, and none is empty."""
    if len(windows) < count:
        return False
    last = windows[-count:]
    for values in ([w.throughput for w in last], [w.avg_latency for w in last]):
        mean = sum(values) / count
        if mean <= 0 or any(abs(v - mean) > threshold * mean for v in values):
            return False
    return True


@dataclass
class Summary:
    throughput: float
    avg_ms: float
    p50_ms: float
    p90_ms: float
    p95_ms: float
    p99_ms: float
    errors: int
    requests: int
    cpu_us_per_request: float


def summarize(windows: list[Window]) -> Summary:
    """Merge windows: throughput over their total time, percentiles over all their latencies."""
    latencies = np.concatenate([w.latencies for w in windows]) if windows else np.empty(0)
    seconds = sum(w.seconds for w in windows)
    requests = len(latencies)
    if requests:
        p50, p90, p95, p99 = np.percentile(latencies, [50, 90, 95, 99]) * 1e3
        avg = float(latencies.mean()) * 1e3
    else:
        p50 = p90 = p95 = p99 = avg = 0.0
    cpu = sum(w.cpu_seconds for w in windows)
    done = requests + sum(w.errors for w in windows)
    return Summary(requests / seconds if seconds else 0.0, avg, float(p50), float(p90),
                   float(p95), float(p99), sum(w.errors for w in windows), requests,
                   cpu / done * 1e6 if done else 0.0)
