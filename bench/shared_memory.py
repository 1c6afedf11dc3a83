"""A large input through system shared memory versus on the wire, one server, one run.

Serves an ONNX model that sums a 16 MiB FP32 input (so that moving the input is most of the
work) from one `pyserve serve` process on 127.0.0.1, and sends it sequential requests with
tritonclient for a few seconds each way, per protocol: the tensor's bytes in the request, then
only a reference to a registered region that already holds them (as a client that produces
its data in shared memory does). Prints requests/s and the ratio shared memory / wire.

    python bench/shared_memory.py [--mib 16] [--seconds 5] [--frontend native|python]
"""

from __future__ import annotations

import argparse
import secrets
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import onnx
import tritonclient.grpc as grpcclient
import tritonclient.http as httpclient
import tritonclient.utils.shared_memory as shm
from onnx import TensorProto, helper

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tests"))
from conftest import start_server  # noqa: E402

CONFIG = """
platform: "onnxruntime_onnx"
max_batch_size: 0
input [ { name: "x" data_type: TYPE_FP32 dims: [ -1 ] } ]
output [ { name: "total" data_type: TYPE_FP32 dims: [ 1 ] } ]
"""


def write_repository(root: Path) -> None:
    graph = helper.make_graph(
        [helper.make_node("ReduceSum", ["x"], ["total"], keepdims=1)], "sum",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["n"])],
        [helper.make_tensor_value_info("total", TensorProto.FLOAT, [1])])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])
    model.ir_version = 8
    (root / "sum" / "1").mkdir(parents=True)
    onnx.save(model, str(root / "sum" / "1" / "model.onnx"))
    (root / "sum" / "config.pbtxt").write_text(CONFIG)


def rate(client, module, tensor, seconds: float) -> float:
    """Sequential requests per second, after a few to warm up."""
    for _ in range(3):
        client.infer("sum", [tensor])
    count, start = 0, time.perf_counter()
    while time.perf_counter() - start < seconds:
        client.infer("sum", [tensor])
        count += 1
    return count / (time.perf_counter() - start)


def measure(module, url: str, data: np.ndarray, seconds: float) -> tuple[float, float]:
    """(wire, shared memory) requests per second over one protocol."""
    nbytes = data.nbytes
    key = f"/pyserve_bench_{secrets.token_hex(4)}"
    handle = shm.create_shared_memory_region("bench", key, nbytes)
    client = module.InferenceServerClient(url)
    try:
        shm.set_shared_memory_region(handle, [data])
        client.register_system_shared_memory("bench", key, nbytes)
        wire = module.InferInput("x", list(data.shape), "FP32")
        wire.set_data_from_numpy(data)
        in_region = module.InferInput("x", list(data.shape), "FP32")
        in_region.set_shared_memory("bench", nbytes)
        expected = float(data.sum(dtype=np.float64))
        for tensor in (wire, in_region):
            total = client.infer("sum", [tensor]).as_numpy("total")[0]
            assert abs(total - expected) <= 1e-3 * abs(expected), (total, expected)
        return rate(client, module, wire, seconds), rate(client, module, in_region, seconds)
    finally:
        client.unregister_system_shared_memory()
        client.close()
        shm.destroy_shared_memory_region(handle)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--mib", type=int, default=16)
    parser.add_argument("--seconds", type=float, default=5.0)
    parser.add_argument("--frontend", choices=["native", "python"], default="native")
    args = parser.parse_args()
    data = np.random.default_rng(0).random(args.mib * (1 << 20) // 4, dtype=np.float32)
    with tempfile.TemporaryDirectory() as tmp:
        repository = Path(tmp) / "repo"
        write_repository(repository)
        server = start_server([repository], Path(tmp) / "server.log", "--grpc-frontend",
                              args.frontend, "--http-frontend", args.frontend)
        try:
            print(f"{args.mib} MiB FP32 input, sequential requests, {args.frontend} frontends")
            for name, module, url in (("gRPC", grpcclient, server.grpc_url),
                                      ("HTTP", httpclient, server.http_url)):
                wire, region = measure(module, url, data, args.seconds)
                print(f"{name}: wire {wire:7.1f} req/s, shared memory {region:7.1f} req/s, "
                      f"ratio {region / wire:.2f}x")
        finally:
            server.stop()


if __name__ == "__main__":
    main()
