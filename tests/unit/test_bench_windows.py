"""pyserve bench's measurement windows: perf_analyzer's stability rule and the summaries."""

from __future__ import annotations

import numpy as np
import pytest

from pyserve.bench._inputs import parse_shapes
from pyserve.bench._windows import Window, is_stable, summarize


def window(count: int, latency_ms: float, seconds: float = 1.0, errors: int = 0,
           cpu: float = 0.0) -> Window:
    return Window(seconds, np.full(count, latency_ms / 1e3), errors, cpu)


def test_three_windows_within_ten_percent_are_stable():
    assert is_stable([window(100, 1.0), window(105, 1.05), window(96, 0.97)])


def test_fewer_than_three_windows_are_not_stable():
    assert not is_stable([window(100, 1.0), window(100, 1.0)])


def test_throughput_outside_ten_percent_is_unstable():
    assert not is_stable([window(100, 1.0), window(100, 1.0), window(125, 1.0)])


def test_latency_outside_ten_percent_is_unstable():
    assert not is_stable([window(100, 1.0), window(100, 1.0), window(100, 1.3)])


def test_only_the_last_three_windows_count():
    assert is_stable([window(10, 9.0), window(100, 1.0), window(100, 1.0), window(100, 1.0)])


def test_empty_windows_are_never_stable():
    assert not is_stable([window(0, 0.0)] * 3)


def test_threshold_is_configurable():
    windows = [window(100, 1.0), window(100, 1.0), window(125, 1.0)]
    assert is_stable(windows, threshold=0.2)


def test_summary_merges_windows():
    windows = [Window(1.0, np.array([0.001, 0.002]), 1, 0.003),
               Window(1.0, np.array([0.003, 0.004]), 0, 0.003)]
    summary = summarize(windows)
    assert summary.throughput == pytest.approx(2.0)
    assert summary.avg_ms == pytest.approx(2.5)
    assert summary.p50_ms == pytest.approx(2.5)
    assert summary.p99_ms == pytest.approx(3.97)
    assert summary.errors == 1 and summary.requests == 4
    assert summary.cpu_us_per_request == pytest.approx(6000 / 5)


def test_shapes():
    assert parse_shapes(["IN:3,4", "ns:x:2"]) == {"IN": [3, 4], "ns:x": [2]}
    with pytest.raises(ValueError):
        parse_shapes(["nocolon"])
