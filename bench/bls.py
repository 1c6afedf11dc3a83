"""BLS overhead per call: a model.py that calls an ONNX model against the ONNX model called
directly, on one pyserve server.

What it measures
    perf_analyzer 2.51 (gRPC, batch 1, synchronous, concurrency 1) on three models of one server,
    interleaved over rounds: `double` (ONNX: OUTPUT0 = 2 INPUT0, FP32 [16]), `bls_double` (a
    Triton model.py whose execute calls `double` with pb_utils.InferenceRequest(...).exec() and
    answers its output) and `py_double` (a model.py computing the same in numpy, no BLS). At
    concurrency 1 a request's mean latency is 1 / throughput (which perf_analyzer reports even
    for windows that are not stable on a shared machine). The BLS overhead per call is the
    median over rounds of latency(bls_double) - latency(double): what a client pays for going
    through a model.py that calls the ONNX model; latency(py_double) - latency(double) shows the
    share of the Python backend itself (one model.py execute per request).

How to run (the venvs and helpers of bench/vs_triton.py; ~2 minutes)
    python bench/bls.py [--rounds 3]
"""

from __future__ import annotations

import argparse
import statistics
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import vs_triton  # noqa: E402 - the perf_analyzer and process helpers

IO = """max_batch_size: 8
input [ { name: "INPUT0" data_type: TYPE_FP32 dims: [ 16 ] } ]
output [ { name: "OUTPUT0" data_type: TYPE_FP32 dims: [ 16 ] } ]
instance_group [ { count: 1 kind: KIND_CPU } ]
"""
BLS_DOUBLE = """import triton_python_backend_utils as pb_utils


class TritonPythonModel:
    def execute(self, requests):
        responses = []
        for request in requests:
            call = pb_utils.InferenceRequest(
                model_name="double", requested_output_names=["OUTPUT0"],
                inputs=[pb_utils.get_input_tensor_by_name(request, "INPUT0")])
            answer = call.exec()
            if answer.has_error():
                raise pb_utils.TritonModelException(answer.error().message())
            responses.append(pb_utils.InferenceResponse(
                [pb_utils.get_output_tensor_by_name(answer, "OUTPUT0")]))
        return responses
"""
PY_DOUBLE = """import triton_python_backend_utils as pb_utils


class TritonPythonModel:
    def execute(self, requests):
        return [pb_utils.InferenceResponse([pb_utils.Tensor(
                    "OUTPUT0", pb_utils.get_input_tensor_by_name(r, "INPUT0").as_numpy() * 2)])
                for r in requests]
"""
MODELS = ("double", "bls_double", "py_double")


def make_repository(cache: Path) -> Path:
    import shutil

    repo = cache / "repos" / "pyserve-bls"
    shutil.rmtree(repo, ignore_errors=True)
    (repo / "double" / "1").mkdir(parents=True)
    vs_triton.make_double(repo / "double" / "1" / "model.onnx")
    (repo / "double" / "config.pbtxt").write_text(
        'name: "double"\nplatform: "onnxruntime_onnx"\n' + IO)
    for name, source in (("bls_double", BLS_DOUBLE), ("py_double", PY_DOUBLE)):
        (repo / name / "1").mkdir(parents=True)
        (repo / name / "1" / "model.py").write_text(source)
        (repo / name / "config.pbtxt").write_text(f'name: "{name}"\nbackend: "python"\n' + IO)
    return repo


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--measurement-interval", type=int, default=2000)
    parser.add_argument("--stability-percentage", type=int, default=25)
    parser.add_argument("--max-trials", type=int, default=10)
    parser.add_argument("--pyserve-args", default="")
    parser.add_argument("--cache-dir", type=Path, default=Path.home() / ".cache" / "pyserve-bench")
    args = parser.parse_args()
    cache = args.cache_dir.expanduser().resolve()
    tools = vs_triton.Tools(cache / "venvs", cache)
    pa = tools.perf_analyzer()
    repos = {"pyserve": make_repository(cache)}
    scratch = cache / "runs"
    scratch.mkdir(parents=True, exist_ok=True)
    server = vs_triton.start_server("pyserve", "double", repos, Path("-"), cache, args, tools)
    latency_us = {m: [] for m in MODELS}
    try:
        for model in MODELS:
            vs_triton.wait_ready(server, model)
        for round_index in range(args.rounds):
            for model in MODELS:
                record = vs_triton.run_cell(server, [], model, "grpc", 1, args.measurement_interval,
                                            None, pa, args, scratch)
                rate = record.get("infer_per_s")
                latency_us[model].append(1e6 / rate if rate else None)
            vs_triton.log(f"round {round_index + 1}: latency us " +
                          ", ".join(f"{m} {latency_us[m][-1]}" for m in MODELS))
    finally:
        server.stop()

    def overhead(model: str) -> float:
        return statistics.median(x - d for x, d in zip(latency_us[model], latency_us["double"])
                                 if x is not None and d is not None)

    print("\nmean latency at c=1 (us, median of rounds): " +
          ", ".join(f"{m} {statistics.median(v for v in latency_us[m] if v is not None):.0f}"
                    for m in MODELS))
    print(f"BLS overhead per call: {overhead('bls_double'):.0f} us "
          f"(a model.py without BLS: {overhead('py_double'):.0f} us)")


if __name__ == "__main__":
    main()
