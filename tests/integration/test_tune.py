"""`pyserve tune` on a model where batching matters (an MLP whose weights dominate its cost,
as in bench/batching_e2e.py): it must find a batching configuration well above the same
model without batching, within the latency budget, restore the served config, and --write
the winner."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from conftest import OUTSIDE, start_server
from pyserve.client import Client

WIDTHS = [2048, 4096, 4096, 2048]  # bench/batching_e2e.py's MLP: 128 MB of weights
CONFIG = """
platform: "onnxruntime_onnx"
max_batch_size: 8
input [ { name: "x" data_type: TYPE_FP32 dims: [ 2048 ] } ]
output [ { name: "y" data_type: TYPE_FP32 dims: [ 2048 ] } ]
instance_group [ { count: 1 kind: KIND_CPU } ]
"""


def mlp(widths: list[int]) -> onnx.ModelProto:
    rng = np.random.default_rng(0)
    nodes, weights, previous = [], [], "x"
    for i, (fan_in, fan_out) in enumerate(zip(widths, widths[1:])):
        weights.append(numpy_helper.from_array(
            (rng.standard_normal((fan_in, fan_out)) / np.sqrt(fan_in)).astype(np.float32), f"w{i}"))
        out = "y" if i == len(widths) - 2 else f"h{i}"
        nodes += [helper.make_node("MatMul", [previous, f"w{i}"], [f"m{i}"]),
                  helper.make_node("Relu", [f"m{i}"], [out])]
        previous = out
    graph = helper.make_graph(
        nodes, "mlp", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["b", widths[0]])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["b", widths[-1]])], weights)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    return model


@pytest.fixture(scope="module")
def mlp_server(tmp_path_factory):
    root = tmp_path_factory.mktemp("tune_repo")
    (root / "mlp" / "1").mkdir(parents=True)
    onnx.save(mlp(WIDTHS), str(root / "mlp" / "1" / "model.onnx"))
    (root / "mlp" / "config.pbtxt").write_text(CONFIG)
    server = start_server([root], tmp_path_factory.mktemp("logs") / "tune.log",
                          "--model-control-mode", "explicit", "--load-model", "mlp")
    server.repository = root
    yield server
    server.stop()


def test_tune_finds_batching_and_writes_it(mlp_server, tmp_path):
    out = tmp_path / "tune.json"
    done = subprocess.run(
        [sys.executable, "-m", "pyserve.cli", "tune", "-q", "-m", "mlp", "-u", mlp_server.grpc_url,
         "--latency-budget-ms", "500", "--budget-minutes", "3", "--concurrency", "8",
         "--max-batch-sizes", "8", "--queue-delays-us", "2000", "--instance-counts", "1",
         "-p", "700", "--json", str(out), "--write", "--model-repository",
         str(mlp_server.repository)],
        capture_output=True, text=True, timeout=400, cwd=OUTSIDE)
    assert done.returncode == 0, done.stdout + done.stderr
    rows = json.loads(out.read_text())
    by_config = {r["configuration"]: r for r in rows}
    baseline = by_config["no batching, 1 instance"]["throughput"]
    batched = by_config["batch<=8, delay 2000us, 1 instance(s)"]["throughput"]
    assert batched > 1.8 * baseline, done.stdout
    assert "best within p99 <= 500 ms: batch<=8" in done.stdout
    written = (mlp_server.repository / "mlp" / "config.pbtxt").read_text()
    assert "dynamic_batching" in written and "max_queue_delay_microseconds: 2000" in written
    with Client(mlp_server.grpc_url) as client:  # the served config is the original again
        config = client.model_config("mlp")
        assert not config.HasField("dynamic_batching")
        x = np.ones((1, 2048), np.float32)
        assert client.infer("mlp", {"x": x})["y"].shape == (1, 2048)
