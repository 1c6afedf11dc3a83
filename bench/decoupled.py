"""A decoupled model streaming 64 responses per request: pyserve against Triton 2.51.

What it measures
    One Triton `model.py`, served unchanged by both servers (Triton's Python backend; pyserve's
    in-process one): a decoupled model (model_transaction_policy { decoupled: true }) that
    answers each request with --responses responses (an INT32 [1] each, its index) from the
    thread that ran `execute`, then the final flag alone. One CPU instance on both.
    A client of `concurrency` threads, each with its own gRPC stream (tritonclient's
    start_stream / async_stream_infer, what a token-streaming client runs), sends one request at
    a time and waits for its final response before the next. Per run: responses/s over the
    measured window (after a warm-up second), and the time to the first response of each request
    (p50 and p99). Rounds are interleaved, the servers' order alternating by round; a figure is
    the median over rounds and a ratio the median of the per-round ratios.

How to run (the venvs and helpers of bench/vs_triton.py; the default takes ~3 minutes)
    python bench/decoupled.py                      # c = 1, 16; 3 rounds of 5 s
    python bench/decoupled.py --rounds 1 --seconds 2 --concurrency 16   # smoke
Client and servers share the machine's cores: compare the ratios of one run only.
"""

from __future__ import annotations

import argparse
import queue
import statistics
import sys
import threading
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
import vs_triton  # noqa: E402 - the Triton, venv and process helpers

MODEL = "stream"
CONFIG = """name: "stream"
backend: "python"
max_batch_size: 0
input [ { name: "N" data_type: TYPE_INT32 dims: [ 1 ] } ]
output [ { name: "INDEX" data_type: TYPE_INT32 dims: [ 1 ] } ]
model_transaction_policy { decoupled: true }
instance_group [ { count: 1 kind: KIND_CPU } ]
"""
MODEL_PY = """import numpy as np
import triton_python_backend_utils as pb_utils


class TritonPythonModel:
    def execute(self, requests):
        for request in requests:
            n = int(pb_utils.get_input_tensor_by_name(request, "N").as_numpy()[0])
            sender = request.get_response_sender()
            for i in range(n):
                sender.send(pb_utils.InferenceResponse(
                    [pb_utils.Tensor("INDEX", np.array([i], np.int32))]))
            sender.send(flags=pb_utils.TRITONSERVER_RESPONSE_COMPLETE_FINAL)
        return None
"""


def make_repositories(cache: Path) -> dict[str, Path]:
    repos = {}
    for kind in ("pyserve", "triton"):
        repo = cache / "repos" / f"{kind}-decoupled"
        (repo / MODEL / "1").mkdir(parents=True, exist_ok=True)
        (repo / MODEL / "config.pbtxt").write_text(CONFIG)
        (repo / MODEL / "1" / "model.py").write_text(MODEL_PY)
        repos[kind] = repo
    return repos


def stream_load(url: str, concurrency: int, responses: int, seconds: float) -> dict:
    """`concurrency` streams, one request in flight each: responses/s over `seconds` after a
    warm-up second, and the times to first response (s) of the requests sent meanwhile."""
    import tritonclient.grpc as grpcclient

    counted = [0] * concurrency
    first_latencies: list[list[float]] = [[] for _ in range(concurrency)]
    measuring = threading.Event()
    stop = threading.Event()
    ready = threading.Barrier(concurrency + 1)
    errors: list[str] = []

    def worker(index: int) -> None:
        arrived: queue.SimpleQueue = queue.SimpleQueue()
        with grpcclient.InferenceServerClient(url) as client:
            client.start_stream(callback=lambda result, error: arrived.put((result, error)))
            n = grpcclient.InferInput("N", [1], "INT32")
            n.set_data_from_numpy(np.array([responses], np.int32))
            ready.wait()
            while not stop.is_set():
                sent = time.perf_counter()
                client.async_stream_infer(MODEL, [n], enable_empty_final_response=True)
                first = None
                while True:
                    result, error = arrived.get()
                    if error is not None:
                        errors.append(str(error))
                        stop.set()
                        break
                    final = result.get_response().parameters["triton_final_response"].bool_param
                    if not final:
                        first = first or time.perf_counter() - sent
                        if measuring.is_set():
                            counted[index] += 1
                    if final:
                        break
                if measuring.is_set() and first is not None:
                    first_latencies[index].append(first)
            client.stop_stream()

    threads = [threading.Thread(target=worker, args=(i,)) for i in range(concurrency)]
    for thread in threads:
        thread.start()
    ready.wait()
    time.sleep(1.0)  # warm-up, not counted
    measuring.set()
    begun = time.monotonic()
    time.sleep(seconds)
    measuring.clear()
    elapsed = time.monotonic() - begun
    total = sum(counted)
    stop.set()
    for thread in threads:
        thread.join()
    if errors:
        raise RuntimeError(f"stream failed: {errors[0]}")
    firsts = sorted(x for per in first_latencies for x in per)
    return {"responses_per_s": total / elapsed,
            "first_p50_ms": 1000 * firsts[len(firsts) // 2],
            "first_p99_ms": 1000 * firsts[min(len(firsts) - 1, int(len(firsts) * 0.99))]}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--concurrency", default="1,16")
    parser.add_argument("--responses", type=int, default=64)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--seconds", type=float, default=5.0)
    parser.add_argument("--pyserve-args", default="")
    parser.add_argument("--triton-args", default="")
    parser.add_argument("--cache-dir", type=Path, default=Path.home() / ".cache" / "pyserve-bench")
    args = parser.parse_args()
    concurrencies = [int(c) for c in args.concurrency.split(",")]
    cache = args.cache_dir.expanduser().resolve()
    tools = vs_triton.Tools(cache / "venvs", cache)
    repos = make_repositories(cache)
    kinds = ("pyserve", "triton")
    servers = {kind: vs_triton.start_server(kind, MODEL, repos, Path("-"), cache, args, tools)
               for kind in kinds}
    runs: dict[tuple[str, int], list[dict]] = {(k, c): [] for k in kinds for c in concurrencies}
    ratios: dict[int, list[float]] = {c: [] for c in concurrencies}
    try:
        for server in servers.values():
            vs_triton.wait_ready(server, MODEL)
        for round_index in range(args.rounds):
            order = kinds if round_index % 2 == 0 else kinds[::-1]
            for c in concurrencies:
                for kind in order:
                    run = stream_load(servers[kind].url("grpc"), c, args.responses, args.seconds)
                    runs[(kind, c)].append(run)
                    vs_triton.log(f"round {round_index + 1} c={c} {kind}: "
                                  f"{run['responses_per_s']:,.0f} responses/s, first response "
                                  f"p50 {run['first_p50_ms']:.2f} ms p99 {run['first_p99_ms']:.2f} ms")
                ratios[c].append(runs[("pyserve", c)][-1]["responses_per_s"]
                                 / runs[("triton", c)][-1]["responses_per_s"])
    finally:
        for server in servers.values():
            server.stop()
    print(f"\n{args.responses} responses per request, medians of {args.rounds} rounds\n")
    print("| c | responses/s (pyserve / Triton) | pyserve/Triton | first response p50 ms "
          "(pyserve / Triton) | p99 ms (pyserve / Triton) |")
    print("|---|---|---|---|---|")
    for c in concurrencies:
        med = {(k, f): statistics.median(r[f] for r in runs[(k, c)])
               for k in kinds for f in ("responses_per_s", "first_p50_ms", "first_p99_ms")}
        print(f"| {c} | {med[('pyserve', 'responses_per_s')]:,.0f} / "
              f"{med[('triton', 'responses_per_s')]:,.0f} | {statistics.median(ratios[c]):.2f}x | "
              f"{med[('pyserve', 'first_p50_ms')]:.2f} / {med[('triton', 'first_p50_ms')]:.2f} | "
              f"{med[('pyserve', 'first_p99_ms')]:.2f} / {med[('triton', 'first_p99_ms')]:.2f} |")


if __name__ == "__main__":
    main()
