"""Process isolation (config parameter "isolation": "process") with real servers: a Python
model's instances in child processes, tensors through shared memory. Results equal the
in-process model's, request ids and parameters still arrive, a child that segfaults or calls
os._exit fails only its batch and is replaced, and unloading leaves no child behind."""

from __future__ import annotations

import json
import os
import signal
import textwrap
import time
from pathlib import Path

import numpy as np
import pytest
import tritonclient.grpc as grpcclient
import tritonclient.http as httpclient
from tritonclient.utils import InferenceServerException

from conftest import child_pids, send_concurrently, start_server, tensor
from test_python_backend import (ADD_SUB_CONFIG, ADD_SUB_MODEL, INTROSPECT_MODEL, NATIVE_CONFIG,
                                 NATIVE_MODEL, STRING_CONFIG, STRING_MODEL, _model)

ISOLATED = '\nparameters { key: "isolation" value { string_value: "process" } }\n'

CRASHY_CONFIG = """
backend: "python"
max_batch_size: 8
input [ { name: "INPUT0" data_type: TYPE_FP32 dims: [ 2 ] } ]
output [
  { name: "OUTPUT0" data_type: TYPE_FP32 dims: [ 2 ] },
  { name: "PID" data_type: TYPE_INT64 dims: [ 1 ] }
]
dynamic_batching { }
""" + ISOLATED

# A first element of -11 dereferences NULL; -3 calls os._exit(3); -9 raises SystemExit.
CRASHY_MODEL = '''
import ctypes
import os

import numpy as np
import triton_python_backend_utils as pb_utils


class TritonPythonModel:
    def execute(self, requests):
        responses = []
        for request in requests:
            x = request.get_input_tensor_by_name("INPUT0").as_numpy()
            if x[0, 0] == -11:
                ctypes.string_at(0)
            if x[0, 0] == -3:
                os._exit(3)
            if x[0, 0] == -9:
                raise SystemExit(9)
            pid = np.full((x.shape[0], 1), os.getpid(), np.int64)
            responses.append(pb_utils.InferenceResponse(
                [pb_utils.Tensor("OUTPUT0", x * 2), pb_utils.Tensor("PID", pid)]))
        return responses
'''

# Completes its own config (in the child) and exits while initializing when told to.
AUTO_MODEL = '''
import os

import triton_python_backend_utils as pb_utils


class TritonPythonModel:
    @staticmethod
    def auto_complete_config(config):
        config.add_input({"name": "IN", "data_type": "TYPE_INT32", "dims": [3]})
        config.add_output({"name": "OUT", "data_type": "TYPE_INT32", "dims": [3]})
        config.set_max_batch_size(4)
        return config

    def initialize(self, args):
        if os.path.exists(os.path.join(args["model_repository"], "EXIT")):
            os._exit(5)
        self.pid = os.getpid()

    def execute(self, requests):
        return [pb_utils.InferenceResponse([pb_utils.Tensor(
                    "OUT", r.get_input_tensor_by_name("IN").as_numpy() + self.pid)])
                for r in requests]
'''


# A TorchServe handler served from a model repository (backend "torchserve", the archive's
# files in the version directory): upper-cases each row, answers with its PID, and
# dereferences NULL for the row b"segv".
HANDLER_CONFIG = """
backend: "torchserve"
max_batch_size: 4
input [ { name: "data" data_type: TYPE_STRING dims: [ 1 ] } ]
output [ { name: "output" data_type: TYPE_STRING dims: [ 1 ] } ]
""" + ISOLATED

HANDLER = '''
import ctypes
import os


def handle(data, context):
    if data is None:
        return None
    if any(row["data"] == b"segv" for row in data):
        ctypes.string_at(0)
    return [row["data"].upper() + b" %d" % os.getpid() for row in data]
'''


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    repository = tmp_path_factory.mktemp("isolation_models")
    for prefix, extra in (("", ""), ("isolated_", ISOLATED)):
        _model(repository, f"{prefix}add_sub",
               ADD_SUB_CONFIG.format(name=f"{prefix}add_sub") + extra, ADD_SUB_MODEL)
        _model(repository, f"{prefix}strings", STRING_CONFIG + extra, STRING_MODEL)
    _model(repository, "isolated_introspect", STRING_CONFIG + ISOLATED, INTROSPECT_MODEL)
    _model(repository, "isolated_native", NATIVE_CONFIG + ISOLATED, NATIVE_MODEL)
    _model(repository, "crashy", CRASHY_CONFIG, CRASHY_MODEL)
    # one request per batch: a crash fails only its own request
    _model(repository, "crashy_unbatched", CRASHY_CONFIG.replace("dynamic_batching { }", ""),
           CRASHY_MODEL)
    _model(repository, "auto", ISOLATED, AUTO_MODEL)
    _model(repository, "handler", HANDLER_CONFIG, "")
    (repository / "handler" / "1" / "handler.py").write_text(textwrap.dedent(HANDLER))
    (repository / "handler" / "1" / "MAR-INF").mkdir()
    (repository / "handler" / "1" / "MAR-INF" / "MANIFEST.json").write_text(json.dumps(
        {"runtime": "python", "model": {"modelName": "handler", "handler": "handler.py"}}))
    process = start_server([repository], tmp_path_factory.mktemp("logs") / "isolation.log",
                           "--model-control-mode", "explicit", "--load-model", "*")
    process.repository = repository
    yield process
    process.stop()


def add_sub_inputs(module, a, b):
    return [tensor(module, "INPUT0", a, "FP32"), tensor(module, "INPUT1", b, "FP32")]


def crash_input(module, first: float):
    return [tensor(module, "INPUT0", np.array([[first, 1]], np.float32), "FP32")]


@pytest.mark.parametrize("batch", [1, 5])
def test_numeric_results_equal_the_in_process_model(client, batch):
    module, c = client
    rng = np.random.default_rng(batch)
    a = rng.standard_normal((batch, 4)).astype(np.float32)
    b = rng.standard_normal((batch, 4)).astype(np.float32)
    here = c.infer("add_sub", add_sub_inputs(module, a, b))
    there = c.infer("isolated_add_sub", add_sub_inputs(module, a, b))
    for name in ("OUTPUT0", "OUTPUT1"):
        assert there.as_numpy(name).dtype == np.float32
        np.testing.assert_array_equal(there.as_numpy(name), here.as_numpy(name))
    np.testing.assert_array_equal(there.as_numpy("OUTPUT0"), a + b)


def test_bytes_results_equal_the_in_process_model(client):
    module, c = client
    data = np.array([[b"hello", b"wor\x00ld", b""], [b"\xc3\xa9t\xc3\xa9", b"x" * 70000, b"ok"]],
                    dtype=np.object_)
    here = c.infer("strings", [tensor(module, "INPUT0", data, "BYTES")])
    there = c.infer("isolated_strings", [tensor(module, "INPUT0", data, "BYTES")])
    assert there.as_numpy("OUTPUT0").tolist() == data.tolist()
    for name in ("OUTPUT0", "UPPER"):
        assert there.as_numpy(name).tolist() == here.as_numpy(name).tolist()


def test_a_batched_function_in_a_child(client):
    module, c = client
    x = np.array([[1.5, -2.25], [0.5, 8]], np.float16)
    result = c.infer("isolated_native", [tensor(module, "X", x, "FP16")])
    assert result.as_numpy("DOUBLED").dtype == np.float16
    np.testing.assert_array_equal(result.as_numpy("DOUBLED"), x * 2)
    np.testing.assert_array_equal(result.as_numpy("BATCH"), [[2], [2]])


def test_requests_carry_their_id_parameters_and_requested_outputs(client):
    module, c = client
    result = c.infer("isolated_introspect",
                     [tensor(module, "INPUT0", np.array([[b"a"]], np.object_), "BYTES")],
                     request_id="r-7", parameters={"temperature": "hot", "top_k": 3},
                     outputs=[module.InferRequestedOutput("OUTPUT0")])
    seen = json.loads(result.as_numpy("OUTPUT0")[0, 0])
    assert seen == {"id": "r-7", "parameters": {"temperature": "hot", "top_k": 3},
                    "outputs": ["OUTPUT0"]}


def test_a_batch_of_several_requests_is_split_back(server):
    with grpcclient.InferenceServerClient(server.grpc_url) as c:
        arrays = [np.full((n, 4), n, np.float32) for n in (1, 2, 3, 1)]
        done = send_concurrently(c, "isolated_add_sub",
                                 [add_sub_inputs(grpcclient, a, a) for a in arrays])
    for array, (result, error) in zip(arrays, done):
        assert error is None, error
        np.testing.assert_array_equal(result.as_numpy("OUTPUT0"), array * 2)


def crash_and_recover(server, module, c, first: float, how: str) -> None:
    before = c.infer("crashy", crash_input(module, 1)).as_numpy("PID")[0, 0]
    assert before in child_pids(server.process.pid)
    with pytest.raises(InferenceServerException) as error:
        c.infer("crashy", crash_input(module, first))
    assert error.value.status() in ("StatusCode.INTERNAL", "500")
    text = str(error.value)
    assert f"the model's process (pid {before}) died while executing: {how}" in text, text
    assert c.is_model_ready("crashy")
    result = c.infer("crashy", crash_input(module, 4))  # a new child, started at once
    np.testing.assert_array_equal(result.as_numpy("OUTPUT0"), [[8, 2]])
    after = result.as_numpy("PID")[0, 0]
    assert after != before and after in child_pids(server.process.pid)
    assert before not in child_pids(server.process.pid)
    a = np.ones((1, 4), np.float32)
    np.testing.assert_array_equal(
        c.infer("add_sub", add_sub_inputs(module, a, a)).as_numpy("OUTPUT0"), a * 2)


def test_a_segfaulting_child_fails_its_batch_and_is_replaced(server, client):
    module, c = client
    crash_and_recover(server, module, c, -11, "killed by signal SIGSEGV (Segmentation fault)")


def test_a_child_calling_os_exit_fails_its_batch_and_is_replaced(server, client):
    module, c = client
    crash_and_recover(server, module, c, -3, "exited with code 3")


def fully_dead(pid: int, parent: int) -> bool:
    """Whether every thread of `pid` has exited: a killed multi-threaded process shows as a
    zombie while its other threads still exit, and cannot be waited for until they have."""
    try:
        threads = len(os.listdir(f"/proc/{pid}/task"))
    except FileNotFoundError:
        return True
    return pid not in child_pids(parent) and threads <= 1


def test_a_child_killed_between_batches_costs_no_request(server, client):
    module, c = client
    pid = c.infer("crashy", crash_input(module, 1)).as_numpy("PID")[0, 0]
    os.kill(pid, signal.SIGKILL)  # as the OOM killer would
    deadline = time.monotonic() + 10
    while not fully_dead(pid, server.process.pid) and time.monotonic() < deadline:
        time.sleep(0.05)
    result = c.infer("crashy", crash_input(module, 5))
    np.testing.assert_array_equal(result.as_numpy("OUTPUT0"), [[10, 2]])
    assert result.as_numpy("PID")[0, 0] != pid
    assert "(pid %d) killed by signal SIGKILL (Killed) while idle" % pid in server.log()


def test_system_exit_in_a_child_fails_only_the_batch(server, client):
    module, c = client
    pid = c.infer("crashy", crash_input(module, 1)).as_numpy("PID")[0, 0]
    with pytest.raises(InferenceServerException, match="SystemExit: 9"):
        c.infer("crashy", crash_input(module, -9))
    assert c.infer("crashy", crash_input(module, 1)).as_numpy("PID")[0, 0] == pid


def test_requests_queued_behind_a_crash_are_served_by_the_new_child(server):
    with grpcclient.InferenceServerClient(server.grpc_url) as c:
        inputs = [crash_input(grpcclient, -11)] + [crash_input(grpcclient, i) for i in range(6)]
        done = send_concurrently(c, "crashy_unbatched", inputs)
    failed = [error for _, error in done if error is not None]
    assert len(failed) == 1 and "died while executing" in str(failed[0])
    served = [(i, result) for i, (result, error) in enumerate(done) if error is None]
    assert len(served) == len(inputs) - 1
    for i, result in served:
        np.testing.assert_array_equal(result.as_numpy("OUTPUT0"), [[2 * i - 2, 2]])


def test_config_completed_in_a_child_and_load_failures_contained(server):
    with httpclient.InferenceServerClient(server.http_url) as c:
        config = c.get_model_config("auto")
        assert [i["name"] for i in config["input"]] == ["IN"]
        data = np.array([[1, 2, 3]], np.int32)
        out = c.infer("auto", [tensor(httpclient, "IN", data, "INT32")]).as_numpy("OUT")
        pid = int(out[0, 0] - 1)
        assert pid != server.process.pid and pid in child_pids(server.process.pid)
        (server.repository / "auto" / "EXIT").write_text("")
        try:
            with pytest.raises(InferenceServerException,
                               match=r"died while loading: exited with code 5"):
                c.load_model("auto")
        finally:
            (server.repository / "auto" / "EXIT").unlink()
        assert c.is_model_ready("auto")  # the failed reload kept the old version serving
        assert pid in child_pids(server.process.pid)


def test_unload_stops_the_child_pids(server):
    with grpcclient.InferenceServerClient(server.grpc_url) as c:
        data = np.array([[b"a"]], np.object_)
        c.load_model("isolated_strings")
        before = child_pids(server.process.pid)
        c.unload_model("isolated_strings")
        gone = before - child_pids(server.process.pid)
        assert len(gone) == 1  # its one instance's child, reaped
        assert all(not os.path.exists(f"/proc/{pid}") for pid in gone)
        c.load_model("isolated_strings")
        result = c.infer("isolated_strings", [tensor(grpcclient, "INPUT0", data, "BYTES")])
        assert result.as_numpy("UPPER").tolist() == [[b"A"]]


def test_server_shutdown_stops_every_child(tmp_path):
    repository = tmp_path / "repo"
    _model(repository, "crashy", CRASHY_CONFIG.replace("dynamic_batching { }",
                                                       "instance_group [ { count: 2 } ]"),
           CRASHY_MODEL)
    server = start_server([repository], tmp_path / "server.log")
    try:
        deadline = time.monotonic() + 30
        while len(child_pids(server.process.pid)) < 2 and time.monotonic() < deadline:
            time.sleep(0.1)
        pids = child_pids(server.process.pid)
        assert len(pids) == 2
    finally:
        assert server.stop() == 0
    assert all(not os.path.exists(f"/proc/{pid}") for pid in pids)


def test_a_torchserve_handler_in_a_child_process(server, client):
    module, c = client
    rows = np.array([[b"abc"], [b"d"]], dtype=np.object_)
    answer = c.infer("handler", [tensor(module, "data", rows, "BYTES")]).as_numpy("output")
    words = [row[0].split() for row in answer.tolist()]
    assert [w[0] for w in words] == [b"ABC", b"D"]
    pid = int(words[0][1])
    assert pid in child_pids(server.process.pid)
    with pytest.raises(InferenceServerException, match="killed by signal SIGSEGV"):
        c.infer("handler", [tensor(module, "data", np.array([[b"segv"]], np.object_), "BYTES")])
    answer = c.infer("handler", [tensor(module, "data", rows, "BYTES")]).as_numpy("output")
    assert answer[0, 0].startswith(b"ABC ") and int(answer[0, 0].split()[1]) != pid
