"""Closed-loop gRPC load for the end-to-end benchmarks: `concurrency` clients (tritonclient's
asyncio client), each sending its next request when the last one is answered."""

from __future__ import annotations

import asyncio
import time

import numpy as np


async def throughput(url: str, model: str, input_name: str, data: np.ndarray, seconds: float,
                     concurrency: int, warmup_seconds: float = 1.0) -> float:
    """Inferences per second, measured after a warm-up."""
    import tritonclient.grpc.aio as aioclient

    client = aioclient.InferenceServerClient(url)
    tensor = aioclient.InferInput(input_name, list(data.shape), "FP32")
    tensor.set_data_from_numpy(data)
    done = 0

    async def loop(until: float, count: bool) -> None:
        nonlocal done
        while time.perf_counter() < until:
            await client.infer(model, [tensor])
            done += count

    warm_until = time.perf_counter() + warmup_seconds
    await asyncio.gather(*(loop(warm_until, False) for _ in range(concurrency)))
    start = time.perf_counter()
    await asyncio.gather(*(loop(start + seconds, True) for _ in range(concurrency)))
    rate = done / (time.perf_counter() - start)
    await client.close()
    return rate
