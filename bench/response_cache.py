"""Response-cache hits against running the model: the `double` Python model (OUTPUT0 = 2 *
INPUT0, FP32 [16]) served twice by one `pyserve serve` on 127.0.0.1, as `double` and as
`double_cached` (the same with `response_cache { enable: true }`, --cache-config
local,size=...). `pyserve bench` (the native load generator where built) sends the same
request at each concurrency; after the first, every request to `double_cached` is a hit,
answered in the core without Python. The two models take turns for --rounds rounds, so drift
hits both alike; prints the median throughput of each and the median of the per-round ratios.

    python bench/response_cache.py [--protocols grpc,http] [--concurrency 1,8] [--rounds 3]
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tests"))
from conftest import start_server, write_double_model  # noqa: E402
from pyserve.bench import BenchOptions, run as bench_run  # noqa: E402

MODELS = ("double", "double_cached")


def rate(url: str, protocol: str, model: str, concurrency: int, interval_ms: int) -> float:
    (level,) = bench_run(BenchOptions(model=model, url=url, protocol=protocol,
                                      concurrency=[concurrency], input_data="zero",
                                      measurement_interval_ms=interval_ms, max_windows=5,
                                      stability=0.25, server_stats=False))
    assert level.errors == 0, (model, level)
    return level.throughput


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--protocols", default="grpc,http")
    parser.add_argument("--concurrency", default="1,8")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--measurement-interval", type=int, default=1500, metavar="MS")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        repository = Path(tmp) / "repo"
        repository.mkdir()
        write_double_model(repository, dims="16")
        write_double_model(repository, "double_cached", dims="16",
                           extra_config="response_cache { enable: true }\n")
        server = start_server([repository], Path(tmp) / "server.log",
                              "--cache-config", "local,size=1048576")
        try:
            print(f"{'protocol':8} {'c':>3} {'double /s':>11} {'cached /s':>11} {'ratio':>7}")
            for protocol in args.protocols.split(","):
                url = server.grpc_url if protocol == "grpc" else server.http_url
                for concurrency in (int(c) for c in args.concurrency.split(",")):
                    rates = {model: [] for model in MODELS}
                    for _ in range(args.rounds):
                        for model in MODELS:
                            rates[model].append(rate(url, protocol, model, concurrency,
                                                     args.measurement_interval))
                    ratios = [c / d for d, c in zip(rates["double"], rates["double_cached"])]
                    print(f"{protocol:8} {concurrency:>3} "
                          f"{statistics.median(rates['double']):>11.0f} "
                          f"{statistics.median(rates['double_cached']):>11.0f} "
                          f"{statistics.median(ratios):>6.2f}x", flush=True)
        finally:
            server.stop()


if __name__ == "__main__":
    main()
