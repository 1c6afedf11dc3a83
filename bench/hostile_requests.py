"""What a hostile ModelInfer costs the server, and the clients beside it.

Starts `pyserve serve` (the pyserve of the Python running this script) on the example
repository, keeps a bystander client sending `simple` requests over gRPC, and sends, one at a
time, a request with --count distinct parameters, one declaring --count inputs (a repeat at the
end, so a server that gets through them refuses it as a duplicate) and one asking for one
output --count times. Per hostile request it prints the answer (status, response size) and how
long it took, and the bystander's latency while it ran against its latency before.

    python bench/hostile_requests.py [--count 200000] [--pyserve-args "--request-limit ..."]

Run it with another build's Python to compare (a venv with that build installed).
"""

from __future__ import annotations

import argparse
import math
import shlex
import statistics
import sys
import tempfile
import threading
import time
from pathlib import Path

import grpc
import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tests"))
from conftest import EXAMPLES, start_server  # noqa: E402
from pyserve.protocol.wire import key, varint  # noqa: E402

INFER = "/inference.GRPCInferenceService/ModelInfer"


def field(number: int, data: bytes) -> bytes:
    return key(number) + varint(len(data)) + data


def tensor(name: bytes, extra: bytes = b"") -> bytes:
    return field(1, name) + field(2, b"INT32") + field(3, varint(1) + varint(16)) + extra


def simple(tail: bytes = b"") -> bytes:
    data = np.arange(16, dtype=np.int32).tobytes()
    return (field(1, b"simple") + field(5, tensor(b"INPUT0")) + field(5, tensor(b"INPUT1"))
            + field(7, data) + field(7, data) + tail)


def hostile(count: int) -> dict[str, bytes]:
    parameter = lambda i: field(4, field(1, b"p%d" % i) + field(2, key(2, 0) + varint(i)))  # noqa: E731
    zeros = field(5, field(2, bytes(16)))  # typed contents: 16 packed zeros
    inputs = b"".join(field(5, tensor(b"IN%d" % i, zeros)) for i in [*range(count), 7])
    return {"parameters": simple(b"".join(parameter(i) for i in range(count))),
            "inputs": field(1, b"simple") + inputs,
            "repeated output": simple(field(6, field(1, b"OUTPUT0")) * count)}


class Bystander(threading.Thread):
    """Sends `simple` requests back to back, recording (start, latency) of each."""

    def __init__(self, url: str):
        super().__init__(daemon=True)
        self.call = grpc.insecure_channel(url).unary_unary(INFER)
        self.samples: list[tuple[float, float]] = []
        self.stop = threading.Event()

    def run(self) -> None:
        message = simple()
        while not self.stop.is_set():
            start = time.perf_counter()
            self.call(message, timeout=60)
            self.samples.append((start, time.perf_counter() - start))

    def latencies_ms(self, begin: float, end: float) -> list[float]:
        return [latency * 1e3 for start, latency in self.samples if begin <= start < end]


def describe(latencies: list[float]) -> str:
    if not latencies:
        return "no request answered"
    ordered = sorted(latencies)
    return (f"n={len(ordered)} p50={statistics.median(ordered):.2f} ms "
            f"p99={ordered[math.ceil(0.99 * len(ordered)) - 1]:.2f} ms max={ordered[-1]:.2f} ms")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--count", type=int, default=200_000)
    parser.add_argument("--deadline", type=float, default=30.0, help="seconds per request")
    parser.add_argument("--pyserve-args", default="", help="extra `pyserve serve` flags")
    args = parser.parse_args()
    messages = hostile(args.count)
    with tempfile.TemporaryDirectory() as tmp:
        server = start_server([EXAMPLES], Path(tmp) / "server.log", "--model-control-mode",
                              "explicit", "--load-model", "simple",
                              "--grpc-max-message-size", str(2**31 - 1),
                              *shlex.split(args.pyserve_args))
        call = grpc.insecure_channel(server.grpc_url, options=[
            ("grpc.max_send_message_length", -1), ("grpc.max_receive_message_length", -1)]
        ).unary_unary(INFER)
        bystander = Bystander(server.grpc_url)
        try:
            bystander.start()
            time.sleep(2)  # the bystander's own latency first
            before = bystander.latencies_ms(0, time.perf_counter())
            print(f"bystander before: {describe(before)}")
            for name, message in messages.items():
                start = time.perf_counter()
                try:
                    answer = call(message, timeout=args.deadline)
                    outcome = f"OK, {len(answer):,} bytes"
                except grpc.RpcError as e:
                    outcome = f"{e.code().name}: {e.details()[:90]}"
                end = time.perf_counter()
                print(f"{name:16} ({len(message) / 1e6:.1f} MB): {end - start:7.3f} s  {outcome}")
                print(f"{'':16} bystander meanwhile: {describe(bystander.latencies_ms(start, end))}")
        finally:
            bystander.stop.set()
            bystander.join(timeout=args.deadline)
            server.stop()


if __name__ == "__main__":
    main()
