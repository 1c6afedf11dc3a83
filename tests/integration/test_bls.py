"""BLS: Python models calling other models in-process (`InferenceRequest(...).exec()`,
`await ....async_exec()`), on real servers through tritonclient, on both frontends."""

from __future__ import annotations

import numpy as np
import pytest
import tritonclient.grpc as grpcclient
from tritonclient.utils import InferenceServerException

from conftest import FRONTENDS, settled_statistics, tensor, write_python_model
from test_ensemble import VECTOR, serve, write_add_sub

FP32 = "data_type: TYPE_FP32 dims: [ 4 ]"
IO = (f'input [ {{ name: "A" {FP32} }}, {{ name: "B" {FP32} }} ]\n'
      f'output [ {{ name: "SUM" {FP32} }}, {{ name: "ERROR" data_type: TYPE_STRING dims: [ 1 ] }} ]\n')

# Calls add_sub with its own inputs; a call that fails answers its error text in ERROR.
CALLER = """import numpy as np
import triton_python_backend_utils as pb_utils


class TritonPythonModel:
    def execute(self, requests):
        responses = []
        for request in requests:
            a = pb_utils.get_input_tensor_by_name(request, "A").as_numpy()
            b = pb_utils.get_input_tensor_by_name(request, "B").as_numpy()
            target = "add_sub" if a[0, 0] >= 0 else "no_such_model"
            call = pb_utils.InferenceRequest(
                model_name=target, requested_output_names=["OUTPUT0"],
                inputs=[pb_utils.Tensor("INPUT0", a), pb_utils.Tensor("INPUT1", b)],
                request_id=request.request_id(), correlation_id="c-1", timeout=10_000_000)
            answer = call.exec()
            if answer.has_error():
                out = np.zeros_like(a)
                error = answer.error().message()
            else:
                out = pb_utils.get_output_tensor_by_name(answer, "OUTPUT0").as_numpy()
                assert pb_utils.get_output_tensor_by_name(answer, "OUTPUT1") is None
                error = ""
            responses.append(pb_utils.InferenceResponse([
                pb_utils.Tensor("SUM", out), pb_utils.Tensor("ERROR", np.array([error], object))]))
        return responses
"""

# async def execute: both calls in flight at once, awaited together.
ASYNC_CALLER = """import asyncio
import numpy as np
import triton_python_backend_utils as pb_utils


class TritonPythonModel:
    async def execute(self, requests):
        responses = []
        for request in requests:
            a = pb_utils.get_input_tensor_by_name(request, "A").as_numpy()
            b = pb_utils.get_input_tensor_by_name(request, "B").as_numpy()
            calls = [pb_utils.InferenceRequest(
                         model_name="add_sub", requested_output_names=[name],
                         inputs=[pb_utils.Tensor("INPUT0", a), pb_utils.Tensor("INPUT1", b)])
                     for name in ("OUTPUT0", "OUTPUT1")]
            total, difference = await asyncio.gather(*(c.async_exec() for c in calls))
            out = (pb_utils.get_output_tensor_by_name(total, "OUTPUT0").as_numpy()
                   + pb_utils.get_output_tensor_by_name(difference, "OUTPUT1").as_numpy())
            responses.append(pb_utils.InferenceResponse([
                pb_utils.Tensor("SUM", out), pb_utils.Tensor("ERROR", np.array([""], object))]))
        return responses
"""

# Calls itself (one instance): Triton would wait forever; pyserve answers UNAVAILABLE.
SELF_CALLER = """import numpy as np
import triton_python_backend_utils as pb_utils


class TritonPythonModel:
    def execute(self, requests):
        responses = []
        for request in requests:
            a = pb_utils.get_input_tensor_by_name(request, "A")
            b = pb_utils.get_input_tensor_by_name(request, "B")
            answer = pb_utils.InferenceRequest(model_name="self_caller", inputs=[a, b],
                                               requested_output_names=["SUM"]).exec()
            error = answer.error().message() if answer.has_error() else ""
            responses.append(pb_utils.InferenceResponse([
                pb_utils.Tensor("SUM", a.as_numpy()),
                pb_utils.Tensor("ERROR", np.array([error], object))]))
        return responses
"""

# ping calls pong, which calls ping back: a cycle whose every instance waits.
PING_PONG = """import numpy as np
import triton_python_backend_utils as pb_utils


class TritonPythonModel:
    def initialize(self, args):
        self.name = args["model_name"]

    def execute(self, requests):
        responses = []
        for request in requests:
            a = pb_utils.get_input_tensor_by_name(request, "A")
            b = pb_utils.get_input_tensor_by_name(request, "B")
            other = "pong" if self.name == "ping" else "ping"
            answer = pb_utils.InferenceRequest(model_name=other, inputs=[a, b],
                                               requested_output_names=["ERROR"]).exec()
            if answer.has_error():
                error = answer.error().message()
            else:
                error = pb_utils.get_output_tensor_by_name(answer, "ERROR").as_numpy()[0]
            responses.append(pb_utils.InferenceResponse([
                pb_utils.Tensor("SUM", a.as_numpy()),
                pb_utils.Tensor("ERROR", np.array([error], object))]))
        return responses
"""

# A decoupled model: A[0, 0] responses, the i-th SUM = A + B * i, then the final flag alone.
COUNTER = """import numpy as np
import triton_python_backend_utils as pb_utils


class TritonPythonModel:
    def execute(self, requests):
        for request in requests:
            a = pb_utils.get_input_tensor_by_name(request, "A").as_numpy()
            b = pb_utils.get_input_tensor_by_name(request, "B").as_numpy()
            sender = request.get_response_sender()
            for i in range(int(a[0, 0])):
                sender.send(pb_utils.InferenceResponse([
                    pb_utils.Tensor("SUM", a + b * i),
                    pb_utils.Tensor("ERROR", np.array([""], object))]))
            sender.send(flags=pb_utils.TRITONSERVER_RESPONSE_COMPLETE_FINAL)
        return None
"""

# Calls counter with exec(decoupled=True) (B[0, 0] > 0), async_exec(decoupled=True) (B[0, 0]
# < 0) or plain exec() (B[0, 0] == 0, refused as Triton refuses it): SUM is the responses'
# SUMs added, ERROR names how many responses came and how many of them were empty.
STREAM_CALLER = """import asyncio
import numpy as np
import triton_python_backend_utils as pb_utils


class TritonPythonModel:
    async def execute(self, requests):
        responses = []
        for request in requests:
            a = pb_utils.get_input_tensor_by_name(request, "A")
            b = pb_utils.get_input_tensor_by_name(request, "B")
            call = pb_utils.InferenceRequest(model_name="counter", inputs=[a, b],
                                             requested_output_names=["SUM", "ERROR"])
            mode = b.as_numpy()[0, 0]
            if mode > 0:
                answers = list(call.exec(decoupled=True))
            elif mode < 0:
                answers = await call.async_exec(decoupled=True)
            else:
                answers = [call.exec()]
            if answers[0].has_error():
                error = answers[0].error().message()
            else:
                empty = sum(not r.output_tensors() for r in answers)
                error = f"{len(answers)} responses, {empty} empty"
            total = sum((pb_utils.get_output_tensor_by_name(r, "SUM").as_numpy()
                         for r in answers if r.output_tensors()), np.zeros_like(a.as_numpy()))
            responses.append(pb_utils.InferenceResponse([
                pb_utils.Tensor("SUM", total), pb_utils.Tensor("ERROR", np.array([error], object))]))
        return responses
"""


def build_repository(repository) -> None:
    write_add_sub(repository, "add_sub")
    one_instance = "instance_group [ { count: 1 kind: KIND_CPU } ]\n"
    for name, source in (("caller", CALLER), ("async_caller", ASYNC_CALLER),
                         ("self_caller", SELF_CALLER), ("ping", PING_PONG), ("pong", PING_PONG),
                         ("stream_caller", STREAM_CALLER)):
        write_python_model(repository, name, IO + one_instance, source, max_batch_size=8)
    write_python_model(repository, "counter",
                       IO + one_instance + "model_transaction_policy { decoupled: true }\n",
                       COUNTER, max_batch_size=8)


@pytest.fixture(scope="module", params=FRONTENDS)
def server(request, tmp_path_factory):
    yield from serve(request, tmp_path_factory, build_repository)


def call(client, module, model: str, a: np.ndarray, b: np.ndarray):
    result = client.infer(model, [tensor(module, "A", a, "FP32"), tensor(module, "B", b, "FP32")])
    return result.as_numpy("SUM"), result.as_numpy("ERROR")[0].decode()


def test_exec_calls_a_model_through_the_core(client, server):
    module, c = client
    a = np.arange(VECTOR, dtype=np.float32)[None]
    b = np.full((1, VECTOR), 10, dtype=np.float32)
    with grpcclient.InferenceServerClient(server.grpc_url) as g:
        before = g.get_inference_statistics("add_sub").model_stats[0].inference_count
    total, error = call(c, module, "caller", a, b)
    assert error == ""
    np.testing.assert_array_equal(total, a + b)
    with grpcclient.InferenceServerClient(server.grpc_url) as g:
        assert settled_statistics(g, "add_sub", 1).inference_count == before + 1


def test_exec_errors_come_back_in_the_response(client):
    module, c = client
    a = np.full((1, VECTOR), -1, dtype=np.float32)
    total, error = call(c, module, "caller", a, a)
    assert error == "Request for unknown model: 'no_such_model' is not found"
    np.testing.assert_array_equal(total, np.zeros_like(a))


def test_async_execute_awaits_several_calls_at_once(client):
    module, c = client
    a = np.arange(VECTOR, dtype=np.float32)[None]
    b = np.ones((1, VECTOR), dtype=np.float32)
    total, error = call(c, module, "async_caller", a, b)
    assert error == ""
    np.testing.assert_array_equal(total, 2 * a)  # (a + b) + (a - b)


def test_a_model_calling_itself_is_answered_not_deadlocked(client):
    module, c = client
    a = np.ones((1, VECTOR), dtype=np.float32)
    total, error = call(c, module, "self_caller", a, a)
    np.testing.assert_array_equal(total, a)
    assert error == ("BLS request from model 'self_caller' to model 'self_caller' would wait "
                     "forever: every instance on the cycle self_caller -> self_caller waits on "
                     "a BLS call")


@pytest.mark.parametrize("mode", [1, -1], ids=["exec", "async_exec"])
def test_a_decoupled_model_is_called_with_decoupled_true(client, mode):
    module, c = client
    a = np.full((1, VECTOR), 3, dtype=np.float32)
    b = np.full((1, VECTOR), mode, dtype=np.float32)
    total, error = call(c, module, "stream_caller", a, b)
    assert error == "4 responses, 1 empty"  # three sent, then the final flag on its own
    np.testing.assert_array_equal(total, a * 3 + b * 3)  # (a) + (a + b) + (a + 2b)


def test_a_decoupled_model_called_without_decoupled_is_refused(client):
    module, c = client
    a = np.ones((1, VECTOR), dtype=np.float32)
    _, error = call(c, module, "stream_caller", a, np.zeros_like(a))
    assert error == ("Model counter is using the decoupled. The current BLS request call doesn't "
                     "support models using the decoupled transaction policy. Please use "
                     "'decoupled=True' argument to the 'exec' or 'async_exec' calls for "
                     "decoupled models.'")


def test_a_cycle_of_models_is_answered_where_it_closes(client):
    """ping waits on pong; pong's call back to ping finds ping's only instance waiting on it."""
    module, c = client
    a = np.ones((1, VECTOR), dtype=np.float32)
    _, error = call(c, module, "ping", a, a)
    assert error == ("BLS request from model 'pong' to model 'ping' would wait forever: every "
                     "instance on the cycle pong -> ping -> pong waits on a BLS call")


def test_a_bls_callers_own_requests_are_checked_as_any(server):
    with grpcclient.InferenceServerClient(server.grpc_url) as c:
        with pytest.raises(InferenceServerException) as failed:
            c.infer("caller", [tensor(grpcclient, "A", np.zeros((1, 3), np.float32), "FP32"),
                               tensor(grpcclient, "B", np.zeros((1, 3), np.float32), "FP32")])
        assert "unexpected shape for input 'A' for model 'caller'" in failed.value.message()
