"""Decoupled Python models (`model_transaction_policy { decoupled: true }`) against real
tritonclient streams, on both frontends: any number of responses per request, sent from other
threads after execute returns, Triton's stream parameters and errors, cancellation."""

from __future__ import annotations

import queue
import time
from pathlib import Path

import numpy as np
import pytest
import requests
import tritonclient.grpc as grpcclient
from tritonclient.utils import InferenceServerException

from conftest import FRONTENDS, native_frontends_built, settled_statistics, start_server, \
    write_python_model

TIMEOUT_S = 30
DECOUPLED = "model_transaction_policy { decoupled: true }\n"

# Triton's L0_decoupled `repeat` in spirit: IN[i] comes back as one response each, in order,
# from a thread of the model's own that runs after execute has returned; then the final flag
# alone. DELAY (ms) spaces the responses.
REPEAT_MODEL = '''
import threading
import time

import numpy as np
import triton_python_backend_utils as pb_utils


class TritonPythonModel:
    def initialize(self, args):
        self.threads = []

    def execute(self, requests):
        for request in requests:
            values = pb_utils.get_input_tensor_by_name(request, "IN").as_numpy().copy()
            delay = pb_utils.get_input_tensor_by_name(request, "DELAY").as_numpy()[0] / 1000
            sender = request.get_response_sender()
            thread = threading.Thread(target=self.respond, args=(sender, values, delay))
            thread.start()
            self.threads.append(thread)
        return None

    def respond(self, sender, values, delay):
        for index, value in enumerate(values):
            time.sleep(delay)
            sender.send(pb_utils.InferenceResponse([
                pb_utils.Tensor("OUT", np.array([value], np.int32)),
                pb_utils.Tensor("IDX", np.array([index], np.uint32))]))
        sender.send(flags=pb_utils.TRITONSERVER_RESPONSE_COMPLETE_FINAL)

    def finalize(self):
        for thread in self.threads:
            thread.join()
'''

REPEAT_TENSORS = """
input [
  { name: "IN" data_type: TYPE_INT32 dims: [ -1 ] },
  { name: "DELAY" data_type: TYPE_UINT32 dims: [ 1 ] }
]
output [
  { name: "OUT" data_type: TYPE_INT32 dims: [ 1 ] },
  { name: "IDX" data_type: TYPE_UINT32 dims: [ 1 ] }
]
""" + DECOUPLED

# Answers in execute: an error response, then the final flag with the last response; a
# request whose N is negative makes execute raise.
ERRORS_MODEL = '''
import numpy as np
import triton_python_backend_utils as pb_utils


class TritonPythonModel:
    def execute(self, requests):
        for request in requests:
            n = int(pb_utils.get_input_tensor_by_name(request, "N").as_numpy()[0])
            if n < 0:
                raise ValueError("negative N")
            sender = request.get_response_sender()
            sender.send(pb_utils.InferenceResponse(
                error=pb_utils.TritonError("first one fails", pb_utils.TritonError.INVALID_ARG)))
            sender.send(pb_utils.InferenceResponse([pb_utils.Tensor("OUT", np.array([n], np.int32))]),
                        flags=pb_utils.TRITONSERVER_RESPONSE_COMPLETE_FINAL)
            try:
                sender.send(flags=pb_utils.TRITONSERVER_RESPONSE_COMPLETE_FINAL)
            except pb_utils.TritonModelException as e:
                assert "Response sender has been closed" in e.message(), e.message()
            else:
                raise AssertionError("a closed sender sent")
        return None
'''

ERRORS_TENSORS = """
input [ { name: "N" data_type: TYPE_INT32 dims: [ 1 ] } ]
output [ { name: "OUT" data_type: TYPE_INT32 dims: [ 1 ] } ]
""" + DECOUPLED

# Responds from a thread until its client goes away, then tells the next request (which the
# one instance runs, as execute returned at once) that it saw the cancellation.
CANCEL_MODEL = '''
import threading

import numpy as np
import triton_python_backend_utils as pb_utils


class TritonPythonModel:
    def initialize(self, args):
        self.cancelled = threading.Event()

    def execute(self, requests):
        for request in requests:
            sender = request.get_response_sender()
            if pb_utils.get_input_tensor_by_name(request, "ASK").as_numpy()[0]:
                seen = self.cancelled.wait(30)
                sender.send(pb_utils.InferenceResponse([
                    pb_utils.Tensor("OUT", np.array([int(seen)], np.int32))]),
                    flags=pb_utils.TRITONSERVER_RESPONSE_COMPLETE_FINAL)
                continue
            threading.Thread(target=self.stream, args=(request, sender)).start()
        return None

    def stream(self, request, sender):
        count = 0
        while not sender.is_cancelled() and count < 100000:
            sender.send(pb_utils.InferenceResponse([
                pb_utils.Tensor("OUT", np.array([count], np.int32))]))
            count += 1
            threading.Event().wait(0.01)
        if request.is_cancelled():
            self.cancelled.set()
        sender.send(flags=pb_utils.TRITONSERVER_RESPONSE_COMPLETE_FINAL)
'''

CANCEL_TENSORS = """
input [ { name: "ASK" data_type: TYPE_BOOL dims: [ 1 ] } ]
output [ { name: "OUT" data_type: TYPE_INT32 dims: [ 1 ] } ]
""" + DECOUPLED

ECHO_MODEL = '''
import triton_python_backend_utils as pb_utils


class TritonPythonModel:
    def execute(self, requests):
        return [pb_utils.InferenceResponse([pb_utils.Tensor(
            "OUT", pb_utils.get_input_tensor_by_name(r, "N").as_numpy())]) for r in requests]
'''

ECHO_TENSORS = """
input [ { name: "N" data_type: TYPE_INT32 dims: [ 1 ] } ]
output [ { name: "OUT" data_type: TYPE_INT32 dims: [ 1 ] } ]
"""


@pytest.fixture(scope="module", params=FRONTENDS)
def server(request, tmp_path_factory):
    if request.param == "native" and not native_frontends_built():
        pytest.skip("pyserve was built without the native frontends")
    root = tmp_path_factory.mktemp("decoupled_repo")
    write_python_model(root, "repeat", REPEAT_TENSORS, REPEAT_MODEL)
    write_python_model(root, "errors", ERRORS_TENSORS, ERRORS_MODEL)
    write_python_model(root, "cancel", CANCEL_TENSORS, CANCEL_MODEL)
    write_python_model(root, "echo", ECHO_TENSORS, ECHO_MODEL)
    process = start_server([root], tmp_path_factory.mktemp("logs") / "decoupled.log",
                           "--grpc-frontend", request.param, "--http-frontend", request.param,
                           "--model-control-mode", "explicit", "--load-model", "*")
    yield process
    process.stop()


class Stream:
    """A tritonclient gRPC stream whose results and errors arrive on a queue."""

    def __init__(self, server, headers: dict | None = None) -> None:
        self.client = grpcclient.InferenceServerClient(server.grpc_url)
        self.results: queue.Queue = queue.Queue()
        self.client.start_stream(lambda result, error: self.results.put((result, error)),
                                 headers=headers)

    def send(self, model: str, inputs: list, **kwargs) -> None:
        self.client.async_stream_infer(model, inputs, **kwargs)

    def next(self):
        return self.results.get(timeout=TIMEOUT_S)

    def close(self, cancel: bool = False) -> None:
        self.client.stop_stream(cancel_requests=cancel)
        self.client.close()


def _input(name: str, array: np.ndarray, datatype: str):
    t = grpcclient.InferInput(name, list(array.shape), datatype)
    t.set_data_from_numpy(array)
    return t


def repeat_inputs(values: list[int], delay_ms: int = 0) -> list:
    return [_input("IN", np.array(values, np.int32), "INT32"),
            _input("DELAY", np.array([delay_ms], np.uint32), "UINT32")]


def final_flag(result) -> bool:
    return result.get_response().parameters["triton_final_response"].bool_param


def test_responses_come_from_another_thread_in_order(server):
    stream = Stream(server)
    try:
        stream.send("repeat", repeat_inputs([4, 5, 6], delay_ms=5), request_id="r1")
        seen = []
        for _ in range(3):
            result, error = stream.next()
            assert error is None
            response = result.get_response()
            assert response.id == "r1" and response.model_name == "repeat"
            assert not final_flag(result)  # the final flag came alone, and was not sent
            seen.append((int(result.as_numpy("OUT")[0]), int(result.as_numpy("IDX")[0])))
        assert seen == [(4, 0), (5, 1), (6, 2)]
    finally:
        stream.close()
    # The final flag is counted just after the client has it: wait for the count to show it.
    client = grpcclient.InferenceServerClient(server.grpc_url)
    deadline = time.monotonic() + TIMEOUT_S
    while True:
        stats = settled_statistics(client, "repeat", 1)
        if stats.response_stats["3"].empty_response.count >= 1 or time.monotonic() > deadline:
            break
        time.sleep(0.01)
    assert stats.inference_stats.success.count >= 1
    # Triton's response_stats: by each response's index within its request
    responses = stats.response_stats
    assert all(responses[str(i)].success.count >= 1 for i in range(3))
    assert responses["3"].empty_response.count >= 1  # the final flag, sent alone
    assert responses["0"].compute_infer.ns > 0 and responses["0"].fail.count == 0


def test_empty_final_response_when_asked_for(server):
    stream = Stream(server)
    try:
        stream.send("repeat", repeat_inputs([7]), enable_empty_final_response=True)
        first, error = stream.next()
        assert error is None and first.as_numpy("OUT").tolist() == [7] and not final_flag(first)
        last, error = stream.next()
        assert error is None and final_flag(last)
        assert last.get_response().outputs == [] and last.get_response().model_name == "repeat"
        # No response at all: the final flag is the only answer.
        stream.send("repeat", repeat_inputs([]), enable_empty_final_response=True)
        only, error = stream.next()
        assert error is None and final_flag(only) and only.get_response().outputs == []
    finally:
        stream.close()


def test_many_requests_on_one_stream_each_end(server):
    stream = Stream(server)
    try:
        for i in range(8):
            stream.send("repeat", repeat_inputs([i] * i), request_id=str(i),
                        enable_empty_final_response=True)
        counts: dict[str, int] = {}
        finals = 0
        while finals < 8:
            result, error = stream.next()
            assert error is None
            response = result.get_response()
            if final_flag(result):
                finals += 1
                assert response.outputs == []
            else:
                counts[response.id] = counts.get(response.id, 0) + 1
                assert result.as_numpy("OUT").tolist() == [int(response.id)]
        assert counts == {str(i): i for i in range(1, 8)}
    finally:
        stream.close()


def test_error_responses_and_final_with_a_response(server):
    stream = Stream(server)
    try:
        stream.send("errors", [_input("N", np.array([3], np.int32), "INT32")], request_id="e")
        result, error = stream.next()
        assert result is None and isinstance(error, InferenceServerException)
        assert error.message() == "first one fails"
        result, error = stream.next()
        assert error is None and result.as_numpy("OUT").tolist() == [3] and final_flag(result)
        # execute raising ends the request with Triton's text
        stream.send("errors", [_input("N", np.array([-1], np.int32), "INT32")])
        result, error = stream.next()
        assert result is None and "negative N" in error.message()
        assert "Failed to process the request(s) for model instance" in error.message()
    finally:
        stream.close()


def test_triton_grpc_error_ends_the_stream(server):
    stream = Stream(server, headers={"triton_grpc_error": "true"})
    try:
        stream.send("errors", [_input("N", np.array([1], np.int32), "INT32")])
        result, error = stream.next()
        assert result is None and error.status() == "StatusCode.INVALID_ARGUMENT"
        assert error.message() == "first one fails"
    finally:
        stream.close()


def test_ordinary_model_on_a_stream_marks_its_one_response_final(server):
    stream = Stream(server)
    try:
        stream.send("echo", [_input("N", np.array([9], np.int32), "INT32")])
        result, error = stream.next()
        assert error is None and result.as_numpy("OUT").tolist() == [9] and final_flag(result)
    finally:
        stream.close()


def test_one_response_endpoints_refuse_decoupled_models(server):
    client = grpcclient.InferenceServerClient(server.grpc_url)
    with pytest.raises(InferenceServerException) as refused:
        client.infer("repeat", repeat_inputs([1]))
    assert refused.value.status() == "StatusCode.UNIMPLEMENTED"
    assert refused.value.message() == ("ModelInfer RPC doesn't support models with decoupled "
                                       "transaction policy")
    body = {"inputs": [{"name": "IN", "datatype": "INT32", "shape": [1], "data": [1]},
                       {"name": "DELAY", "datatype": "UINT32", "shape": [1], "data": [0]}]}
    answer = requests.post(f"http://{server.http_url}/v2/models/repeat/infer", json=body,
                           timeout=TIMEOUT_S)
    assert answer.status_code == 501  # UNSUPPORTED, as Triton answers it
    assert answer.json() == {"error": "HTTP end point doesn't support models with decoupled "
                                      "transaction policy"}


def test_cancelled_stream_is_seen_by_the_model(server):
    stream = Stream(server)
    stream.send("cancel", [_input("ASK", np.array([False]), "BOOL")])
    result, error = stream.next()
    assert error is None and result.as_numpy("OUT").tolist() == [0]
    stream.close(cancel=True)
    asker = grpcclient.InferenceServerClient(server.grpc_url)
    results: queue.Queue = queue.Queue()
    asker.start_stream(lambda result, error: results.put((result, error)))
    try:
        asker.async_stream_infer("cancel", [_input("ASK", np.array([True]), "BOOL")])
        result, error = results.get(timeout=TIMEOUT_S * 2)
        assert error is None and result.as_numpy("OUT").tolist() == [1]
    finally:
        asker.stop_stream()


def test_unload_waits_for_the_final_response(server):
    client = grpcclient.InferenceServerClient(server.grpc_url)
    stream = Stream(server)
    try:
        stream.send("repeat", repeat_inputs([1, 2, 3, 4], delay_ms=100),
                    enable_empty_final_response=True)
        first, error = stream.next()
        assert error is None
        started = time.monotonic()
        client.unload_model("repeat")  # returns once the request has ended
        assert time.monotonic() - started > 0.15
        received = [first]
        while not final_flag(received[-1]):
            result, error = stream.next()
            assert error is None
            received.append(result)
        assert [r.as_numpy("OUT").tolist() for r in received[:-1]] == [[1], [2], [3], [4]]
    finally:
        stream.close()
        client.load_model("repeat")
