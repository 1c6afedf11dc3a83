"""The load generator's worker process.

The requests are encoded once by Python. Where the package was built with gRPC C++ (and
cpp-httplib, for HTTP), they are sent by native threads (pyserve._loadgen): each thread owns a
connection, sends, waits, times, and never takes the GIL, as perf_analyzer's threads do.
Elsewhere Python threads send them through grpcio or http.client (which release the GIL
while waiting). Either way the worker process buckets completions into windows by time
(CLOCK_MONOTONIC is shared by all processes) and reports each finished window to the parent
with the process's CPU time for it: the generator's whole cost, native threads included.
"""

from __future__ import annotations

import collections
import importlib.util
import multiprocessing
import queue
import ssl
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

import numpy as np

from pyserve.bench._inputs import Payload

_STREAM_ERROR_TAG = 0x0A  # ModelStreamInferResponse.error_message (field 1, length-delimited)
_OPEN_LOOP_THREADS = 64   # senders for request-rate mode; a saturated pool shows as latency


@dataclass(frozen=True)
class WorkerPlan:
    url: str
    protocol: str
    payloads: tuple[Payload, ...]
    concurrency: int = 0        # threads each keeping one request in flight
    request_rate: float = 0.0   # or: requests per second sent at fixed intervals
    streaming: bool = False
    native: bool = True         # send from native threads (pyserve._loadgen) when built
    window: float = 1.0         # seconds per window
    timeout: float = 60.0


def native_available(protocol: str) -> bool:
    """Whether this build has the native load generator for `protocol`."""
    if importlib.util.find_spec("pyserve._loadgen") is None:
        return False
    from pyserve import _loadgen
    return protocol == "grpc" or bool(_loadgen.HTTP)


class _NativeLoad:
    def __init__(self, plan: WorkerPlan):
        from pyserve import _loadgen
        from pyserve.client._client import parse_url

        _, tls, host, port = parse_url(plan.url, plan.protocol)
        if plan.protocol == "http":
            kind = "http"
            payloads = [(p.http_path, p.http_body, list(p.http_headers)) for p in plan.payloads]
        else:
            kind = "grpc-stream" if plan.streaming else "grpc"
            payloads = [p.grpc for p in plan.payloads]
        self._generator = _loadgen.Generator(
            kind, host, port, tls, plan.timeout, payloads,
            plan.concurrency or _OPEN_LOOP_THREADS, plan.request_rate)
        self._generator.start()

    def take(self) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        return self._generator.take()

    def close(self) -> None:
        self._generator.stop()


def _channel(host: str, port: int, tls: bool):
    """A gRPC channel for the Python senders, over TLS (the system's roots) for grpcs://."""
    import grpc

    options = [("grpc.max_send_message_length", 2**31 - 1),
               ("grpc.max_receive_message_length", 2**31 - 1)]
    if tls:
        return grpc.secure_channel(f"{host}:{port}", grpc.ssl_channel_credentials(), options)
    return grpc.insecure_channel(f"{host}:{port}", options)


def _sender(plan: WorkerPlan):
    """A function that sends payload i and returns True on success (raises on transport failure)."""
    from pyserve.client._client import parse_url

    kind, tls, host, port = parse_url(plan.url, plan.protocol)
    if kind == "grpc":
        import grpc

        channel = _channel(host, port, tls)
        infer = channel.unary_unary("/inference.GRPCInferenceService/ModelInfer")
        messages = [p.grpc for p in plan.payloads]

        def send(i: int) -> bool:
            try:
                infer(messages[i], timeout=plan.timeout)
                return True
            except grpc.RpcError:
                return False
        return send, channel.close
    from pyserve.client._http import HttpTransport
    from pyserve.client.errors import InferenceServerError

    transport = HttpTransport(host, port,
                              ssl_context=ssl.create_default_context() if tls else None,
                              pool_size=max(plan.concurrency, _OPEN_LOOP_THREADS))
    bodies = [(p.http_path, p.http_body, dict(p.http_headers)) for p in plan.payloads]

    def send(i: int) -> bool:
        path, body, headers = bodies[i]
        try:
            return transport.send("POST", path, body, headers, plan.timeout).status == 200
        except InferenceServerError:
            return False
    return send, transport.close


def _stream_sender(plan: WorkerPlan):
    """Per thread: one ModelStreamInfer stream, one request in flight on it."""
    from pyserve.client._client import parse_url
    import grpc

    kind, tls, host, port = parse_url(plan.url, plan.protocol)
    channel = _channel(host, port, tls)
    method = channel.stream_stream("/inference.GRPCInferenceService/ModelStreamInfer")
    messages = [p.grpc for p in plan.payloads]
    local = threading.local()

    def send(i: int) -> bool:
        if not hasattr(local, "requests"):
            local.requests = queue.SimpleQueue()
            local.responses = method(iter(local.requests.get, None))
        local.requests.put(messages[i])
        try:
            response = next(local.responses)
        except (grpc.RpcError, StopIteration):
            del local.requests  # the stream is gone: the next request opens a new one
            return False
        return not (response and response[0] == _STREAM_ERROR_TAG)
    return send, channel.close


class _PythonLoad:
    """The same load from Python threads, for builds without the native generator."""

    def __init__(self, plan: WorkerPlan):
        self._plan = plan
        self._send, self._close = (_stream_sender if plan.streaming else _sender)(plan)
        # append and popleft are atomic: taken records leave, so a long run does not keep them
        self._records: collections.deque[tuple[float, float, bool]] = collections.deque()
        self._stop = threading.Event()
        self._pool = None
        if plan.concurrency:
            self._threads = [threading.Thread(target=self._closed_loop, args=(t,), daemon=True)
                             for t in range(plan.concurrency)]
        else:
            self._pool = ThreadPoolExecutor(max_workers=_OPEN_LOOP_THREADS)
            self._threads = [threading.Thread(target=self._open_loop, daemon=True)]
        for thread in self._threads:
            thread.start()

    def _timed(self, i: int, begin: float) -> None:
        ok = self._send(i % len(self._plan.payloads))
        end = time.monotonic()
        self._records.append((end, end - begin, ok))

    def _closed_loop(self, seed: int) -> None:
        i = seed
        while not self._stop.is_set():
            self._timed(i, time.monotonic())
            i += 1

    def _open_loop(self) -> None:
        interval, i = 1.0 / self._plan.request_rate, 0
        first = time.monotonic()
        while not self._stop.is_set():
            due = first + i * interval
            delay = due - time.monotonic()
            if delay > 0:
                time.sleep(delay)
            self._pool.submit(self._timed, i, due)  # latency counts from the scheduled time
            i += 1

    def take(self) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        new = [self._records.popleft() for _ in range(len(self._records))]
        ends, latencies, ok = zip(*new) if new else ((), (), ())
        return (np.array(ends, dtype=np.float64), np.array(latencies, dtype=np.float64),
                np.array(ok, dtype=bool))

    def close(self) -> None:
        self._stop.set()
        for thread in self._threads:
            thread.join(self._plan.timeout)
        if self._pool is not None:
            self._pool.shutdown(wait=True)
        self._close()


def _stopped(stop, seconds: float) -> bool:
    """stop.wait(seconds), also true once the parent process is gone: no orphaned load."""
    parent = multiprocessing.parent_process()
    deadline = time.monotonic() + seconds
    while True:
        left = deadline - time.monotonic()
        if stop.wait(min(max(left, 0.0), 1.0)) or (parent is not None and not parent.is_alive()):
            return True
        if left <= 1.0:
            return False


def run_worker(plan: WorkerPlan, reports, stop, start_at) -> None:
    """Send load until `stop` is set: put "ready" on `reports` once sending, then (window,
    latencies, errors, cpu seconds) for each finished window, then None. Window 0 begins at
    the monotonic time the parent sets in `start_at` once every worker is ready."""
    load = (_NativeLoad if plan.native else _PythonLoad)(plan)
    reports.put("ready")
    while start_at.value == 0.0:
        if _stopped(stop, 0.01):
            load.close()
            reports.put(None)
            return
    start = start_at.value
    window = 0
    pending = [np.empty(0), np.empty(0), np.empty(0, dtype=bool)]
    cpu_mark = None
    while True:
        boundary = start + (window + 1) * plan.window
        if cpu_mark is None:  # wait for window 0 to begin, then start counting CPU time
            if _stopped(stop, start - time.monotonic()):
                break
            load.take()  # the warm-up's requests
            cpu_mark = time.process_time()
        if _stopped(stop, boundary - time.monotonic()):
            break
        cpu_now = time.process_time()
        ends, latencies, ok = (np.concatenate(pair) for pair in zip(pending, load.take()))
        inside = (ends >= start + window * plan.window) & (ends < boundary)
        later = ends >= boundary
        reports.put((window, latencies[inside & ok], int(np.count_nonzero(inside & ~ok)),
                     cpu_now - cpu_mark))
        pending = [ends[later], latencies[later], ok[later]]
        cpu_mark = cpu_now
        window += 1
    load.close()
    reports.put(None)
