"""End-to-end throughput of pyserve measured by NVIDIA's perf_analyzer.

Starts `pyserve serve` on the example repository (free ports on 127.0.0.1), runs perf_analyzer
over gRPC and HTTP at the given concurrencies and prints one table. perf_analyzer is not a pip
dependency (see the shared tools reference for how to install it); pass its path.

    python bench/perf_analyzer_simple.py --perf-analyzer /path/to/perf_analyzer [--model simple]
"""

from __future__ import annotations

import argparse
import re
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tests"))
from conftest import EXAMPLES, start_server  # noqa: E402

_RESULT = re.compile(r"Concurrency: (\d+), throughput: ([\d.]+) infer/sec, latency (\d+) usec")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--perf-analyzer", required=True)
    parser.add_argument("--model", default="simple")
    parser.add_argument("--concurrency", default="1:8:7", help="perf_analyzer's range")
    parser.add_argument("--interval-ms", type=int, default=3000)
    args = parser.parse_args()

    with tempfile.TemporaryDirectory() as tmp:
        server = start_server([EXAMPLES], Path(tmp) / "server.log")
        try:
            print(f"{'protocol':8} {'concurrency':>11} {'infer/s':>9} {'latency us':>10}")
            for protocol, url in (("grpc", server.grpc_url), ("http", server.http_url)):
                out = subprocess.run(
                    [args.perf_analyzer, "-m", args.model, "-i", protocol, "-u", url,
                     "--concurrency-range", args.concurrency,
                     "--measurement-interval", str(args.interval_ms),
                     # client and server share 2 cores here: accept 25% run-to-run noise
                     "--stability-percentage", "25", "--max-trials", "20"],
                    capture_output=True, text=True)
                if out.returncode != 0:
                    sys.exit(f"perf_analyzer failed:\n{out.stdout}\n{out.stderr}")
                for concurrency, rate, latency in _RESULT.findall(out.stdout):
                    print(f"{protocol:8} {concurrency:>11} {float(rate):>9.0f} {latency:>10}")
        finally:
            server.stop()


if __name__ == "__main__":
    main()
