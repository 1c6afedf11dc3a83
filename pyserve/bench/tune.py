"""`pyserve tune`: sweep a model's batching and instance settings on a running server through
the repository API (config overrides, no restarts), measure each with the bench, and pick the
configuration with the best throughput whose p99 latency stays within the budget."""

from __future__ import annotations

import itertools
import json
import time
from contextlib import ExitStack
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

from google.protobuf import json_format, text_format

from pyserve.bench._run import BenchOptions, LevelResult, prepare, run_level
from pyserve.client import Client


@dataclass
class TuneOptions:
    model: str
    url: str = "127.0.0.1:8001"
    latency_budget_ms: float = 100.0
    budget_minutes: float = 10.0
    concurrency: list[int] | None = None
    max_batch_sizes: list[int] | None = None
    queue_delays_us: list[int] | None = None
    instance_counts: list[int] | None = None
    measurement_interval_ms: int = 1000


@dataclass
class Candidate:
    label: str
    config: object  # inference.ModelConfig
    results: list[LevelResult] = field(default_factory=list)
    error: str = ""


@dataclass
class Point:
    candidate: Candidate
    result: LevelResult


def candidates(base, options: TuneOptions) -> list[Candidate]:
    """The configurations to try: the model without dynamic batching (one instance), then
    every max_batch_size x queue delay x instance count with dynamic batching."""
    if base.max_batch_size <= 0:
        raise ValueError(f"model '{base.name}' does not batch (max_batch_size 0): "
                         "only instance counts could be tuned")
    sizes = options.max_batch_sizes or sorted({base.max_batch_size, 8, 16})
    delays = options.queue_delays_us if options.queue_delays_us is not None else [0, 500, 2000]
    counts = options.instance_counts or [1, 2]
    out = [Candidate("no batching, 1 instance", _variant(base, base.max_batch_size, None, 1))]
    for size, delay, count in itertools.product(sizes, delays, counts):
        out.append(Candidate(f"batch<={size}, delay {delay}us, {count} instance(s)",
                             _variant(base, size, delay, count)))
    return out


def _variant(base, max_batch_size: int, delay_us: int | None, instances: int):
    config = type(base)()
    config.CopyFrom(base)
    config.max_batch_size = max_batch_size
    config.ClearField("dynamic_batching")
    if delay_us is not None:
        config.dynamic_batching.max_queue_delay_microseconds = delay_us
        config.dynamic_batching.preferred_batch_size.append(max_batch_size)
    del config.instance_group[:]
    group = config.instance_group.add()
    group.count = instances
    group.kind = base.instance_group[0].kind if len(base.instance_group) else 0
    return config


@dataclass
class TuneReport:
    model: str
    budget_ms: float
    original: object
    tried: list[Candidate]

    @property
    def points(self) -> list[Point]:
        return [Point(c, r) for c in self.tried for r in c.results if r.errors == 0]

    @property
    def best(self) -> Point | None:
        within = [p for p in self.points if p.result.p99_ms <= self.budget_ms]
        return max(within, key=lambda p: p.result.throughput, default=None)

    @property
    def baseline(self) -> Point | None:
        base = [p for p in self.points if p.candidate is self.tried[0]
                and p.result.p99_ms <= self.budget_ms]
        return max(base, key=lambda p: p.result.throughput, default=None)

    def pareto(self) -> list[Point]:
        """Points no other point beats on both throughput and p99."""
        points = sorted(self.points, key=lambda p: (-p.result.throughput, p.result.p99_ms))
        front, best_p99 = [], float("inf")
        for p in points:
            if p.result.p99_ms < best_p99:
                front.append(p)
                best_p99 = p.result.p99_ms
        return front

    def table(self) -> str:
        lines = [f"{'configuration':<40} {'c':>3} {'infer/s':>9} {'p99 ms':>8} {'budget':>6} "
                 f"{'pareto':>6}"]
        front = {id(p.result) for p in self.pareto()}
        for c in self.tried:
            if c.error:
                lines.append(f"{c.label:<40} failed: {c.error}")
            for r in c.results:
                lines.append(f"{c.label:<40} {r.concurrency:>3} {r.throughput:>9.1f} "
                             f"{r.p99_ms:>8.2f} {'ok' if r.p99_ms <= self.budget_ms else '-':>6} "
                             f"{'*' if id(r) in front else '':>6}")
        best, base = self.best, self.baseline
        if best is not None:
            lines.append(f"\nbest within p99 <= {self.budget_ms:g} ms: {best.candidate.label} at "
                         f"c={best.result.concurrency}: {best.result.throughput:.1f} infer/s, "
                         f"p99 {best.result.p99_ms:.2f} ms")
            if base is not None and base.result.throughput > 0:
                lines.append(f"  {best.result.throughput / base.result.throughput:.2f}x the best "
                             f"without batching ({base.result.throughput:.1f} infer/s at "
                             f"c={base.result.concurrency})")
        return "\n".join(lines)

    def write_json(self, path: Path) -> None:
        rows = [{"configuration": p.candidate.label, **p.result.as_dict(),
                 "within_budget": p.result.p99_ms <= self.budget_ms}
                for p in self.points]
        Path(path).write_text(json.dumps(rows, indent=2) + "\n")

    def plot(self, path: Path) -> None:
        from pyserve.bench._report import plot
        plot(path, {c.label: c.results for c in self.tried if c.results})

    def write_config(self, repository: Path) -> Path:
        path = Path(repository) / self.model / "config.pbtxt"
        path.write_text(text_format.MessageToString(self.best.candidate.config))
        return path


def tune(options: TuneOptions, progress: Callable[[str], None] | None = None) -> TuneReport:
    deadline = time.monotonic() + options.budget_minutes * 60
    with Client(options.url) as client:
        original = client.model_config(options.model)
        tried: list[Candidate] = []
        bench = BenchOptions(options.model, options.url,
                             measurement_interval_ms=options.measurement_interval_ms)
        try:
            for candidate in candidates(original, options):
                if time.monotonic() > deadline:
                    break
                if progress:
                    progress(f"loading {candidate.label}")
                tried.append(candidate)
                try:
                    client.load_model(options.model, config=_json(candidate.config))
                except Exception as e:  # noqa: BLE001 - a refused config is a result too
                    candidate.error = str(e)
                    continue
                with ExitStack() as cleanup:
                    protocol, payloads = prepare(bench, options.url, cleanup)
                    for level in options.concurrency or _levels(candidate.config):
                        if time.monotonic() > deadline:
                            break
                        result = run_level(bench, options.url, protocol, payloads,
                                           "concurrency", level, client, progress)
                        candidate.results.append(result)
                        if result.p99_ms > options.latency_budget_ms:
                            break  # more load only adds latency
        finally:
            client.load_model(options.model, config=_json(original))
    return TuneReport(options.model, options.latency_budget_ms, original, tried)


def _levels(config) -> list[int]:
    top = max(config.max_batch_size * max(1, sum(g.count for g in config.instance_group)), 1)
    return sorted({1, min(4, top), top, 2 * top})


def _json(config) -> str:
    return json_format.MessageToJson(config, preserving_proto_field_name=True)
