"""Iterative sequences (sequence_batching { iterative_sequence: true }) and request
rescheduling (pb_utils `request.set_release_flags(TRITONSERVER_REQUEST_RELEASE_RESCHEDULE)`),
after Triton's L0_backend_python/request_rescheduling, on real servers and both frontends."""

from __future__ import annotations

import queue

import numpy as np
import pytest
import tritonclient.grpc as grpcclient
from tritonclient.utils import InferenceServerException

from conftest import FRONTENDS, native_frontends_built, start_server, write_python_model

# Decoupled: IN responses per request, one per iteration, OUT counting down to 0. The
# sequence the core gave the request (it carried no correlation ID) keys the count, and stays
# the same from one iteration to the next.
COUNTDOWN = """import numpy as np
import triton_python_backend_utils as pb_utils


class TritonPythonModel:
    def initialize(self, args):
        self.remaining = {}

    def execute(self, requests):
        for request in requests:
            sequence = request.correlation_id()
            assert sequence != 0
            if sequence not in self.remaining:
                assert request.flags() == 1  # the sequence's START
                self.remaining[sequence] = int(
                    pb_utils.get_input_tensor_by_name(request, "IN").as_numpy()[0])
            else:
                assert request.flags() == 0  # a later iteration
            self.remaining[sequence] -= 1
            left = self.remaining[sequence]
            response = pb_utils.InferenceResponse([pb_utils.Tensor("OUT", np.array([left], np.int32))])
            sender = request.get_response_sender()
            if left <= 0:
                del self.remaining[sequence]
                sender.send(response, flags=pb_utils.TRITONSERVER_RESPONSE_COMPLETE_FINAL)
            else:
                request.set_release_flags(pb_utils.TRITONSERVER_REQUEST_RELEASE_RESCHEDULE)
                sender.send(response)
        return None
"""

# Not decoupled: each request is rescheduled once before it is answered (Triton's
# request_rescheduling_addsub reschedules its first).
ADD_SUB = """import triton_python_backend_utils as pb_utils


class TritonPythonModel:
    def initialize(self, args):
        self.seen = set()

    def execute(self, requests):
        responses = []
        for request in requests:
            a = pb_utils.get_input_tensor_by_name(request, "INPUT0").as_numpy()
            b = pb_utils.get_input_tensor_by_name(request, "INPUT1").as_numpy()
            if request.correlation_id() not in self.seen:
                self.seen.add(request.correlation_id())
                request.set_release_flags(pb_utils.TRITONSERVER_REQUEST_RELEASE_RESCHEDULE)
                responses.append(RESPONSE_FOR_RESCHEDULED)
            else:
                responses.append(pb_utils.InferenceResponse([
                    pb_utils.Tensor("OUTPUT0", a + b), pb_utils.Tensor("OUTPUT1", a - b)]))
        return responses
"""

ADD_SUB_TENSORS = "".join(
    f'{kind} [ {{ name: "{name}" data_type: TYPE_FP32 dims: [ 16 ] }} ]\n'
    for kind, name in (("input", "INPUT0"), ("input", "INPUT1"), ("output", "OUTPUT0"),
                       ("output", "OUTPUT1")))
ITERATIVE = "sequence_batching { iterative_sequence: true }\n"
ONE_INSTANCE = "instance_group [ { kind: KIND_CPU count: 1 } ]\n"


@pytest.fixture(scope="module", params=FRONTENDS)
def server(request, tmp_path_factory):
    if request.param == "native" and not native_frontends_built():
        pytest.skip("pyserve was built without the native frontends")
    repository = tmp_path_factory.mktemp("iterative")
    write_python_model(repository, "countdown",
                       'input [ { name: "IN" data_type: TYPE_INT32 dims: [ 1 ] } ]\n'
                       'output [ { name: "OUT" data_type: TYPE_INT32 dims: [ 1 ] } ]\n'
                       "model_transaction_policy { decoupled: true }\n" + ITERATIVE
                       + ONE_INSTANCE, COUNTDOWN)
    for name, iterative, answer in (("add_sub", ITERATIVE, "None"),
                                    ("add_sub_answers_anyway", ITERATIVE,
                                     "pb_utils.InferenceResponse([])"),
                                    ("add_sub_not_iterative", "", "None")):
        write_python_model(repository, name, ADD_SUB_TENSORS + iterative + ONE_INSTANCE,
                           ADD_SUB.replace("RESPONSE_FOR_RESCHEDULED", answer))
    process = start_server([repository], tmp_path_factory.mktemp("logs") / "server.log",
                           "--grpc-frontend", request.param, "--http-frontend", request.param)
    yield process
    assert process.stop() == 0


def countdown(server, start: int) -> list[tuple[int, bool]]:
    """(OUT, final) of each response to one request of `start` iterations."""
    results: queue.Queue = queue.Queue()
    with grpcclient.InferenceServerClient(server.grpc_url) as client:
        client.start_stream(lambda result, error: results.put((result, error)))
        n = grpcclient.InferInput("IN", [1], "INT32")
        n.set_data_from_numpy(np.array([start], np.int32))
        client.async_stream_infer("countdown", [n])
        seen = []
        while not seen or not seen[-1][1]:
            result, error = results.get(timeout=30)
            assert error is None, error
            final = result.get_response().parameters["triton_final_response"].bool_param
            seen.append((int(result.as_numpy("OUT")[0]), final))
        client.stop_stream()
    return seen


def test_a_rescheduled_decoupled_request_answers_each_iteration(server):
    assert countdown(server, 3) == [(2, False), (1, False), (0, True)]
    # Its sequence ended with its last iteration: the next request starts one of its own.
    assert countdown(server, 2) == [(1, False), (0, True)]


def add_sub(server, model: str):
    a = np.random.default_rng(0).standard_normal(16).astype(np.float32)
    b = np.ones(16, np.float32)
    inputs = []
    for name, array in (("INPUT0", a), ("INPUT1", b)):
        inputs.append(grpcclient.InferInput(name, [16], "FP32"))
        inputs[-1].set_data_from_numpy(array)
    with grpcclient.InferenceServerClient(server.grpc_url) as client:
        return a, b, client.infer(model, inputs)


def test_a_rescheduled_request_is_answered_by_its_next_iteration(server):
    for _ in range(2):  # each request is rescheduled once, in a sequence of its own
        a, b, result = add_sub(server, "add_sub")
        np.testing.assert_array_equal(result.as_numpy("OUTPUT0"), a + b)
        np.testing.assert_array_equal(result.as_numpy("OUTPUT1"), a - b)


def test_rescheduling_refusals_have_tritons_texts(server):
    with pytest.raises(InferenceServerException) as answered:
        add_sub(server, "add_sub_answers_anyway")
    assert ("Expected a None object in the execute function return list for reschduled "
            "request, found type '<class 'triton_python_backend_utils.InferenceResponse'>'."
            in answered.value.message())
    with pytest.raises(InferenceServerException) as refused:
        add_sub(server, "add_sub_not_iterative")
    assert refused.value.message() == (
        "Request is released with TRITONSERVER_REQUEST_RELEASE_RESCHEDULE, while the model is "
        "not configured to handle such a flag.")
