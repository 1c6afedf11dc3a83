"""`pyserve bench`: a load generator in the spirit of perf_analyzer, on pyserve's client.

    from pyserve.bench import BenchOptions, run
    results = run(BenchOptions("simple", "127.0.0.1:8001", concurrency=[1, 2, 4, 8]))
"""

from pyserve.bench._run import BenchOptions, LevelResult, run

__all__ = ["BenchOptions", "LevelResult", "run"]
