"""A soak: `--clients` concurrent clients (default 16) against one `pyserve serve` for
`--minutes` (default 30), over both protocols, every request with a unique id and every answer
checked.

Clients take turns: gRPC ModelInfer, HTTP infer, gRPC ModelInfer, a gRPC ModelStreamInfer
stream that keeps up to 4 requests in flight, and so on; the HTTP clients send JSON and binary
tensor extension bodies by turns. Each request goes to one of the four models of the long-run repository
(bench/longrun.py) with fresh data and its answer is compared with the reference: a request
not answered within `--deadline` counts as lost, a second answer to one id as duplicated, an
answer that differs as wrong, a refusal as failed. The server's RSS and thread count are
sampled every 10 s; the report gives the growth after the first minute (target < 5%).

    python bench/soak.py [--minutes 30] [--clients 16] [--frontend native|python]
"""

from __future__ import annotations

import argparse
import asyncio
import itertools
import json
import sys
import time
from collections import Counter
from pathlib import Path

import grpc
import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
import longrun  # noqa: E402

SERVICE = "/inference.GRPCInferenceService/"
POOL = 64  # prepared cases per model: fresh data without computing a reference per request


class Tally:
    def __init__(self) -> None:
        self.counts = Counter()
        self.answered: set[str] = set()
        self.examples: list[str] = []

    def answer(self, protocol: str, request_id: str, problem: str | None) -> None:
        if request_id in self.answered:
            self.problem("duplicated", f"{request_id} answered twice")
            return
        self.answered.add(request_id)
        if problem:
            self.problem("wrong", f"{request_id}: {problem}")
        else:
            self.counts[f"ok_{protocol}"] += 1

    def problem(self, kind: str, detail: str) -> None:
        self.counts[kind] += 1
        if len(self.examples) < 20:
            self.examples.append(f"{kind}: {detail}")


async def grpc_client(channel, cases, ids, tally: Tally, until: float, deadline: float) -> None:
    from tritonclient.grpc import service_pb2

    call = channel.unary_unary(SERVICE + "ModelInfer")
    for case in itertools.cycle(cases):
        if time.monotonic() > until:
            return
        request_id = next(ids)
        message = longrun.grpc_request(case, request_id).SerializeToString()
        try:
            answer = await call(message, timeout=deadline)
        except grpc.aio.AioRpcError as e:
            kind = "lost" if e.code() == grpc.StatusCode.DEADLINE_EXCEEDED else "failed"
            tally.problem(kind, f"{request_id}: {e.code().name} {e.details()}")
            continue
        response = service_pb2.ModelInferResponse.FromString(answer)
        tally.answer("grpc", request_id, f"answered as {response.id}"
                     if response.id != request_id else
                     longrun.same_answer(case.expected, longrun.grpc_outputs(response)))


async def stream_client(channel, cases, ids, tally: Tally, until: float,
                        deadline: float) -> None:
    """One stream, up to 4 requests in flight; answers matched to requests by id."""
    from tritonclient.grpc import service_pb2

    pending: dict[str, longrun.Case] = {}
    window = asyncio.Semaphore(4)
    done_sending = asyncio.Event()

    async def requests():
        for case in itertools.cycle(cases):
            await window.acquire()
            if time.monotonic() > until:
                break
            request_id = next(ids)
            pending[request_id] = case
            yield longrun.grpc_request(case, request_id).SerializeToString()
        done_sending.set()

    call = channel.stream_stream(SERVICE + "ModelStreamInfer")
    stream = call(requests(), timeout=(until - time.monotonic()) + deadline)
    try:
        async for answer in stream:
            response = service_pb2.ModelStreamInferResponse.FromString(answer)
            request_id = response.infer_response.id
            case = pending.pop(request_id, None)
            if response.error_message:
                tally.problem("failed", f"stream: {response.error_message}")
            elif case is None:
                tally.problem("duplicated", f"stream answered unknown or repeated id "
                                            f"{request_id}")
            else:
                tally.answer("stream", request_id, longrun.same_answer(
                    case.expected, longrun.grpc_outputs(response.infer_response)))
            window.release()
    except grpc.aio.AioRpcError as e:
        tally.problem("failed", f"stream ended: {e.code().name} {e.details()}")
    for request_id in pending:
        tally.problem("lost", f"stream request {request_id} not answered")


async def http_client(session, url: str, cases, ids, tally: Tally, until: float,
                      deadline: float, binary: bool) -> None:
    import aiohttp

    for case in itertools.cycle(cases):
        if time.monotonic() > until:
            return
        request_id = next(ids)
        body, header_length = longrun.http_body(case, request_id, binary)
        headers = {"Content-Type": "application/json"}
        if header_length is not None:
            headers["Inference-Header-Content-Length"] = str(header_length)
        try:
            async with session.post(f"{url}/v2/models/{case.model}/infer", data=body,
                                    headers=headers,
                                    timeout=aiohttp.ClientTimeout(total=deadline)) as response:
                answer = await response.read()
                length = response.headers.get("Inference-Header-Content-Length")
        except asyncio.TimeoutError:
            tally.problem("lost", f"{request_id}: no HTTP answer in time")
            continue
        except aiohttp.ClientError as e:
            tally.problem("failed", f"{request_id}: {type(e).__name__} {e}")
            continue
        if response.status != 200:
            tally.problem("failed", f"{request_id}: HTTP {response.status} {answer[:200]!r}")
            continue
        got_id = json.loads(answer[:int(length)] if length else answer).get("id")
        tally.answer("http", request_id, f"answered as {got_id}" if got_id != request_id else
                     longrun.same_answer(case.expected, longrun.http_outputs(
                         answer, int(length) if length else None)))


async def sample_memory(pid: int, until: float, samples: list) -> None:
    start = time.monotonic()
    while time.monotonic() < until:
        samples.append((round(time.monotonic() - start), longrun.rss_bytes(pid),
                        longrun.thread_count(pid)))
        await asyncio.sleep(min(10.0, max(until - time.monotonic(), 0.01)))
    samples.append((round(time.monotonic() - start), longrun.rss_bytes(pid),
                    longrun.thread_count(pid)))


async def soak(server, reference, clients: int, seconds: float, deadline: float,
               tally: Tally, samples: list) -> None:
    import aiohttp

    rng = np.random.default_rng(7)
    pools = {model: [longrun.make_case(rng, reference, model, text=True) for _ in range(POOL)]
             for model in longrun.MODELS}
    mixed = [case for group in zip(*pools.values()) for case in group]
    counter = itertools.count()
    ids = (f"soak-{n}" for n in counter)
    until = time.monotonic() + seconds
    channel = grpc.aio.insecure_channel(server.grpc_url)
    url = f"http://{server.http_url}"
    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=clients)) as session:
        tasks = [sample_memory(server.process.pid, until, samples)]
        for n in range(clients):
            cases = mixed[n % len(mixed):] + mixed[:n % len(mixed)]
            if n % 4 == 3:
                tasks.append(stream_client(channel, cases, ids, tally, until, deadline))
            elif n % 2 == 0:
                tasks.append(grpc_client(channel, cases, ids, tally, until, deadline))
            else:  # n % 4 == 1: JSON and binary bodies by turns
                tasks.append(http_client(session, url, cases, ids, tally, until, deadline,
                                         binary=n % 8 == 5))
        await asyncio.gather(*tasks)
    await channel.close()
    tally.counts["sent"] = next(counter)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--minutes", type=float, default=30.0)
    parser.add_argument("--clients", type=int, default=16)
    parser.add_argument("--frontend", choices=["native", "python"], default="native")
    parser.add_argument("--deadline", type=float, default=30.0,
                        help="seconds before an unanswered request counts as lost")
    parser.add_argument("--out", type=Path, help="write the report here as JSON too")
    args = parser.parse_args()

    repository, reference = longrun.prepare("pyserve-soak-")
    server = longrun.start(repository, repository.parent / "server.log", args.frontend)
    tally, samples = Tally(), []
    started = time.monotonic()
    try:
        asyncio.run(soak(server, reference, args.clients, args.minutes * 60, args.deadline,
                         tally, samples))
    finally:
        exit_code = server.stop()
    elapsed = time.monotonic() - started
    after_first_minute = [s for s in samples if s[0] >= 60] or samples
    baseline, final = after_first_minute[0][1], samples[-1][1]
    answered = sum(v for k, v in tally.counts.items() if k.startswith("ok_"))
    report = {
        "frontend": args.frontend, "clients": args.clients, "seconds": round(elapsed),
        "sent": tally.counts["sent"], "answered_correctly": answered,
        "per_protocol": {k[3:]: v for k, v in tally.counts.items() if k.startswith("ok_")},
        "lost": tally.counts["lost"], "duplicated": tally.counts["duplicated"],
        "wrong": tally.counts["wrong"], "failed": tally.counts["failed"],
        "requests_per_s": round(answered / elapsed, 1),
        "rss_mib": {"baseline_after_1_min": round(baseline / 2**20, 1),
                    "final": round(final / 2**20, 1),
                    "max": round(max(s[1] for s in samples) / 2**20, 1),
                    "growth_after_1_min_pct": round(100 * (final - baseline) / baseline, 2)},
        "threads": {"first": samples[0][2], "last": samples[-1][2]},
        "server_exit_code": exit_code, "problems": tally.examples,
        "rss_samples_mib": " ".join(f"{t}s:{r / 2**20:.1f}" for t, r, _ in samples),
    }
    text = json.dumps(report, indent=1)
    print(text)
    if args.out:
        args.out.write_text(text)


if __name__ == "__main__":
    main()
