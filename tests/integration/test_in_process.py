"""pyserve's server and NVIDIA's tritonclient in one Python process.

tritonclient registers the protobuf package `inference` in protobuf's default pool; pyserve
keeps its copy of the same protos in a private pool, so both work side by side.
"""

from __future__ import annotations

import asyncio
import subprocess
import sys
import threading

import numpy as np

from conftest import EXAMPLES, OUTSIDE
from pyserve.options import ServerOptions
from pyserve.server import Server


def test_tritonclient_against_a_server_in_the_same_process():
    import tritonclient.grpc as grpcclient

    loop = asyncio.new_event_loop()
    server = Server(ServerOptions(model_repositories=[EXAMPLES], host="127.0.0.1",
                                  grpc_port=0, http_port=0, metrics_port=0))
    thread = threading.Thread(target=loop.run_forever, daemon=True)
    thread.start()
    asyncio.run_coroutine_threadsafe(server.start(), loop).result(60)
    try:
        with grpcclient.InferenceServerClient(f"127.0.0.1:{server.grpc_port}") as client:
            a = np.arange(32, dtype=np.int32).reshape(2, 16)
            inputs = [grpcclient.InferInput(n, a.shape, "INT32") for n in ("INPUT0", "INPUT1")]
            for tensor in inputs:
                tensor.set_data_from_numpy(a)
            result = client.infer("simple", inputs)
            np.testing.assert_array_equal(result.as_numpy("OUTPUT0"), a * 2)
            assert client.get_model_config("simple").config.max_batch_size == 8
    finally:
        asyncio.run_coroutine_threadsafe(server.stop(), loop).result(60)
        loop.call_soon_threadsafe(loop.stop)
        thread.join(10)


def test_both_import_orders_and_identical_wire_bytes():
    script = """
import sys
order = sys.argv[1]
if order == "pyserve-first":
    from pyserve.protocol import pb
    from tritonclient.grpc import service_pb2
else:
    from tritonclient.grpc import service_pb2
    from pyserve.protocol import pb
ours = pb.ModelInferRequest(model_name="m", id="1", raw_input_contents=[b"abc"])
ours.inputs.add(name="X", datatype="INT32", shape=[1, 3])
ours.parameters["priority"].uint64_param = 1
theirs = service_pb2.ModelInferRequest.FromString(ours.SerializeToString())
assert theirs.SerializeToString(deterministic=True) == ours.SerializeToString(deterministic=True)
assert theirs.inputs[0].name == "X" and theirs.parameters["priority"].uint64_param == 1
print("ok")
"""
    for order in ("pyserve-first", "tritonclient-first"):
        result = subprocess.run([sys.executable, "-c", script, order], capture_output=True,
                                text=True, cwd=OUTSIDE)
        assert result.returncode == 0 and result.stdout.strip() == "ok", result.stderr
