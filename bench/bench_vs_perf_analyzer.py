"""`pyserve bench` against perf_analyzer: the same pyserve server, the same levels, one run.

What it measures
    One `pyserve serve` on the example repository (free ports on 127.0.0.1) and model `simple`
    (INT32 [16] + [16], overhead-bound: the load generator's own cost shows). For each protocol
    (gRPC, HTTP) and concurrency (1, 2, 4, 8 by default), perf_analyzer 2.51 and `pyserve bench`
    each measure the server with the same window length, stability threshold and window limit.
    Rounds are interleaved and the order of the two tools alternates from round to round; each
    cell reports the medians over rounds of both throughputs and of the per-round ratio
    pyserve bench / perf_analyzer (the issue's target: 0.9 or above).

    Each tool's CPU time per request is reported too: for perf_analyzer, utime+stime of its
    process over the run divided by the requests the server completed meanwhile (statistics
    before and after); for pyserve bench, its generator process's CPU over the measured windows
    divided by their requests (what it reports itself). Client and server share the machine's
    cores, so a cheaper generator leaves the server more CPU.

    python bench/bench_vs_perf_analyzer.py [--rounds 3] [--concurrency 1,2,4,8]
        [--protocols grpc,http] [--measurement-interval 2000] [--tools-dir DIR] [--json OUT]

perf_analyzer is installed on first use into <tools-dir>/perf_analyzer (see bench/vs_triton.py's
Tools); pass --tools-dir to reuse a venv made elsewhere.
"""

from __future__ import annotations

import argparse
import json
import re
import statistics
import resource
import subprocess
import sys
import tempfile
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
sys.path.insert(0, str(HERE.parent / "tests"))
from conftest import EXAMPLES, start_server  # noqa: E402
from vs_triton import _PASS, Tools, _median  # noqa: E402

from pyserve.bench import BenchOptions, run as bench_run  # noqa: E402
from pyserve.client import Client  # noqa: E402

_PA_RESULT = re.compile(r"Concurrency: (\d+), throughput: ([\d.]+) infer/sec")


def success_count(grpc_url: str, model: str) -> int:
    with Client(grpc_url) as client:
        return sum(s.inference_stats.success.count for s in client.statistics(model))


def perf_analyzer(pa: tuple[Path, dict], url: str, grpc_url: str, protocol: str, model: str,
                  concurrency: int, args) -> dict:
    binary, env = pa
    command = [str(binary), "-m", model, "-i", protocol, "-u", url,
               "--concurrency-range", str(concurrency),
               "--measurement-interval", str(args.measurement_interval),
               "--stability-percentage", str(args.stability_percentage),
               "--max-trials", str(args.max_trials), "-v"]  # -v: every window's figures
    before = success_count(grpc_url, model)
    children = resource.getrusage(resource.RUSAGE_CHILDREN)  # perf_analyzer's, once reaped
    out = subprocess.run(command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                         env=env).stdout
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    cpu = after.ru_utime + after.ru_stime - children.ru_utime - children.ru_stime
    requests = success_count(grpc_url, model) - before
    found = _PA_RESULT.findall(out)
    if found:
        rate, stable = float(found[0][1]), True
    else:  # no three windows within the threshold: perf_analyzer's last three, as it would
        passes = [float(p) for p in _PASS.findall(out)]
        if len(passes) < 3:
            raise RuntimeError(f"perf_analyzer failed:\n{out}")
        rate, stable = statistics.mean(passes[-3:]), False
    return {"throughput": rate, "stable": stable,
            "cpu_us_per_request": cpu / requests * 1e6 if requests else None}


def pyserve_bench(url: str, protocol: str, model: str, concurrency: int, args) -> dict:
    (level,) = bench_run(BenchOptions(
        model=model, url=url, protocol=protocol, concurrency=[concurrency],
        measurement_interval_ms=args.measurement_interval, max_windows=args.max_trials,
        stability=args.stability_percentage / 100, generator=args.generator))
    return {"throughput": level.throughput, "stable": level.stable,
            "cpu_us_per_request": level.client_cpu_us_per_request,
            "generator": level.generator, "server_throughput": level.server_throughput}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="simple")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--concurrency", default="1,2,4,8")
    parser.add_argument("--protocols", default="grpc,http")
    parser.add_argument("--measurement-interval", type=int, default=2000, metavar="MS")
    parser.add_argument("--stability-percentage", type=float, default=25.0,
                        help="both tools' (default 25: client and server share the cores)")
    parser.add_argument("--max-trials", type=int, default=10)
    parser.add_argument("--generator", default="auto", choices=["auto", "native", "python"],
                        help="pyserve bench's --generator")
    parser.add_argument("--tools-dir", type=Path,
                        default=Path.home() / ".cache" / "pyserve-bench" / "venvs")
    parser.add_argument("--json", type=Path, metavar="OUT")
    args = parser.parse_args()
    levels = [int(c) for c in args.concurrency.split(",")]
    protocols = args.protocols.split(",")
    pa = Tools(args.tools_dir, args.tools_dir.parent).perf_analyzer()

    runs = []
    with tempfile.TemporaryDirectory() as tmp:
        server = start_server([EXAMPLES], Path(tmp) / "server.log")
        try:
            urls = {"grpc": server.grpc_url, "http": f"http://{server.http_url}"}
            for round_ in range(args.rounds):
                for protocol in protocols:
                    for c in levels:
                        order = ["perf_analyzer", "pyserve bench"]
                        if round_ % 2:
                            order.reverse()
                        cell = {"round": round_, "protocol": protocol, "concurrency": c}
                        for tool in order:
                            if tool == "perf_analyzer":
                                cell[tool] = perf_analyzer(pa, urls[protocol].split("//")[-1],
                                                           server.grpc_url, protocol, args.model,
                                                           c, args)
                            else:
                                cell[tool] = pyserve_bench(urls[protocol], protocol, args.model,
                                                           c, args)
                        cell["ratio"] = (cell["pyserve bench"]["throughput"]
                                         / cell["perf_analyzer"]["throughput"])
                        runs.append(cell)
                        print(f"round {round_ + 1} {protocol} c={c}: perf_analyzer "
                              f"{cell['perf_analyzer']['throughput']:.0f}, pyserve bench "
                              f"{cell['pyserve bench']['throughput']:.0f} infer/s "
                              f"(ratio {cell['ratio']:.2f})", file=sys.stderr, flush=True)
        finally:
            server.stop()

    print(f"\n{args.model}, {args.rounds} interleaved round(s), medians; ratio = pyserve bench / "
          f"perf_analyzer (throughput, the median of per-round ratios); CPU = each tool's own "
          f"CPU time per request\n")
    print(f"{'protocol':8} {'c':>3} {'perf_analyzer':>14} {'pyserve bench':>14} {'ratio':>6} "
          f"{'min':>5} {'max':>5} | {'PA cpu us':>9} {'bench cpu us':>12}")
    summary = []
    for protocol in protocols:
        for c in levels:
            cells = [r for r in runs if r["protocol"] == protocol and r["concurrency"] == c]
            ratios = [r["ratio"] for r in cells]
            row = {"protocol": protocol, "concurrency": c,
                   "perf_analyzer": _median([r["perf_analyzer"]["throughput"] for r in cells]),
                   "pyserve_bench": _median([r["pyserve bench"]["throughput"] for r in cells]),
                   "ratio": _median(ratios), "ratio_min": min(ratios), "ratio_max": max(ratios),
                   "perf_analyzer_cpu_us": _median(
                       [r["perf_analyzer"]["cpu_us_per_request"] for r in cells]),
                   "pyserve_bench_cpu_us": _median(
                       [r["pyserve bench"]["cpu_us_per_request"] for r in cells])}
            summary.append(row)
            print(f"{protocol:8} {c:>3} {row['perf_analyzer']:>14.0f} {row['pyserve_bench']:>14.0f} "
                  f"{row['ratio']:>6.2f} {row['ratio_min']:>5.2f} {row['ratio_max']:>5.2f} | "
                  f"{row['perf_analyzer_cpu_us'] or 0:>9.0f} {row['pyserve_bench_cpu_us']:>12.0f}")
    if args.json:
        args.json.write_text(json.dumps({"summary": summary, "runs": runs}, indent=2) + "\n")


if __name__ == "__main__":
    main()
