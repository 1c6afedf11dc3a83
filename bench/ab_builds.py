"""Two pyserve builds side by side: is a change slower than what it replaces?

Starts `pyserve serve` twice on the example repository (model `simple`), once with each
build's Python (a venv where that build is installed), and measures both with perf_analyzer
cell by cell: protocol x concurrency, rounds interleaved and the order of the two builds
alternating from round to round. Per cell it prints the medians of both throughputs and the
median of the per-round ratios new / base, with each server's CPU time per request.

    python bench/ab_builds.py --base-python /tmp/base/bin/python --perf-analyzer PATH
        [--new-python python] [--rounds 4] [--cells grpc:1,grpc:8,http:8]

perf_analyzer 2.51 needs its CUDA runtime on LD_LIBRARY_PATH (see bench/vs_triton.py's Tools).
"""

from __future__ import annotations

import argparse
import json
import re
import statistics
import subprocess
import sys
import tempfile
import urllib.request
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))
from conftest import EXAMPLES, OUTSIDE, ServerProcess, free_port  # noqa: E402

_RESULT = re.compile(r"Concurrency: \d+, throughput: ([\d.]+) infer/sec")
_STARTED = "Started Metrics Service"


def start(python: str, log: Path) -> ServerProcess:
    grpc, http, metrics = free_port(), free_port(), free_port()
    process = subprocess.Popen(
        [python, "-m", "pyserve.cli", "serve", "--host", "127.0.0.1",
         "--model-repository", str(EXAMPLES), "--model-control-mode", "explicit",
         "--load-model", "simple", "--grpc-port", str(grpc), "--http-port", str(http),
         "--metrics-port", str(metrics)],
        stdout=open(log, "w"), stderr=subprocess.STDOUT, cwd=OUTSIDE)
    server = ServerProcess(process, grpc, http, metrics, log)
    try:
        subprocess.run(["timeout", "120", "sh", "-c", f"until grep -q '{_STARTED}' {log}; "
                        "do sleep 0.1; done"], check=True)
    except subprocess.CalledProcessError:
        server.stop()
        sys.exit(f"{python}: pyserve did not start:\n{log.read_text()}")
    return server


def cpu_seconds(pid: int) -> float:
    fields = open(f"/proc/{pid}/stat").read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / 100  # utime + stime, in clock ticks


def measure(perf_analyzer: str, server: ServerProcess, protocol: str, concurrency: int,
            interval_ms: int, stability: int) -> tuple[float, float]:
    """(infer/s, server CPU µs per request) of one perf_analyzer run."""
    url = server.grpc_url if protocol == "grpc" else server.http_url
    before, served = cpu_seconds(server.process.pid), completed(server)
    out = subprocess.run(
        [perf_analyzer, "-m", "simple", "-i", protocol, "-u", url,
         "--concurrency-range", f"{concurrency}:{concurrency}",
         "--measurement-interval", str(interval_ms), "--stability-percentage", str(stability),
         "--max-trials", "6"], capture_output=True, text=True)
    rates = _RESULT.findall(out.stdout)
    if out.returncode != 0 or not rates:
        sys.exit(f"perf_analyzer failed:\n{out.stdout}\n{out.stderr}")
    used = cpu_seconds(server.process.pid) - before
    return float(rates[-1]), used / max(completed(server) - served, 1) * 1e6


def completed(server: ServerProcess) -> int:
    """Requests `simple` has answered successfully (the server's own statistics)."""
    with urllib.request.urlopen(f"http://{server.http_url}/v2/models/simple/stats") as answer:
        stats = json.load(answer)["model_stats"][0]
    return int(stats["inference_stats"]["success"]["count"])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--base-python", required=True, help="Python of the build to compare to")
    parser.add_argument("--new-python", default=sys.executable)
    parser.add_argument("--perf-analyzer", required=True)
    parser.add_argument("--rounds", type=int, default=4)
    parser.add_argument("--cells", default="grpc:1,grpc:8,http:8", help="protocol:concurrency,...")
    parser.add_argument("--measurement-interval", type=int, default=4000, help="ms")
    parser.add_argument("--stability", type=int, default=25,
                        help="perf_analyzer's --stability-percentage (raise it on a busy machine)")
    args = parser.parse_args()
    cells = [(p, int(c)) for p, c in (cell.split(":") for cell in args.cells.split(","))]
    builds = {"base": args.base_python, "new": args.new_python}
    results: dict = {}
    with tempfile.TemporaryDirectory() as tmp:
        servers = {name: start(python, Path(tmp) / f"{name}.log")
                   for name, python in builds.items()}
        try:
            for round_ in range(args.rounds):
                order = list(builds) if round_ % 2 == 0 else list(builds)[::-1]
                for protocol, concurrency in cells:
                    for name in order:
                        rate, cpu = measure(args.perf_analyzer, servers[name], protocol,
                                            concurrency, args.measurement_interval,
                                            args.stability)
                        results.setdefault((protocol, concurrency), {}).setdefault(
                            name, []).append((rate, cpu))
                        print(f"[round {round_ + 1}/{args.rounds}] {protocol} c={concurrency} "
                              f"{name}: {rate:,.0f} infer/s, {cpu:.0f} µs CPU/request",
                              flush=True)
        finally:
            for server in servers.values():
                server.stop()
    print("\n| protocol | c | infer/s (base / new) | new / base | server CPU µs/request (base / new) |")
    print("|---|---|---|---|---|")
    for (protocol, concurrency), by_build in results.items():
        base, new = by_build["base"], by_build["new"]
        ratio = statistics.median(n[0] / b[0] for n, b in zip(new, base))
        print(f"| {protocol} | {concurrency} | {statistics.median(r for r, _ in base):,.0f} / "
              f"{statistics.median(r for r, _ in new):,.0f} | {ratio:.3f} | "
              f"{statistics.median(c for _, c in base):.0f} / "
              f"{statistics.median(c for _, c in new):.0f} |")


if __name__ == "__main__":
    main()
