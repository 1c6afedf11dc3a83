"""One benchmark run: for each load level, start the worker processes, collect windows
until three agree (or ten have passed), read the server's statistics at every window
boundary, and summarize."""

from __future__ import annotations

import multiprocessing
import os
import queue as queue_module
import secrets
import time
from contextlib import ExitStack
from dataclasses import asdict, dataclass, field, replace
from typing import Callable

import numpy as np

from pyserve.bench._inputs import (Payload, encode, in_shared_memory, make_inputs, output_bytes,
                                   parse_shapes, region_bytes)
from pyserve.bench._load import WorkerPlan, native_available, run_worker
from pyserve.bench._windows import Window, is_stable, summarize
from pyserve.client import Client, InferenceServerError


@dataclass
class BenchOptions:
    model: str
    url: str = "127.0.0.1:8001"
    protocol: str | None = None
    version: str = ""
    concurrency: list[int] = field(default_factory=lambda: [1])
    request_rate: list[float] = field(default_factory=list)
    batch_size: int = 1
    shapes: list[str] = field(default_factory=list)
    input_data: str = "random"
    streaming: bool = False
    shared_memory: str = "none"  # or "system": inputs and outputs in a registered region
    output_shared_memory_size: int = 100 * 1024  # per output the model does not size
    measurement_interval_ms: int = 5000
    max_windows: int = 10
    stability: float = 0.10
    processes: int = 0          # worker processes per level; 0 = one (native), else half the cores
    generator: str = "auto"     # native (pyserve._loadgen), python, or auto: native where built
    server_stats: bool = True


@dataclass
class LevelResult:
    url: str
    protocol: str
    concurrency: int | None
    request_rate: float | None
    throughput: float
    avg_ms: float
    p50_ms: float
    p90_ms: float
    p95_ms: float
    p99_ms: float
    errors: int
    requests: int
    stable: bool
    windows: int
    processes: int
    generator: str
    client_cpu_us_per_request: float
    server_queue_us: float | None = None
    server_compute_input_us: float | None = None
    server_compute_infer_us: float | None = None
    server_compute_output_us: float | None = None
    server_request_us: float | None = None
    server_throughput: float | None = None  # successes/s the server counted meanwhile

    def as_dict(self) -> dict:
        return asdict(self)


def _protocol(url: str, protocol: str | None) -> str:
    from pyserve.client import parse_url
    return parse_url(url, protocol)[0]


def prepare(options: BenchOptions, url: str, cleanup: ExitStack
            ) -> tuple[str, tuple[Payload, ...]]:
    """The protocol and the encoded requests. The client that made them (and, with shared
    memory, the region it registered) stay open until `cleanup` closes."""
    protocol = _protocol(url, options.protocol)
    if options.streaming and protocol != "grpc":
        raise ValueError(f"--streaming needs gRPC, and {url} is {protocol}")
    client = cleanup.enter_context(Client(url, protocol=protocol if "://" not in url else None))
    inputs = make_inputs(client, options.model, options.version, options.batch_size,
                         parse_shapes(options.shapes), options.input_data)
    if options.shared_memory != "system":
        return protocol, tuple(encode(options.model, options.version, i) for i in inputs)
    outputs = output_bytes(client, options.model, options.version, options.batch_size,
                           options.output_shared_memory_size)
    name = f"pyserve_bench_{secrets.token_hex(4)}"
    region = cleanup.enter_context(client.shared_memory(name, region_bytes(inputs, outputs),
                                                        key=name))
    return protocol, in_shared_memory(client, region, options.model, options.version,
                                      inputs, outputs)


def run(options: BenchOptions, url: str | None = None,
        progress: Callable[[str], None] | None = None) -> list[LevelResult]:
    """Every level of `options` against `url` (default options.url)."""
    url = url or options.url
    with ExitStack() as cleanup:
        protocol, payloads = prepare(options, url, cleanup)
        levels = ([("concurrency", c) for c in options.concurrency] if not options.request_rate
                  else [("request_rate", r) for r in options.request_rate])
        stats_client = cleanup.enter_context(
            Client(url, protocol=protocol if "://" not in url else None))
        return [run_level(options, url, protocol, payloads, kind, value, stats_client, progress)
                for kind, value in levels]


def _statistics(client: Client, options: BenchOptions):
    if not options.server_stats:
        return None
    try:
        stats = client.statistics(options.model, options.version)
    except InferenceServerError:
        return None
    return stats[0] if len(stats) == 1 else None


def _next_report(reports, workers, timeout: float):
    """The next item a worker reports; an error, rather than a long wait, once one has died."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            return reports.get(timeout=1.0)
        except queue_module.Empty:
            dead = [w.exitcode for w in workers if w.exitcode not in (None, 0)]
            if dead:
                raise RuntimeError(f"a load generator process failed (exit code {dead[0]}); "
                                   f"its error is above") from None
            if time.monotonic() > deadline:
                raise RuntimeError(f"no report from the load generator in {timeout:.0f} s")


def _split(total: int, parts: int) -> list[int]:
    return [total // parts + (1 if i < total % parts else 0) for i in range(parts)]


def _generator(options: BenchOptions, protocol: str) -> str:
    if options.generator == "python":
        return "python"
    if native_available(protocol):
        return "native"
    if options.generator == "native":
        raise ValueError(f"this build of pyserve has no native {protocol} load generator "
                         f"(it needs gRPC C++, and cpp-httplib for HTTP, at build time)")
    return "python"


def run_level(options: BenchOptions, url: str, protocol: str, payloads, kind: str, value,
              stats_client: Client, progress=None) -> LevelResult:
    generator = _generator(options, protocol)
    # native threads need no more than one process; Python threads share a GIL per process,
    # so they get half the cores (the server usually shares the machine, and a process per
    # core takes CPU from it: on 2 cores one process measured 10-20% higher rates)
    default_processes = 1 if generator == "native" else (os.cpu_count() or 1) // 2
    window_s = options.measurement_interval_ms / 1000
    plan = WorkerPlan(url, protocol, payloads, streaming=options.streaming,
                      native=generator == "native", window=window_s)
    if kind == "concurrency":
        processes = max(1, min(int(value), options.processes or default_processes))
        shares = [replace(plan, concurrency=c) for c in _split(int(value), processes)]
    else:
        processes = max(1, options.processes or 1)
        shares = [replace(plan, request_rate=float(value) / processes)] * processes
    context = multiprocessing.get_context("spawn")
    reports, stop = context.Queue(), context.Event()
    start_at = context.Value("d", 0.0, lock=False)
    workers = [context.Process(target=run_worker, args=(share, reports, stop, start_at),
                               daemon=True) for share in shares]
    for worker in workers:
        worker.start()
    windows: list[Window] = []
    marks = []  # (monotonic time, server statistics) read at each window's end
    received: dict[int, list] = {}
    finished = 0
    try:
        for _ in workers:  # every worker sending (spawning one takes seconds on a busy machine)
            if _next_report(reports, workers, 120) is None:
                finished += 1
        # window 0 starts after a warm-up of one window (at most 2 s)
        start_at.value = time.monotonic() + min(window_s, 2.0)
        time.sleep(max(0.0, start_at.value - time.monotonic()))
        marks.append((time.monotonic(), _statistics(stats_client, options)))
        for index in range(options.max_windows):
            while len(received.get(index, [])) < len(workers) - finished:
                item = _next_report(reports, workers, window_s + 60)
                if item is None:
                    finished += 1
                    continue
                received.setdefault(item[0], []).append(item)
            marks.append((time.monotonic(), _statistics(stats_client, options)))
            parts = received.pop(index, [])
            windows.append(Window(window_s, np.concatenate([p[1] for p in parts]) if parts
                                  else np.empty(0), sum(p[2] for p in parts),
                                  sum(p[3] for p in parts)))
            if progress is not None:
                w = windows[-1]
                progress(f"{kind}={value} window {index + 1}: {w.throughput:.1f} infer/s, "
                         f"avg {w.avg_latency * 1e3:.2f} ms")
            if is_stable(windows, 3, options.stability):
                break
    finally:
        stop.set()
        deadline = time.monotonic() + 30
        while finished < len(workers) and time.monotonic() < deadline:
            try:
                if reports.get(timeout=1) is None:
                    finished += 1
            except queue_module.Empty:
                if not any(w.is_alive() for w in workers):
                    break
        for worker in workers:
            worker.join(5)
            if worker.is_alive():
                worker.kill()
    stable = is_stable(windows, 3, options.stability)
    chosen = windows[-3:]
    summary = summarize(chosen)
    result = LevelResult(
        url=url, protocol=protocol,
        concurrency=int(value) if kind == "concurrency" else None,
        request_rate=float(value) if kind == "request_rate" else None,
        throughput=summary.throughput, avg_ms=summary.avg_ms, p50_ms=summary.p50_ms,
        p90_ms=summary.p90_ms, p95_ms=summary.p95_ms, p99_ms=summary.p99_ms,
        errors=summary.errors, requests=summary.requests, stable=stable, windows=len(windows),
        processes=len(workers), generator=generator, client_cpu_us_per_request=summary.cpu_us_per_request)
    (read_from, first), (read_to, last) = marks[len(marks) - 1 - len(chosen)], marks[-1]
    if first is not None and last is not None:
        delta = (last - first).inference_stats
        result.server_queue_us = delta.queue.mean_us
        result.server_compute_input_us = delta.compute_input.mean_us
        result.server_compute_infer_us = delta.compute_infer.mean_us
        result.server_compute_output_us = delta.compute_output.mean_us
        result.server_request_us = delta.success.mean_us
        # over the time between the two reads, which trail the windows' ends by a little
        result.server_throughput = (delta.success.count / (read_to - read_from)
                                    if read_to > read_from else None)
    return result

