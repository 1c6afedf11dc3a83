"""End-to-end throughput with dynamic batching on versus off, at 8 concurrent clients.

Serves one compute-bound model twice from one `pyserve serve` process on 127.0.0.1: an MLP
whose 128 MB of weights make a batch of 8 cost little more than a batch of 1, once with
`dynamic_batching {}` and once without, one instance each. Eight concurrent gRPC clients
(tritonclient's asyncio client) drive each in turn; the ratio is printed.

    python bench/batching_e2e.py [--seconds 10] [--concurrency 8]
"""

from __future__ import annotations

import argparse
import asyncio
import sys
import tempfile
from pathlib import Path

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tests"))
from conftest import start_server  # noqa: E402
from grpc_load import throughput  # noqa: E402

WIDTHS = [2048, 4096, 4096, 2048]
CONFIG = """
platform: "onnxruntime_onnx"
max_batch_size: 8
input [ {{ name: "x" data_type: TYPE_FP32 dims: [ {width_in} ] }} ]
output [ {{ name: "y" data_type: TYPE_FP32 dims: [ {width_out} ] }} ]
instance_group [ {{ count: 1 kind: KIND_CPU }} ]
{scheduling}
"""


def mlp_model() -> onnx.ModelProto:
    rng = np.random.default_rng(0)
    nodes, initializers, previous = [], [], "x"
    for i, (fan_in, fan_out) in enumerate(zip(WIDTHS, WIDTHS[1:])):
        weight = (rng.standard_normal((fan_in, fan_out)) / np.sqrt(fan_in)).astype(np.float32)
        initializers.append(numpy_helper.from_array(weight, f"w{i}"))
        out = "y" if i == len(WIDTHS) - 2 else f"h{i}"
        nodes.append(helper.make_node("MatMul", [previous, f"w{i}"], [f"m{i}"]))
        nodes.append(helper.make_node("Relu", [f"m{i}"], [out]))
        previous = out
    graph = helper.make_graph(
        nodes, "mlp",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", WIDTHS[0]])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["batch", WIDTHS[-1]])],
        initializers)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    return model


def write_repository(root: Path) -> None:
    model = mlp_model()
    for name, scheduling in (("mlp_batching", "dynamic_batching { }"), ("mlp_no_batching", "")):
        (root / name / "1").mkdir(parents=True)
        onnx.save(model, str(root / name / "1" / "model.onnx"))
        (root / name / "config.pbtxt").write_text(CONFIG.format(
            width_in=WIDTHS[0], width_out=WIDTHS[-1], scheduling=scheduling))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=10.0)
    parser.add_argument("--concurrency", type=int, default=8)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        repository = Path(tmp) / "repo"
        write_repository(repository)
        server = start_server([repository], Path(tmp) / "server.log")
        try:
            data = np.random.default_rng(1).standard_normal((1, WIDTHS[0])).astype(np.float32)
            rates = {model: asyncio.run(throughput(server.grpc_url, model, "x", data,
                                                   args.seconds, args.concurrency))
                     for model in ("mlp_no_batching", "mlp_batching")}
        finally:
            server.stop()
    off, on = rates["mlp_no_batching"], rates["mlp_batching"]
    print(f"batching  {args.concurrency} clients: on {on:.0f} infer/s, off {off:.0f} infer/s, "
          f"ratio {on / off:.2f}x (bar >= 1.5x)")


if __name__ == "__main__":
    main()
