"""Microbenchmarks of the C++ core, each printed against its baseline from the same run.

Builds and runs bench/cpp/bench_core (queue, gather, C++ per-request overhead), then measures
the per-request overhead through the Python binding with a no-op Python executor:
enqueue -> the batch's deliver callback, one request at a time, in-process.

    python bench/core_bench.py
"""

from __future__ import annotations

import os
import shutil
import subprocess
import threading
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent


def run_cpp_benchmarks() -> None:
    build = ROOT / "build" / "bench"
    generator = ["-G", "Ninja"] if shutil.which("ninja") else []
    subprocess.run(["cmake", "-S", str(ROOT / "bench" / "cpp"), "-B", str(build), *generator,
                    "-DCMAKE_BUILD_TYPE=Release"], check=True, capture_output=True)
    subprocess.run(["cmake", "--build", str(build), "-j", str(os.cpu_count() or 2)], check=True,
                   capture_output=True)
    subprocess.run([str(build / "bench_core")], check=True)


def python_executor_overhead_us(requests: int = 20000) -> list[float]:
    from pyserve import _core

    options = _core.SchedulerOptions()
    options.model_name = "noop"
    options.instance_count = 1
    options.instance_devices = [-1]
    done = threading.Event()
    delivered_at = [0]

    def execute(instance, batch_sizes, inputs, requests):
        return {}

    def deliver(results):
        delivered_at[0] = time.perf_counter_ns()
        done.set()

    spec = _core.ModelSpec("noop", 1, 0, [("INPUT0", "INT32", [1, 16], False, None)], [])
    model = _core.Model(spec, options, execute)
    sink = _core.PythonSink(deliver)
    data = np.zeros((1, 16), np.int32)
    inputs = [("INPUT0", "INT32", [1, 16], data)]
    latencies = []
    for tag in range(requests):
        done.clear()
        start = time.perf_counter_ns()
        model.submit(tag, sink, inputs)
        done.wait()
        latencies.append((delivered_at[0] - start) / 1000)
    model.stop()
    return sorted(latencies)


def main() -> None:
    run_cpp_benchmarks()
    latencies = python_executor_overhead_us()
    print(f"overhead  Python no-op executor: p50 {latencies[len(latencies) // 2]:.1f} us, "
          f"p99 {latencies[len(latencies) * 99 // 100]:.1f} us (bar p50 <= 60 us)")


if __name__ == "__main__":
    main()
