"""The `pyserve bench` and `pyserve tune` subcommands (flags only; the work is in run())."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path


def _numbers(kind):
    def parse(text: str):
        try:
            return [kind(v) for v in text.split(",") if v]
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected a comma-separated list, got '{text}'")
    return parse


def add_bench(commands) -> None:
    bench = commands.add_parser(
        "bench", help="measure a model's throughput and latency (like perf_analyzer)",
        description="Load a model at each concurrency (or request rate) until three "
                    "consecutive measurement windows agree within 10%% (at most ten), then "
                    "report infer/s, latency percentiles, errors, the server-side breakdown "
                    "and the generator's own CPU time per request. --core runs the core "
                    "microbenchmarks of a source checkout instead.")
    bench.add_argument("-m", "--model")
    bench.add_argument("-u", "--url", default="127.0.0.1:8001",
                       help="host:port (gRPC) or http://host:port (default: %(default)s)")
    bench.add_argument("-i", "--protocol", choices=["grpc", "http"], default=None)
    bench.add_argument("-x", "--model-version", default="")
    level = bench.add_mutually_exclusive_group()
    level.add_argument("--concurrency", "--concurrency-range", type=_numbers(int),
                       default=[1], metavar="N[,N...]")
    level.add_argument("--request-rate", type=_numbers(float), default=[], metavar="R[,R...]")
    bench.add_argument("-b", "--batch-size", type=int, default=1)
    bench.add_argument("--shape", action="append", default=[], metavar="NAME:D1,D2",
                       help="shape of a variable-sized input, without the batch dimension")
    bench.add_argument("--input-data", default="random",
                       help="random, zero, or a JSON file in perf_analyzer's format")
    bench.add_argument("--streaming", action="store_true", help="send over ModelStreamInfer")
    bench.add_argument("--shared-memory", choices=["none", "system"], default="none",
                       help="system: inputs and outputs in a registered POSIX shared memory "
                            "region, requests carry references only")
    bench.add_argument("--output-shared-memory-size", type=int, default=100 * 1024,
                       metavar="BYTES", help="per output whose size the model does not fix "
                                             "(default: %(default)s)")
    bench.add_argument("-p", "--measurement-interval", type=int, default=5000, metavar="MS")
    bench.add_argument("--max-trials", type=int, default=10, help="windows at most per level")
    bench.add_argument("-s", "--stability-percentage", type=float, default=10.0)
    bench.add_argument("--generator", choices=["auto", "native", "python"], default="auto",
                       help="native: C++ threads that never take the GIL (built with gRPC C++; "
                            "HTTP also needs cpp-httplib); python: grpcio/http.client threads; "
                            "auto (default): native where built")
    bench.add_argument("--processes", type=int, default=0,
                       help="load generator processes (default: one for the native generator, "
                            "half the cores for the Python one, at most the concurrency)")
    bench.add_argument("--compare", metavar="URL2", help="run the same load against a second "
                                                         "server and print ratios")
    bench.add_argument("--json", type=Path, metavar="OUT")
    bench.add_argument("--csv", type=Path, metavar="OUT")
    bench.add_argument("--plot", type=Path, metavar="OUT.png")
    bench.add_argument("-q", "--quiet", action="store_true", help="no progress line")
    bench.add_argument("--core", action="store_true",
                       help="run the C++ core's microbenchmarks (bench/core_bench.py of a source "
                            "checkout, which builds them with CMake) instead of loading a server")
    bench.add_argument("--source", type=Path, default=Path.cwd(), metavar="DIR",
                       help="the source checkout for --core (default: the current directory)")
    bench.set_defaults(func=bench_main)


def core_main(source: Path) -> int:
    """The core microbenchmarks live beside the C++ sources they build, not in the wheel."""
    import subprocess

    script = source / "bench" / "core_bench.py"
    if not script.is_file():
        raise SystemExit(f"pyserve bench --core: no bench/core_bench.py under {source}; run it "
                         f"in a source checkout of pyserve or give one with --source DIR")
    return subprocess.run([sys.executable, str(script)], cwd=source).returncode


def _progress(quiet: bool):
    if quiet:
        return None, None
    try:
        from rich.console import Console
        console = Console(stderr=True)
        status = console.status("starting")
        status.start()
        return (lambda text: status.update(text)), status.stop
    except ImportError:
        def show(text: str) -> None:
            print(f"\r{text:<100}", end="", file=sys.stderr, flush=True)
        return show, lambda: print(file=sys.stderr)


def bench_main(args) -> int:
    from pyserve.bench import BenchOptions, run
    from pyserve.bench import _report
    from pyserve.client import InferenceServerError

    if args.core:
        return core_main(args.source.resolve())
    if not args.model:
        raise SystemExit("pyserve bench: -m/--model is required (or --core)")
    options = BenchOptions(
        model=args.model, url=args.url, protocol=args.protocol, version=args.model_version,
        concurrency=args.concurrency, request_rate=args.request_rate,
        batch_size=args.batch_size, shapes=args.shape, input_data=args.input_data,
        streaming=args.streaming, shared_memory=args.shared_memory,
        output_shared_memory_size=args.output_shared_memory_size,
        measurement_interval_ms=args.measurement_interval,
        max_windows=args.max_trials, stability=args.stability_percentage / 100,
        processes=args.processes, generator=args.generator)
    show, done = _progress(args.quiet)
    urls = [args.url] + ([args.compare] if args.compare else [])
    labels = [url if len(urls) == 1 else f"{'AB'[i]}: {url}" for i, url in enumerate(urls)]
    series = {}
    try:
        for label, url in zip(labels, urls):
            series[label] = run(options, url, progress=show)
    except (ValueError, RuntimeError, InferenceServerError) as e:
        raise SystemExit(f"pyserve bench: {e}") from None
    finally:
        if done:
            done()
    results = [r for rs in series.values() for r in rs]
    for label, rs in series.items():
        print(f"{args.model} at {label} ({rs[0].protocol if rs else ''}):")
        print(_report.table(rs))
    if args.compare:
        base, other = series.values()
        print(f"\nB/A with A = {args.url}, B = {args.compare}:")
        print(_report.compare_table(base, other))
    if args.json:
        _report.write_json(args.json, results)
    if args.csv:
        _report.write_csv(args.csv, results)
    if args.plot:
        _report.plot(args.plot, series)
    return 0 if all(r.errors == 0 for r in results) else 1


def add_tune(commands) -> None:
    tune = commands.add_parser(
        "tune", help="find the batching and instance configuration with the best throughput "
                     "within a p99 latency budget",
        description="Sweep max_batch_size, preferred batch sizes, max_queue_delay_microseconds "
                    "and instance count through the repository API (config overrides; the "
                    "server must run with --model-control-mode explicit), measure each with "
                    "the bench, and print the Pareto table and the winner.")
    tune.add_argument("-m", "--model", required=True)
    tune.add_argument("-u", "--url", default="127.0.0.1:8001")
    tune.add_argument("--latency-budget-ms", type=float, required=True, metavar="P99")
    tune.add_argument("--budget-minutes", type=float, default=10.0)
    tune.add_argument("--concurrency", type=_numbers(int), default=None, metavar="N[,N...]",
                      help="load levels per configuration (default: 1,4,16 capped by the "
                           "largest batch)")
    tune.add_argument("--max-batch-sizes", type=_numbers(int), default=None, metavar="N[,N...]")
    tune.add_argument("--queue-delays-us", type=_numbers(int), default=None, metavar="US[,US...]")
    tune.add_argument("--instance-counts", type=_numbers(int), default=None, metavar="N[,N...]")
    tune.add_argument("-p", "--measurement-interval", type=int, default=1000, metavar="MS")
    tune.add_argument("--json", type=Path, metavar="OUT")
    tune.add_argument("--plot", type=Path, metavar="OUT.png")
    tune.add_argument("--write", action="store_true",
                      help="store the winner as the model's config.pbtxt (with --model-repository)")
    tune.add_argument("--model-repository", type=Path, metavar="DIR")
    tune.add_argument("-q", "--quiet", action="store_true")
    tune.set_defaults(func=tune_main)


def tune_main(args) -> int:
    from pyserve.bench.tune import TuneOptions, tune

    if args.write and args.model_repository is None:
        raise SystemExit("pyserve tune: --write needs --model-repository DIR")
    options = TuneOptions(model=args.model, url=args.url,
                          latency_budget_ms=args.latency_budget_ms,
                          budget_minutes=args.budget_minutes, concurrency=args.concurrency,
                          max_batch_sizes=args.max_batch_sizes,
                          queue_delays_us=args.queue_delays_us,
                          instance_counts=args.instance_counts,
                          measurement_interval_ms=args.measurement_interval)
    show, done = _progress(args.quiet)
    try:
        report = tune(options, progress=show)
    finally:
        if done:
            done()
    print(report.table())
    if args.json:
        report.write_json(args.json)
    if args.plot:
        report.plot(args.plot)
    if report.best is None:
        print(f"no configuration met the p99 budget of {args.latency_budget_ms} ms")
        return 1
    if args.write:
        path = report.write_config(args.model_repository)
        print(f"wrote {path}")
    return 0
