"""Overload and cancellation with a real server, on both frontends: past capacity requests
queue up to a bound and are then refused at once (UNAVAILABLE / 503) while memory stays
flat and every accepted request is answered; a client that goes away has its queued request
answered without being computed; a model hung in execute can still be unloaded."""

from __future__ import annotations

import asyncio
import socket
import time
import urllib.request

import numpy as np
import pytest
import tritonclient.grpc as grpcclient
import tritonclient.grpc.aio as grpc_aio
import tritonclient.http.aio as http_aio
from tritonclient.utils import InferenceServerException

from conftest import FRONTENDS, child_pids, start_server

OVERLOAD_SECONDS = 60
SLOW_MODEL = """
import time
import numpy as np
import triton_python_backend_utils as pb_utils

class TritonPythonModel:
    def execute(self, requests):
        if any(pb_utils.get_input_tensor_by_name(r, "X").as_numpy().min() < 0 for r in requests):
            time.sleep(3600)  # hangs
        time.sleep({seconds})
        return [pb_utils.InferenceResponse([pb_utils.Tensor(
                    "Y", pb_utils.get_input_tensor_by_name(r, "X").as_numpy())])
                for r in requests]
"""
CONFIG = """
name: "{name}"
backend: "python"
max_batch_size: {max_batch_size}
input [ {{ name: "X" data_type: TYPE_INT32 dims: [ 1 ] }} ]
output [ {{ name: "Y" data_type: TYPE_INT32 dims: [ 1 ] }} ]
instance_group [ {{ count: 1 kind: KIND_CPU }} ]
{extra}
"""


def add_model(root, name: str, seconds: float, max_batch_size: int = 0, extra: str = "") -> None:
    (root / name / "1").mkdir(parents=True)
    (root / name / "1" / "model.py").write_text(SLOW_MODEL.format(seconds=seconds))
    (root / name / "config.pbtxt").write_text(
        CONFIG.format(name=name, max_batch_size=max_batch_size, extra=extra))


@pytest.fixture(scope="module", params=FRONTENDS)
def server(request, tmp_path_factory):
    root = tmp_path_factory.mktemp("repository")
    add_model(root, "slow", 0.05)  # 20 requests/s; the server-wide queue bound applies
    add_model(root, "slow_batched", 0.05, max_batch_size=2,
              extra="dynamic_batching { default_queue_policy { max_queue_size: 3 } }")
    add_model(root, "slower", 1.5)
    add_model(root, "hangs", 0)
    add_model(root, "hangs_isolated", 0, extra='parameters { key: "isolation" '
                                              'value { string_value: "process" } }')
    frontend = request.param
    process = start_server([root], tmp_path_factory.mktemp("logs") / f"overload-{frontend}.log",
                           "--grpc-frontend", frontend, "--http-frontend", frontend,
                           "--default-max-queue-size", "8", "--model-unload-timeout-secs", "2",
                           "--model-control-mode", "explicit", "--load-model", "*")
    yield process
    assert process.stop() == 0


def rss_bytes(pid: int) -> int:
    for line in open(f"/proc/{pid}/status"):
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    raise AssertionError("no VmRSS")


def grpc_input(value: int, shape=(1,)):
    x = grpc_aio.InferInput("X", list(shape), "INT32")
    x.set_data_from_numpy(np.full(shape, value, dtype=np.int32))
    return x


def http_input(value: int, shape=(1,)):
    x = http_aio.InferInput("X", list(shape), "INT32")
    x.set_data_from_numpy(np.full(shape, value, dtype=np.int32))
    return x


def test_ten_times_capacity_for_a_minute(server):
    """`slow` serves 20 requests/s; 200/s arrive (half per protocol) for a minute."""
    async def run():
        grpc_client = grpc_aio.InferenceServerClient(server.grpc_url)
        http_client = http_aio.InferenceServerClient(server.http_url, conn_limit=200)
        outcomes = {"answered": 0, "refused": 0}
        refusal_seconds = []
        rss = []

        async def one(i: int, protocol: str) -> None:
            started = time.monotonic()
            try:
                if protocol == "grpc":
                    result = await grpc_client.infer("slow", [grpc_input(i)], client_timeout=60)
                else:
                    result = await http_client.infer("slow", [http_input(i)], timeout=60)
            except InferenceServerException as e:
                assert "Exceeds maximum queue size" in e.message(), e.message()
                assert e.status() in ("StatusCode.UNAVAILABLE", "503"), e.status()
                outcomes["refused"] += 1
                refusal_seconds.append(time.monotonic() - started)
                return
            assert result.as_numpy("Y").tolist() == [i]
            outcomes["answered"] += 1

        tasks = []
        start = time.monotonic()
        i = 0
        while (elapsed := time.monotonic() - start) < OVERLOAD_SECONDS:
            target = int(elapsed * 100) + 1  # per protocol
            while i < target:
                tasks.append(asyncio.ensure_future(one(i, "grpc")))
                tasks.append(asyncio.ensure_future(one(i, "http")))
                i += 1
            if int(elapsed) % 2 == 0 and len(rss) <= elapsed / 2:
                rss.append(rss_bytes(server.process.pid))
            await asyncio.sleep(0.01)
        await asyncio.wait_for(asyncio.gather(*tasks), 60)  # every request gets its answer
        await grpc_client.close()
        await http_client.close()
        return outcomes, refusal_seconds, rss, len(tasks)

    outcomes, refusal_seconds, rss, sent = asyncio.run(run())
    assert outcomes["answered"] + outcomes["refused"] == sent
    capacity = OVERLOAD_SECONDS / 0.05
    assert 0.5 * capacity < outcomes["answered"] < 1.2 * capacity
    assert outcomes["refused"] > 0.8 * sent - capacity
    assert sorted(refusal_seconds)[len(refusal_seconds) // 2] < 0.5  # refused at once
    settled = rss[len(rss) // 6:]  # after the first sixth of the run
    assert max(settled) - min(settled) < 40 << 20, [r >> 20 for r in rss]


def test_model_max_queue_size_bounds_each_model(server):
    """slow_batched queues 3 at most (its config); a burst of 30 sees refusals at once."""
    async def run():
        client = grpc_aio.InferenceServerClient(server.grpc_url)
        results = await asyncio.gather(
            *[client.infer("slow_batched", [grpc_input(i, (1, 1))]) for i in range(30)],
            return_exceptions=True)
        await client.close()
        return results

    results = asyncio.run(run())
    refused = [r for r in results if isinstance(r, InferenceServerException)]
    answered = [r for r in results if not isinstance(r, Exception)]
    assert refused and answered
    assert all(r.message() == "Exceeds maximum queue size" for r in refused)
    assert len(answered) + len(refused) == 30
    assert failures(server, "slow_batched")["REJECTED"] == len(refused)


def failures(server, model: str) -> dict[str, float]:
    """nv_inference_request_failure by its reason label, from the metrics port."""
    text = urllib.request.urlopen(f"http://127.0.0.1:{server.metrics_port}/metrics").read().decode()
    found = {}
    for line in text.splitlines():
        if line.startswith("nv_inference_request_failure{") and f'model="{model}"' in line:
            reason = line.split('reason="')[1].split('"')[0]
            found[reason] = float(line.rsplit(" ", 1)[1])
    return found


def executions(server, model: str) -> tuple[int, int, int]:
    stats = grpcclient.InferenceServerClient(server.grpc_url).get_inference_statistics(model)
    s = stats.model_stats[0]
    return s.execution_count, s.inference_stats.success.count, s.inference_stats.fail.count


def test_cancelled_requests_are_not_computed(server):
    """`slower` takes 1.5 s a request. While A runs, B is sent and abandoned: by a gRPC
    deadline, then by an HTTP client closing its connection. Neither B is computed."""
    before = executions(server, "slower")

    async def occupy_then_abandon():
        client = grpc_aio.InferenceServerClient(server.grpc_url)
        first = asyncio.ensure_future(client.infer("slower", [grpc_input(1)]))
        await asyncio.sleep(0.3)
        with pytest.raises(InferenceServerException) as expired:
            await client.infer("slower", [grpc_input(2)], client_timeout=0.5)
        assert expired.value.status() == "StatusCode.DEADLINE_EXCEEDED"
        assert (await first).as_numpy("Y").tolist() == [1]

        first = asyncio.ensure_future(client.infer("slower", [grpc_input(3)]))
        await asyncio.sleep(0.3)
        body = b'{"inputs":[{"name":"X","datatype":"INT32","shape":[1],"data":[4]}]}'
        with socket.create_connection(("127.0.0.1", server.http_port)) as s:
            s.sendall(b"POST /v2/models/slower/infer HTTP/1.1\r\nHost: x\r\n"
                      b"Content-Type: application/json\r\nContent-Length: %d\r\n\r\n%s"
                      % (len(body), body))
            await asyncio.sleep(0.5)
        assert (await first).as_numpy("Y").tolist() == [3]
        await client.close()

    asyncio.run(occupy_then_abandon())
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        count, success, fail = executions(server, "slower")
        if fail - before[2] == 2:
            break
        time.sleep(0.1)
    time.sleep(2)  # a B computed after all would show up by now
    count, success, fail = executions(server, "slower")
    assert (count - before[0], success - before[1], fail - before[2]) == (2, 2, 2)
    assert failures(server, "slower")["CANCELED"] == 2


@pytest.mark.parametrize("model", ["hangs", "hangs_isolated"])
def test_a_model_hung_in_execute_can_be_unloaded(server, model):
    """One request hangs the model for an hour; two wait behind it. Unloading gives up on the
    instance after --model-unload-timeout-secs, refuses all three, and the model loads again.
    An isolated model's child (the only child process of this server) is killed."""
    if model == "hangs_isolated":
        assert child_pids(server.process.pid)

    async def run():
        client = grpc_aio.InferenceServerClient(server.grpc_url)
        hung = asyncio.ensure_future(client.infer(model, [grpc_input(-1)], client_timeout=30))
        await asyncio.sleep(0.5)
        waiting = [asyncio.ensure_future(client.infer(model, [grpc_input(i)])) for i in (1, 2)]
        await asyncio.sleep(0.5)
        started = time.monotonic()
        await client.unload_model(model)
        unload_seconds = time.monotonic() - started
        refused = await asyncio.gather(hung, *waiting, return_exceptions=True)
        np.testing.assert_array_equal(
            (await client.infer("slow", [grpc_input(5)])).as_numpy("Y"), [5])  # others serve
        left, deadline = set(), time.monotonic() + 20
        while (model == "hangs_isolated" and (left := child_pids(server.process.pid))
               and time.monotonic() < deadline):
            await asyncio.sleep(0.2)
        await client.load_model(model)
        again = await client.infer(model, [grpc_input(7)])
        await client.close()
        return unload_seconds, refused, again, left

    unload_seconds, refused, again, left = asyncio.run(run())
    assert unload_seconds < 15
    for error in refused:
        assert isinstance(error, InferenceServerException), error
        assert error.status() == "StatusCode.UNAVAILABLE"
        assert "was stopped while an instance was still executing" in error.message()
    assert again.as_numpy("Y").tolist() == [7]
    assert "an instance was still executing after 2 s; it is abandoned" in server.log()
    assert not left  # an isolated model's hung child was killed


def test_idle_keep_alive_connections_do_not_starve_new_clients(example_server):
    """Each open HTTP connection holds a thread of the native server: 100 idle keep-alive
    clients (more than a fixed pool of 64 had) and a new client is still answered at once,
    not after the idle ones time out (5 s)."""
    host, port = example_server.http_url.split(":")
    request = b"GET /v2/health/ready HTTP/1.1\r\nHost: x\r\n\r\n"
    idle = []
    try:
        for _ in range(100):
            connection = socket.create_connection((host, int(port)), timeout=30)
            connection.sendall(request)
            assert connection.recv(4096).startswith(b"HTTP/1.1 200")  # kept open, idle
            idle.append(connection)
        began = time.monotonic()
        with socket.create_connection((host, int(port)), timeout=30) as fresh:
            fresh.sendall(request)
            assert fresh.recv(4096).startswith(b"HTTP/1.1 200")
        assert time.monotonic() - began < 2.5
    finally:
        for connection in idle:
            connection.close()
