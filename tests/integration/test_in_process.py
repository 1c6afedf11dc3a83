"""pyserve's server and NVIDIA's tritonclient in one Python process.

tritonclient registers the protobuf package `inference` in protobuf's default pool; pyserve
keeps its copy of the same protos in a private pool, so both work side by side.
"""

from __future__ import annotations

import asyncio
import subprocess
import sys
import threading
import time
from pathlib import Path

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


SLOW_MODEL = """
import time
import triton_python_backend_utils as pb_utils


class TritonPythonModel:
    def execute(self, requests):
        open(__file__ + ".started", "w").close()
        time.sleep(4)
        return [pb_utils.InferenceResponse([pb_utils.Tensor(
            "OUT", pb_utils.get_input_tensor_by_name(r, "IN").as_numpy())]) for r in requests]
"""


def threads_named(prefix: str) -> list[str]:
    names = []
    for task in Path("/proc/self/task").iterdir():
        try:
            names.append((task / "comm").read_text().strip())
        except OSError:  # the thread ended meanwhile
            continue
    return [name for name in names if name.startswith(prefix)]


def test_stop_past_its_timeout_answers_calls_and_joins_the_grpc_threads(tmp_path):
    """A request still executing when the exit timeout passes: its call is answered
    UNAVAILABLE and the completion-queue threads end (they were left running for good)."""
    import grpc
    import tritonclient.grpc as grpcclient
    from tritonclient.utils import InferenceServerException

    model = tmp_path / "repo" / "slow"
    (model / "1").mkdir(parents=True)
    (model / "config.pbtxt").write_text(
        'backend: "python"\nmax_batch_size: 0\n'
        'input [ { name: "IN" data_type: TYPE_INT32 dims: [ 1 ] } ]\n'
        'output [ { name: "OUT" data_type: TYPE_INT32 dims: [ 1 ] } ]\n')
    (model / "1" / "model.py").write_text(SLOW_MODEL)
    started = model / "1" / "model.py.started"
    loop = asyncio.new_event_loop()
    server = Server(ServerOptions(model_repositories=[tmp_path / "repo"], host="127.0.0.1",
                                  grpc_port=0, http_port=0, metrics_port=0, grpc_frontend="native",
                                  exit_timeout_secs=1.0))
    thread = threading.Thread(target=loop.run_forever, daemon=True)
    thread.start()
    asyncio.run_coroutine_threadsafe(server.start(), loop).result(60)
    assert threads_named("ps-grpc")
    outcome = {}

    def infer():
        with grpcclient.InferenceServerClient(f"127.0.0.1:{server.grpc_port}") as client:
            tensor = grpcclient.InferInput("IN", [1], "INT32")
            tensor.set_data_from_numpy(np.array([7], dtype=np.int32))
            try:
                client.infer("slow", [tensor], client_timeout=60)
            except InferenceServerException as e:
                outcome["status"] = e.status()

    client = threading.Thread(target=infer)
    client.start()
    try:
        deadline = time.monotonic() + 30
        while not started.exists():
            assert time.monotonic() < deadline, "the model never started"
            time.sleep(0.02)
        # Past the exit timeout stop() returns while the frontend's own stop goes on.
        asyncio.run_coroutine_threadsafe(server.stop(), loop).result(60)
        client.join(30)
        assert outcome.get("status") in (str(grpc.StatusCode.UNAVAILABLE),
                                         str(grpc.StatusCode.CANCELLED)), outcome
        deadline = time.monotonic() + 20
        while threads_named("ps-grpc") and time.monotonic() < deadline:
            time.sleep(0.1)
        assert threads_named("ps-grpc") == []
    finally:
        loop.call_soon_threadsafe(loop.stop)
        thread.join(10)
