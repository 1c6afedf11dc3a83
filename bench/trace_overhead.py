"""What tracing costs the requests it does not trace: tracing off, trace_rate=0 (sampling
looked up per request, none taken) and trace_rate=1000 (1 request in 1000 traced), each a
`pyserve serve` of the example model `simple`, measured with `pyserve bench`'s native load
generator in interleaved rounds (the servers' order rotating per round). Prints, per
protocol, each server's median throughput and the medians of the per-round ratios against
tracing off.

    python bench/trace_overhead.py [--rounds 5] [--interval-ms 3000] [--concurrency 8]
        [--frontend native|python] [--protocols grpc,http]
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))
from conftest import EXAMPLES, OUTSIDE, PYSERVE, start_server  # noqa: E402

SETUPS = {
    "off": [],
    "rate 0": ["--trace-config", "level=TIMESTAMPS", "--trace-config", "rate=0"],
    "rate 1000": ["--trace-config", "level=TIMESTAMPS", "--trace-config", "rate=1000"],
}


def throughput(url: str, protocol: str, concurrency: int, interval_ms: int, out: Path) -> float:
    subprocess.run([*PYSERVE, "bench", "-m", "simple", "-u", url, "-i", protocol,
                    "--concurrency", str(concurrency), "-p", str(interval_ms),
                    "--max-trials", "1", "-q", "--json", str(out)],
                   check=True, cwd=OUTSIDE, stdout=subprocess.DEVNULL)
    return json.loads(out.read_text())[0]["throughput"]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--interval-ms", type=int, default=3000)
    parser.add_argument("--concurrency", type=int, default=8)
    parser.add_argument("--frontend", choices=["native", "python"], default="native")
    parser.add_argument("--protocols", default="grpc,http")
    args = parser.parse_args()
    folder = Path(tempfile.mkdtemp(prefix="trace-bench-"))
    servers = {}
    try:
        for name, flags in SETUPS.items():
            tag = name.replace(" ", "")
            servers[name] = start_server(
                [EXAMPLES], folder / f"{tag}.log", "--model-control-mode", "explicit",
                "--load-model", "simple", "--grpc-frontend", args.frontend,
                "--http-frontend", args.frontend,
                *flags, *(["--trace-config", f"triton,file={folder / tag}.json"] if flags else []))
        for protocol in args.protocols.split(","):
            results = {name: [] for name in SETUPS}
            names = list(SETUPS)
            for round_index in range(args.rounds):
                order = names[round_index % len(names):] + names[:round_index % len(names)]
                for name in order:
                    server = servers[name]
                    url = server.grpc_url if protocol == "grpc" else server.http_url
                    results[name].append(throughput(url, protocol, args.concurrency,
                                                    args.interval_ms, folder / "out.json"))
            print(f"{protocol} ({args.frontend} frontend, concurrency {args.concurrency}, "
                  f"{args.rounds} rounds of {args.interval_ms} ms)")
            for name in names:
                ratios = [x / base for x, base in zip(results[name], results["off"])]
                print(f"  {name:>9}: {statistics.median(results[name]):9.0f} infer/s, "
                      f"ratio to off {statistics.median(ratios):.3f}")
    finally:
        for server in servers.values():
            server.stop()


if __name__ == "__main__":
    main()
