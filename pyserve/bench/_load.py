"""The load generator's worker processes.

Each worker process runs its share of the load on its own threads (concurrency mode: N
threads, each sending its next request when the last one returns; request-rate mode: a
scheduler sending at fixed intervals). Requests are encoded once; a call hands bytes to
grpcio or urllib3, which release the GIL while waiting, so a few threads per process and a
few processes keep the generator off the critical path. Completions are bucketed into
windows by time (CLOCK_MONOTONIC is shared by all processes) and each finished window is
reported to the parent with the process's CPU time for it.
"""

from __future__ import annotations

import queue
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

import numpy as np

from pyserve.bench._inputs import Payload

_STREAM_ERROR_TAG = 0x0A  # ModelStreamInferResponse.error_message (field 1, length-delimited)


@dataclass(frozen=True)
class WorkerPlan:
    url: str
    protocol: str
    payloads: tuple[Payload, ...]
    concurrency: int = 0        # threads each keeping one request in flight
    request_rate: float = 0.0   # or: requests per second sent at fixed intervals
    streaming: bool = False
    start: float = 0.0          # monotonic time at which window 0 begins
    window: float = 1.0         # seconds per window
    timeout: float = 60.0


def _sender(plan: WorkerPlan):
    """A function that sends payload i and returns True on success (raises on transport failure)."""
    from pyserve.client._client import parse_url

    kind, tls, host, port = parse_url(plan.url, plan.protocol)
    if kind == "grpc":
        import grpc

        channel = grpc.insecure_channel(f"{host}:{port}", options=[
            ("grpc.max_send_message_length", 2**31 - 1),
            ("grpc.max_receive_message_length", 2**31 - 1)])
        infer = channel.unary_unary("/inference.GRPCInferenceService/ModelInfer")
        messages = [p.grpc for p in plan.payloads]

        def send(i: int) -> bool:
            try:
                infer(messages[i], timeout=plan.timeout)
                return True
            except grpc.RpcError:
                return False
        return send, channel.close
    import urllib3

    pool = urllib3.HTTPConnectionPool(host, port, maxsize=max(plan.concurrency, 64))
    bodies = [(p.http_path, p.http_body, dict(p.http_headers)) for p in plan.payloads]

    def send(i: int) -> bool:
        path, body, headers = bodies[i]
        try:
            r = pool.urlopen("POST", path, body=body, headers=headers, retries=False,
                             timeout=plan.timeout)
        except urllib3.exceptions.HTTPError:
            return False
        return r.status == 200
    return send, pool.close


def _stream_sender(plan: WorkerPlan):
    """Per thread: one ModelStreamInfer stream, one request in flight on it."""
    from pyserve.client._client import parse_url
    import grpc

    kind, tls, host, port = parse_url(plan.url, plan.protocol)
    channel = grpc.insecure_channel(f"{host}:{port}")
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


def run_worker(plan: WorkerPlan, reports, stop) -> None:
    """Send load until `stop` is set; put (window, latencies, errors, cpu seconds) on
    `reports` for each finished window, then None."""
    send, close = (_stream_sender if plan.streaming else _sender)(plan)
    records: list[tuple[float, float, bool]] = []  # (end, latency, ok); list.append is atomic
    count = len(plan.payloads)

    def timed(i: int, begin: float) -> None:
        ok = send(i % count)
        end = time.monotonic()
        records.append((end, end - begin, ok))

    def closed_loop(seed: int) -> None:
        i = seed
        while not stop.is_set():
            timed(i, time.monotonic())
            i += 1

    threads = []
    pool = None
    if plan.concurrency:
        threads = [threading.Thread(target=closed_loop, args=(t,), daemon=True)
                   for t in range(plan.concurrency)]
    else:
        pool = ThreadPoolExecutor(max_workers=64)

        def open_loop() -> None:
            interval, i = 1.0 / plan.request_rate, 0
            first = time.monotonic()
            while not stop.is_set():
                due = first + i * interval
                delay = due - time.monotonic()
                if delay > 0:
                    time.sleep(delay)
                pool.submit(timed, i, due)  # latency counts from the scheduled time
                i += 1
        threads = [threading.Thread(target=open_loop, daemon=True)]
    for thread in threads:
        thread.start()

    done = 0
    window = 0
    pending: list[tuple[float, float, bool]] = []
    cpu_mark = None
    while True:
        boundary = plan.start + (window + 1) * plan.window
        if cpu_mark is None:  # wait for window 0 to begin, then start counting CPU time
            if stop.wait(max(0.0, plan.start - time.monotonic())):
                break
            cpu_mark = time.process_time()
        if stop.wait(max(0.0, boundary - time.monotonic())):
            break
        cpu_now = time.process_time()
        new = records[done:len(records)]
        done += len(new)
        pending.extend(new)
        inside = [r for r in pending if plan.start + window * plan.window <= r[0] < boundary]
        pending = [r for r in pending if r[0] >= boundary]
        latencies = np.array([r[1] for r in inside if r[2]], dtype=np.float64)
        errors = sum(1 for r in inside if not r[2])
        reports.put((window, latencies, errors, cpu_now - cpu_mark))
        cpu_mark = cpu_now
        window += 1
    for thread in threads:
        thread.join(plan.timeout)
    if pool is not None:
        pool.shutdown(wait=True)
    close()
    reports.put(None)
