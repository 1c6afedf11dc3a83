"""What process isolation costs per request: the same Python model in-process and in a child
process (config parameter "isolation": "process"), served by one server, measured in one run.

One `pyserve serve` process on 127.0.0.1 serves `python_inprocess` and `python_isolated`,
the same Triton-style model.py (FP32 [N] in -> the same out, max_batch_size 8, dynamic
batching, one CPU instance). For each, in alternating rounds so that drift hits both alike:
throughput at concurrency 1 and C from tritonclient's asyncio gRPC client. Prints infer/s,
the isolated/in-process throughput ratio at each concurrency, and the time isolation adds to
each request at concurrency 1.

    python bench/isolation.py [--seconds 6] [--concurrency 8] [--elements 256] [--rounds 3]
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import sys
import tempfile
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tests"))
from conftest import start_server  # noqa: E402
from grpc_load import throughput  # noqa: E402

MODELS = {"python_inprocess": "", "python_isolated":
          'parameters { key: "isolation" value { string_value: "process" } }'}
CONFIG = """
backend: "python"
max_batch_size: 8
input [ {{ name: "INPUT0" data_type: TYPE_FP32 dims: [ {elements} ] }} ]
output [ {{ name: "OUTPUT0" data_type: TYPE_FP32 dims: [ {elements} ] }} ]
dynamic_batching {{ }}
instance_group [ {{ count: 1 kind: KIND_CPU }} ]
{extra}
"""
MODEL = '''
import triton_python_backend_utils as pb_utils


class TritonPythonModel:
    def execute(self, requests):
        return [pb_utils.InferenceResponse(
                    [pb_utils.Tensor("OUTPUT0", r.get_input_tensor_by_name("INPUT0").as_numpy())])
                for r in requests]
'''


def write_repository(root: Path, elements: int) -> None:
    for name, extra in MODELS.items():
        (root / name / "1").mkdir(parents=True)
        (root / name / "config.pbtxt").write_text(CONFIG.format(elements=elements, extra=extra))
        (root / name / "1" / "model.py").write_text(MODEL)


def check(url: str, model: str, data: np.ndarray) -> None:
    import tritonclient.grpc as grpcclient

    with grpcclient.InferenceServerClient(url) as client:
        tensor = grpcclient.InferInput("INPUT0", list(data.shape), "FP32")
        tensor.set_data_from_numpy(data)
        assert np.array_equal(client.infer(model, [tensor]).as_numpy("OUTPUT0"), data), model


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=6.0,
                        help="measured time per model and concurrency, over all rounds")
    parser.add_argument("--concurrency", type=int, default=8)
    parser.add_argument("--elements", type=int, default=256)
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    data = np.random.default_rng(0).standard_normal((1, args.elements)).astype(np.float32)
    levels = (1, args.concurrency)
    rates = {(model, c): [] for model in MODELS for c in levels}
    with tempfile.TemporaryDirectory() as tmp:
        repository = Path(tmp) / "repo"
        write_repository(repository, args.elements)
        server = start_server([repository], Path(tmp) / "server.log")
        try:
            for model in MODELS:
                check(server.grpc_url, model, data)
            for _ in range(args.rounds):
                for c in levels:
                    for model in MODELS:
                        rates[model, c].append(asyncio.run(throughput(
                            server.grpc_url, model, "INPUT0", data, args.seconds / args.rounds,
                            c, warmup_seconds=0.5)))
        finally:
            server.stop()
    rate = {key: statistics.median(values) for key, values in rates.items()}
    print(f"FP32 [{args.elements}] identity model, gRPC, one server, {args.rounds} rounds")
    for c in levels:
        here, there = rate["python_inprocess", c], rate["python_isolated", c]
        print(f"c={c}: in-process {here:8.0f} infer/s, isolated {there:8.0f} infer/s, "
              f"ratio isolated/in-process {there / here:.2f}")
    added_us = (1 / rate["python_isolated", 1] - 1 / rate["python_inprocess", 1]) * 1e6
    print(f"isolation adds {added_us:.0f} us per request at c=1")


if __name__ == "__main__":
    main()
