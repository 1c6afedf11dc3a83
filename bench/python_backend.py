"""What the in-process Python backend costs next to ONNX Runtime, end to end.

One `pyserve serve` process on 127.0.0.1 serves three no-op models with the same config
(FP32 [N] in -> the same out, max_batch_size 8, dynamic batching, one CPU instance):
`noop_onnx` (ONNX Identity), `noop_python` (a Triton-style model.py returning its input
through pb_utils) and `noop_native` (a `@pyserve.batched` function returning its input).
For each: p50 latency of sequential requests from tritonclient's gRPC client, and throughput
with C concurrent clients from tritonclient's asyncio gRPC client. Prints the latency the
Python backend adds per request and the throughput ratio to ONNX Runtime.

    python bench/python_backend.py [--requests 3000] [--seconds 6] [--concurrency 8] [--elements 256]
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import onnx
from onnx import TensorProto, helper

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tests"))
from conftest import start_server  # noqa: E402
from grpc_load import throughput  # noqa: E402

MODELS = ("noop_onnx", "noop_python", "noop_native")
CONFIG = """
backend: "{backend}"
max_batch_size: 8
input [ {{ name: "INPUT0" data_type: TYPE_FP32 dims: [ {elements} ] }} ]
output [ {{ name: "OUTPUT0" data_type: TYPE_FP32 dims: [ {elements} ] }} ]
dynamic_batching {{ }}
instance_group [ {{ count: 1 kind: KIND_CPU }} ]
"""
TRITON_STYLE = '''
import triton_python_backend_utils as pb_utils


class TritonPythonModel:
    def execute(self, requests):
        return [pb_utils.InferenceResponse(
                    [pb_utils.Tensor("OUTPUT0", r.get_input_tensor_by_name("INPUT0").as_numpy())])
                for r in requests]
'''
NATIVE = '''
import pyserve


@pyserve.batched
def infer(inputs):
    return {"OUTPUT0": inputs["INPUT0"]}
'''


def identity_onnx(elements: int) -> onnx.ModelProto:
    graph = helper.make_graph(
        [helper.make_node("Identity", ["INPUT0"], ["OUTPUT0"])], "noop",
        [helper.make_tensor_value_info("INPUT0", TensorProto.FLOAT, ["batch", elements])],
        [helper.make_tensor_value_info("OUTPUT0", TensorProto.FLOAT, ["batch", elements])])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    return model


def write_repository(root: Path, elements: int) -> None:
    for name in MODELS:
        (root / name / "1").mkdir(parents=True)
        backend = "onnxruntime" if name == "noop_onnx" else "python"
        (root / name / "config.pbtxt").write_text(CONFIG.format(backend=backend, elements=elements))
    onnx.save(identity_onnx(elements), str(root / "noop_onnx" / "1" / "model.onnx"))
    (root / "noop_python" / "1" / "model.py").write_text(TRITON_STYLE)
    (root / "noop_native" / "1" / "model.py").write_text(NATIVE)


def latencies_us(url: str, model: str, requests: int, data: np.ndarray) -> list[float]:
    """Durations of `requests` sequential requests (after a short warm-up), in microseconds."""
    import tritonclient.grpc as grpcclient

    with grpcclient.InferenceServerClient(url) as client:
        tensor = grpcclient.InferInput("INPUT0", list(data.shape), "FP32")
        tensor.set_data_from_numpy(data)
        result = client.infer(model, [tensor])
        assert np.array_equal(result.as_numpy("OUTPUT0"), data), model
        for _ in range(min(100, requests)):
            client.infer(model, [tensor])
        times = []
        for _ in range(requests):
            start = time.perf_counter()
            client.infer(model, [tensor])
            times.append((time.perf_counter() - start) * 1e6)
    return times


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--requests", type=int, default=3000)
    parser.add_argument("--seconds", type=float, default=6.0)
    parser.add_argument("--concurrency", type=int, default=8)
    parser.add_argument("--elements", type=int, default=256)
    parser.add_argument("--rounds", type=int, default=3,
                        help="the models take turns this many times, so drift hits all alike")
    args = parser.parse_args()
    data = np.random.default_rng(0).standard_normal((1, args.elements)).astype(np.float32)
    times = {model: [] for model in MODELS}
    rates = {model: [] for model in MODELS}
    with tempfile.TemporaryDirectory() as tmp:
        repository = Path(tmp) / "repo"
        write_repository(repository, args.elements)
        server = start_server([repository], Path(tmp) / "server.log")
        try:
            for _ in range(args.rounds):
                for model in MODELS:
                    times[model] += latencies_us(server.grpc_url, model,
                                                 args.requests // args.rounds, data)
                    rates[model].append(asyncio.run(throughput(
                        server.grpc_url, model, "INPUT0", data, args.seconds / args.rounds,
                        args.concurrency, warmup_seconds=0.5)))
        finally:
            server.stop()
    latency = {model: statistics.median(t) for model, t in times.items()}
    rate = {model: statistics.median(r) for model, r in rates.items()}
    for model in MODELS:
        print(f"{model:12s} p50 {latency[model]:7.1f} us sequential, "
              f"{rate[model]:8.0f} infer/s at {args.concurrency} clients")
    onnx_latency, onnx_rate = latency["noop_onnx"], rate["noop_onnx"]
    for model in ("noop_python", "noop_native"):
        print(f"{model} vs onnx: {latency[model] - onnx_latency:+.1f} us per request (p50), "
              f"throughput ratio {rate[model] / onnx_rate:.2f}x")


if __name__ == "__main__":
    main()
