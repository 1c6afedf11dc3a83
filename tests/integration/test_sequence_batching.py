"""Triton's sequence batcher against real servers: tritonclient over gRPC (sync, async,
stream) and HTTP, on the native and the Python frontends. The models are Python accumulators
that read the control inputs the core fills in (START, END, READY, CORRID) and echo them."""

from __future__ import annotations

import queue
import time

import numpy as np
import pytest

from conftest import (FRONTENDS, native_frontends_built, pending_requests, start_server, wait_until,
                      write_python_model)

pytest.importorskip("tritonclient.grpc")
import tritonclient.grpc as grpcclient  # noqa: E402
import tritonclient.http as httpclient  # noqa: E402
from tritonclient.utils import InferenceServerException  # noqa: E402

# Sums INPUT over a sequence, keyed by the CORRID control; answers the sum and the controls it
# saw (START, END, READY as floats, CORRID as text), and the request's correlation_id() and
# flags(). Rows with READY false (empty slots of a direct batch) hold no sequence and answer 0.
ACCUMULATOR = """import numpy as np
import triton_python_backend_utils as pb_utils


class TritonPythonModel:
    def initialize(self, args):
        self.sums = {}
        self.true = {}

    def execute(self, requests):
        responses = []
        for request in requests:
            def get(name):
                return pb_utils.get_input_tensor_by_name(request, name).as_numpy().reshape(-1)[0]
            shape = pb_utils.get_input_tensor_by_name(request, "INPUT").as_numpy().shape
            start, end, ready = (float(get(n)) for n in ("START", "END", "READY"))
            corrid = get("CORRID")
            corrid = corrid.decode() if isinstance(corrid, bytes) else str(int(corrid))
            total = 0
            if ready == TRUE:
                if start == TRUE:
                    self.sums[corrid] = 0
                self.sums[corrid] += int(get("INPUT"))
                total = self.sums[corrid]
                if end == TRUE:
                    del self.sums[corrid]
            responses.append(pb_utils.InferenceResponse([
                pb_utils.Tensor("OUTPUT", np.array([total], dtype=np.int32).reshape(shape)),
                pb_utils.Tensor("CONTROLS", np.array([start, end, ready], dtype=np.float32)
                                .reshape(shape[:-1] + (3,))),
                pb_utils.Tensor("CORRID_OUT",
                                np.array([corrid.encode()], dtype=np.object_).reshape(shape)),
                pb_utils.Tensor("SEQUENCE", np.array(
                    [f"{request.correlation_id()}/{request.flags()}".encode()],
                    dtype=np.object_).reshape(shape)),
            ]))
        return responses
"""

TENSORS = """input [ { name: "INPUT" data_type: TYPE_INT32 dims: [ 1 ] } ]
output [
  { name: "OUTPUT" data_type: TYPE_INT32 dims: [ 1 ] },
  { name: "CONTROLS" data_type: TYPE_FP32 dims: [ 3 ] },
  { name: "CORRID_OUT" data_type: TYPE_STRING dims: [ 1 ] },
  { name: "SEQUENCE" data_type: TYPE_STRING dims: [ 1 ] }
]
"""


# Sleeps INPUT ms, then answers it: two instances, one sequence slot each. A request that
# sleeps first creates the file `started` beside the model's directory.
SLOW = """import os
import time
import triton_python_backend_utils as pb_utils


class TritonPythonModel:
    def initialize(self, args):
        self.started = os.path.join(args["model_repository"], "..", "started")

    def execute(self, requests):
        responses = []
        for request in requests:
            value = pb_utils.get_input_tensor_by_name(request, "INPUT").as_numpy()
            if value.reshape(-1)[0] > 0:
                open(self.started, "w").close()
            time.sleep(int(value.reshape(-1)[0]) / 1000)
            responses.append(pb_utils.InferenceResponse([pb_utils.Tensor("OUTPUT", value)]))
        return responses
"""
SLOW_TENSORS = """input [ { name: "INPUT" data_type: TYPE_INT32 dims: [ 1 ] } ]
output [ { name: "OUTPUT" data_type: TYPE_INT32 dims: [ 1 ] } ]
"""


def sequence_batching(kind: str, false: str, true: str, corrid_type: str, strategy: str = "",
                      idle_us: int = 0) -> str:
    def flag(name, control):
        return (f'{{ name: "{name}" control [ {{ kind: {control} {kind}: [ {false}, {true} ] }} ] }}')
    controls = ",\n    ".join([flag("START", "CONTROL_SEQUENCE_START"),
                               flag("END", "CONTROL_SEQUENCE_END"),
                               flag("READY", "CONTROL_SEQUENCE_READY"),
                               f'{{ name: "CORRID" control [ {{ kind: CONTROL_SEQUENCE_CORRID '
                               f'data_type: {corrid_type} }} ] }}'])
    idle = f"max_sequence_idle_microseconds: {idle_us}\n  " if idle_us else ""
    return f"sequence_batching {{\n  {idle}{strategy}\n  control_input [\n    {controls}\n  ]\n}}\n"


# name -> (max_batch_size, control kind, false, true, CORRID type, strategy, idle µs)
MODELS = {
    "acc_int32": (4, "int32_false_true", "0", "1", "TYPE_UINT64", "direct { }", 0),
    "acc_fp32": (4, "fp32_false_true", "-1.5", "2.5", "TYPE_INT32", "", 0),
    "acc_bool": (2, "bool_false_true", "false", "true", "TYPE_STRING", "", 0),
    "acc_int64": (0, "int32_false_true", "0", "1", "TYPE_INT64", "", 0),
    "acc_uint32": (4, "int32_false_true", "0", "1", "TYPE_UINT32", "", 0),
    "acc_oldest": (4, "int32_false_true", "0", "1", "TYPE_UINT64",
                   "oldest { max_candidate_sequences: 8 preferred_batch_size: [ 2 ] "
                   "max_queue_delay_microseconds: 1000 }", 0),
    "acc_one_slot": (1, "int32_false_true", "0", "1", "TYPE_UINT64", "", 10000000),
    "acc_idle": (1, "int32_false_true", "0", "1", "TYPE_STRING", "", 100000),
}


@pytest.fixture(scope="module", params=FRONTENDS)
def server(request, tmp_path_factory):
    if request.param == "native" and not native_frontends_built():
        pytest.skip("pyserve was built without the native frontends")
    repository = tmp_path_factory.mktemp("sequence_models")
    for name, (max_batch, kind, false, true, corrid, strategy, idle) in MODELS.items():
        true_value = 1.0 if true == "true" else float(true)
        write_python_model(repository, name,
                           TENSORS + sequence_batching(kind, false, true, corrid, strategy, idle)
                           + 'instance_group [ { kind: KIND_CPU count: 1 } ]\n',
                           ACCUMULATOR.replace("TRUE", repr(true_value)), max_batch_size=max_batch)
    for name, ordered in (("slow_ordered", "true"), ("slow_unordered", "false")):
        write_python_model(repository, name, SLOW_TENSORS + "sequence_batching {\n"
                           "  oldest { max_candidate_sequences: 1 preserve_ordering: "
                           f"{ordered} }}\n}}\n" + 'instance_group [ { kind: KIND_CPU count: 2 } ]\n',
                           SLOW, max_batch_size=1)
    server = start_server([repository], tmp_path_factory.mktemp("logs") / "sequence.log",
                          "--grpc-frontend", request.param, "--http-frontend", request.param)
    server.repository = repository
    yield server
    server.stop()


def inputs(module, value: int, batching: bool = True):
    array = np.array([[value]] if batching else [value], dtype=np.int32)
    t = module.InferInput("INPUT", list(array.shape), "INT32")
    t.set_data_from_numpy(array)
    return [t]


def connect(server, protocol: str):
    if protocol == "grpc":
        return grpcclient, grpcclient.InferenceServerClient(server.grpc_url)
    return httpclient, httpclient.InferenceServerClient(server.http_url)


def infer(module, client, model, value, sequence_id, start=False, end=False, batching=True):
    return client.infer(model, inputs(module, value, batching), sequence_id=sequence_id,
                        sequence_start=start, sequence_end=end)


def total(result) -> int:
    return int(result.as_numpy("OUTPUT").reshape(-1)[0])


@pytest.mark.parametrize("protocol", ["grpc", "http"])
def test_interleaved_sequences_share_a_batch_and_keep_their_sums(server, protocol):
    module, client = connect(server, protocol)
    with client:
        ids = [101, 102, 103]
        sums = dict.fromkeys(ids, 0)
        for step in range(4):
            for n, sequence_id in enumerate(ids):
                value = 10 * n + step + 1
                sums[sequence_id] += value
                result = infer(module, client, "acc_int32", value, sequence_id, start=step == 0,
                               end=step == 3)
                assert total(result) == sums[sequence_id]
                controls = result.as_numpy("CONTROLS").reshape(-1).tolist()
                assert controls == [float(step == 0), float(step == 3), 1.0]
                assert result.as_numpy("CORRID_OUT").reshape(-1)[0] == str(sequence_id).encode()
                flags = (step == 0) | (step == 3) << 1
                assert result.as_numpy("SEQUENCE").reshape(-1)[0] == (
                    f"{sequence_id}/{flags}".encode())


@pytest.mark.parametrize("model, sequence_id, false, true", [
    ("acc_fp32", 7, -1.5, 2.5),
    ("acc_bool", "seq-α-1", 0.0, 1.0),
    ("acc_int64", 2**40 + 3, 0.0, 1.0),
    ("acc_uint32", 2**32 + 9, 0.0, 1.0),
])
@pytest.mark.parametrize("protocol", ["grpc", "http"])
def test_every_control_kind_reaches_the_model(server, protocol, model, sequence_id, false, true):
    module, client = connect(server, protocol)
    batching = MODELS[model][0] > 0
    with client:
        first = infer(module, client, model, 5, sequence_id, start=True, batching=batching)
        last = infer(module, client, model, 6, sequence_id, end=True, batching=batching)
    assert total(first) == 5 and total(last) == 11
    assert first.as_numpy("CONTROLS").reshape(-1).tolist() == [true, false, true]
    assert last.as_numpy("CONTROLS").reshape(-1).tolist() == [false, true, true]
    expected = sequence_id if isinstance(sequence_id, str) else (
        sequence_id % 2**32 if model == "acc_uint32" else sequence_id)
    assert last.as_numpy("CORRID_OUT").reshape(-1)[0] == str(expected).encode()
    assert last.as_numpy("SEQUENCE").reshape(-1)[0] == f"{sequence_id}/2".encode()


def test_async_and_stream_sequences(server):
    with grpcclient.InferenceServerClient(server.grpc_url) as client:
        done: queue.Queue = queue.Queue()
        client.start_stream(callback=lambda result, error: done.put((result, error)))
        for step, value in enumerate([1, 2, 3]):
            client.async_stream_infer("acc_oldest", inputs(grpcclient, value), sequence_id=501,
                                      sequence_start=step == 0, sequence_end=step == 2)
        results = [done.get(timeout=60) for _ in range(3)]
        client.stop_stream()
        assert [e for _, e in results] == [None] * 3
        assert [total(r) for r, _ in results] == [1, 3, 6]

        # Async requests of one sequence, each sent once the previous one is answered.
        for step, value in enumerate([4, 5]):
            client.async_infer("acc_oldest", inputs(grpcclient, value), sequence_id=502,
                               sequence_start=step == 0, sequence_end=step == 1,
                               callback=lambda result, error: done.put((result, error)))
            result, error = done.get(timeout=60)
            assert error is None
        assert total(result) == 9


@pytest.mark.parametrize("protocol", ["grpc", "http"])
def test_oldest_batches_across_sequences(server, protocol):
    module, client = connect(server, protocol)
    with client:
        for sequence_id in (601, 602, 603):
            assert total(infer(module, client, "acc_oldest", 1, sequence_id, start=True)) == 1
        for sequence_id in (601, 602, 603):
            assert total(infer(module, client, "acc_oldest", 2, sequence_id, end=True)) == 3


@pytest.mark.parametrize("model, first, sequences", [("slow_ordered", 300, (701, 702)),
                                                     ("slow_unordered", 0, (703, 704))])
def test_oldest_preserve_ordering_answers_in_arrival_order(server, model, first, sequences):
    """A slow request of one sequence (which keeps its slot: it does not end), then a quick one
    of another on the second instance: with preserve_ordering the quick one waits for the slow
    one; without, it comes back first."""
    results: queue.Queue = queue.Queue()
    started = server.repository / "started"
    started.unlink(missing_ok=True)
    with grpcclient.InferenceServerClient(server.grpc_url) as client:
        for sequence_id, value in zip(sequences, (300, 0)):
            client.async_infer(model, inputs(grpcclient, value),
                               lambda result, error: results.put((result, error)),
                               sequence_id=sequence_id, sequence_start=True,
                               sequence_end=value == 0)
            deadline = time.monotonic() + 30
            while value and not started.exists() and time.monotonic() < deadline:
                time.sleep(0.005)  # the slow request runs before the quick one is sent
        answered = []
        for _ in range(2):
            result, error = results.get(timeout=30)
            assert error is None
            answered.append(total(result))
    assert answered[0] == first


def test_a_backlogged_sequence_waits_for_a_slot(server):
    with grpcclient.InferenceServerClient(server.grpc_url) as client:
        assert total(infer(grpcclient, client, "acc_one_slot", 1, 701, start=True)) == 1
        done: queue.Queue = queue.Queue()
        client.async_infer("acc_one_slot", inputs(grpcclient, 10), sequence_id=702,
                           sequence_start=True, sequence_end=True,
                           callback=lambda result, error: done.put((result, error)))
        with pytest.raises(queue.Empty):  # every slot is taken: 702 waits in the backlog
            done.get(timeout=0.3)
        assert total(infer(grpcclient, client, "acc_one_slot", 2, 701, end=True)) == 3
        result, error = done.get(timeout=60)
        assert error is None and total(result) == 10


@pytest.mark.parametrize("protocol", ["grpc", "http"])
def test_an_idle_sequence_is_released(server, protocol):
    module, client = connect(server, protocol)
    with client:
        assert total(infer(module, client, "acc_idle", 1, "idle-1", start=True)) == 1
        time.sleep(0.5)  # max_sequence_idle_microseconds is 100 ms
        # The slot went to a new sequence: the old one must start again.
        assert total(infer(module, client, "acc_idle", 4, "idle-2", start=True, end=True)) == 4
        with pytest.raises(InferenceServerException) as e:
            infer(module, client, "acc_idle", 2, "idle-1")
    assert ("inference request for sequence idle-1 to model 'acc_idle' must specify the START "
            "flag on the first request of the sequence") in str(e.value)


@pytest.mark.parametrize("protocol", ["grpc", "http"])
def test_errors_have_tritons_texts(server, protocol):
    module, client = connect(server, protocol)

    def refused(tensors=None, **kwargs) -> str:
        with pytest.raises(InferenceServerException) as e:
            client.infer("acc_int32", inputs(module, 1) if tensors is None else tensors,
                         **kwargs)
        return e.value.message()

    with client:
        assert refused(sequence_start=True) == (
            "inference request to model 'acc_int32' must specify a non-zero or non-empty "
            "correlation ID")
        assert refused(sequence_id=9001) == (
            "inference request for sequence 9001 to model 'acc_int32' must specify the START "
            "flag on the first request of the sequence")
        two = module.InferInput("INPUT", [2, 1], "INT32")
        two.set_data_from_numpy(np.array([[1], [2]], dtype=np.int32))
        assert refused(tensors=[two], sequence_id=9002, sequence_start=True) == (
            "inference request to model 'acc_int32' must specify batch-size 1 due to "
            "requirements of sequence batcher")
        assert refused(sequence_id="text", sequence_start=True, request_id="r7") == (
            "[request id: r7] sequence batching control 'CORRID' data-type is 'BYTES', but "
            "model 'acc_int32' expects 'UINT64'")
        assert refused(sequence_id="x" * 129, sequence_start=True) == (
            "string correlation ID cannot be longer than 128 characters")
        assert "expected 1 inputs but got 0" in refused(tensors=[], sequence_id=9003,
                                                        sequence_start=True)


def test_a_start_in_progress_ends_the_old_sequence(server):
    with grpcclient.InferenceServerClient(server.grpc_url) as client:
        assert total(infer(grpcclient, client, "acc_int32", 5, 801, start=True)) == 5
        assert total(infer(grpcclient, client, "acc_int32", 7, 801, start=True)) == 7
        assert total(infer(grpcclient, client, "acc_int32", 1, 801, end=True)) == 8
    assert ("sequence 801 for model 'acc_int32' has a conflict. The previous sequence did not "
            "end before this sequence start. Previous sequence will be terminated early."
            ) in server.log()


def test_statistics_count_filled_slots(server):
    with grpcclient.InferenceServerClient(server.grpc_url) as client:
        before = client.get_inference_statistics("acc_uint32").model_stats[0]
        infer(grpcclient, client, "acc_uint32", 1, 901, start=True)
        infer(grpcclient, client, "acc_uint32", 1, 902, start=True)
        infer(grpcclient, client, "acc_uint32", 1, 902, end=True)  # slot 0 padded
        infer(grpcclient, client, "acc_uint32", 1, 901, end=True)
        deadline = time.monotonic() + 30
        while True:
            after = client.get_inference_statistics("acc_uint32").model_stats[0]
            if after.execution_count - before.execution_count >= 4 or time.monotonic() > deadline:
                break
            time.sleep(0.01)
    assert after.inference_count - before.inference_count == 4
    assert after.execution_count - before.execution_count == 4


@pytest.mark.parametrize("protocol", ["grpc", "http"])
def test_pyserve_client_sequences(server, protocol):
    from pyserve.client import Client

    url = server.grpc_url if protocol == "grpc" else f"http://{server.http_url}"
    with Client(url) as client:
        first = client.infer("acc_bool", {"INPUT": np.array([[3]], dtype=np.int32)},
                             sequence_id="client-1", sequence_start=True)
        last = client.infer("acc_bool", {"INPUT": np.array([[4]], dtype=np.int32)},
                            sequence_id="client-1", sequence_end=True)
        assert first["OUTPUT"].tolist() == [[3]] and last["OUTPUT"].tolist() == [[7]]
        # A stream with a sequence ID: the first request starts it, the last ends it.
        sums = [r["OUTPUT"].tolist() for r in client.stream(
            "acc_int32", [{"INPUT": np.array([[v]], dtype=np.int32)} for v in (1, 2, 3)],
            sequence_id=1001)]
    assert sums == [[[1]], [[3]], [[6]]]


# Sums INPUT per sequence; answers the sum and how many sequences its batch held (READY rows).
BATCH_COUNTING = """import numpy as np
import triton_python_backend_utils as pb_utils


class TritonPythonModel:
    def initialize(self, args):
        self.sums = {}

    def execute(self, requests):
        def get(request, name):
            return int(pb_utils.get_input_tensor_by_name(request, name).as_numpy().reshape(-1)[0])
        ready = [r for r in requests if get(r, "READY")]
        for request in ready:
            corrid = get(request, "CORRID")
            self.sums[corrid] = (0 if get(request, "START") else self.sums[corrid]) + get(
                request, "INPUT")
        return [pb_utils.InferenceResponse([
            pb_utils.Tensor("OUTPUT", np.array([[self.sums.get(get(r, "CORRID"), 0)]], np.int32)),
            pb_utils.Tensor("BATCHED", np.array([[len(ready)]], np.int32))]) for r in requests]
"""


@pytest.mark.parametrize("frontend", FRONTENDS)
@pytest.mark.parametrize("backlog_delay", ["1", None])
def test_backlog_delay_scheduler_holds_until_the_backlog_fills(tmp_path, frontend, backlog_delay):
    """Triton's test hooks: TRITONSERVER_DELAY_SCHEDULER=1 lets a lone request run at once;
    with TRITONSERVER_BACKLOG_DELAY_SCHEDULER=1, batching is held until a request also waits in
    the backlog, so the requests held in the two slots run as one batch."""
    if frontend == "native" and not native_frontends_built():
        pytest.skip("pyserve was built without the native frontends")
    write_python_model(tmp_path / "models", "acc",
                       'input [ { name: "INPUT" data_type: TYPE_INT32 dims: [ 1 ] } ]\n'
                       'output [ { name: "OUTPUT" data_type: TYPE_INT32 dims: [ 1 ] },\n'
                       '         { name: "BATCHED" data_type: TYPE_INT32 dims: [ 1 ] } ]\n'
                       + sequence_batching("int32_false_true", "0", "1", "TYPE_UINT64")
                       + 'instance_group [ { kind: KIND_CPU count: 1 } ]\n',
                       BATCH_COUNTING, max_batch_size=2)  # two slots
    env = {"TRITONSERVER_DELAY_SCHEDULER": "1"}
    if backlog_delay:
        env["TRITONSERVER_BACKLOG_DELAY_SCHEDULER"] = backlog_delay
    server = start_server([tmp_path / "models"], tmp_path / "server.log", "--grpc-frontend",
                          frontend, env=env)
    results: queue.Queue = queue.Queue()

    def answer() -> tuple[str, int, int]:
        result, error = results.get(timeout=30)
        assert error is None, error
        return (result.get_response().id, total(result),
                int(result.as_numpy("BATCHED").reshape(-1)[0]))

    try:
        read = "Delaying scheduler until 1 backlog queued requests" in server.log()
        assert read == bool(backlog_delay), "the server did not read the hook: is the pyserve " \
            "it runs (the installed one) built from this tree?"
        with grpcclient.InferenceServerClient(server.grpc_url) as client:
            client.start_stream(lambda result, error: results.put((result, error)))

            def send(request_id, value, sequence_id, start=False, end=False):
                client.async_stream_infer("acc", inputs(grpcclient, value), request_id=request_id,
                                          sequence_id=sequence_id, sequence_start=start,
                                          sequence_end=end)
            send("a1", 1, 31, start=True)
            if not backlog_delay:  # DELAY_SCHEDULER=1 alone: the lone request runs
                assert answer() == ("a1", 1, 1)
                client.stop_stream()
                return
            send("b1", 10, 32, start=True)
            # Both wait in their slots, none in the backlog: held, however long.
            wait_until(lambda: pending_requests(server, "acc") == 2, "both requests to be held")
            send("c", 100, 33, start=True, end=True)  # no slot is free: the backlog
            assert sorted([answer(), answer()]) == [("a1", 1, 2), ("b1", 10, 2)]
            send("a2", 2, 31, end=True)  # frees a slot for the backlogged sequence
            send("b2", 20, 32, end=True)
            answered = {request_id: value for request_id, value, _ in
                        (answer(), answer(), answer())}
            assert answered == {"a2": 3, "b2": 30, "c": 100}
            client.stop_stream()
    finally:
        assert server.stop() == 0


# A decoupled sequence model: per request, the running sum and then its double, as two
# responses, then the final flag alone.
DECOUPLED_ACCUMULATOR = """import numpy as np
import triton_python_backend_utils as pb_utils


class TritonPythonModel:
    def initialize(self, args):
        self.sums = {}

    def execute(self, requests):
        for request in requests:
            def get(name):
                return pb_utils.get_input_tensor_by_name(request, name).as_numpy().reshape(-1)[0]
            corrid = int(get("CORRID"))
            if get("START"):
                self.sums[corrid] = 0
            self.sums[corrid] += int(get("INPUT"))
            sender = request.get_response_sender()
            for factor in (1, 2):
                sender.send(pb_utils.InferenceResponse([pb_utils.Tensor(
                    "OUTPUT", np.array([[self.sums[corrid] * factor]], np.int32))]))
            sender.send(flags=pb_utils.TRITONSERVER_RESPONSE_COMPLETE_FINAL)
        return None
"""


@pytest.mark.parametrize("frontend", FRONTENDS)
def test_a_decoupled_sequence_model_streams_each_requests_responses(tmp_path, frontend):
    if frontend == "native" and not native_frontends_built():
        pytest.skip("pyserve was built without the native frontends")
    write_python_model(tmp_path / "models", "acc_stream",
                       SLOW_TENSORS + sequence_batching("int32_false_true", "0", "1",
                                                        "TYPE_UINT64")
                       + "model_transaction_policy { decoupled: true }\n"
                       + 'instance_group [ { kind: KIND_CPU } ]\n',
                       DECOUPLED_ACCUMULATOR, max_batch_size=1)
    server = start_server([tmp_path / "models"], tmp_path / "server.log", "--grpc-frontend",
                          frontend)
    results: queue.Queue = queue.Queue()
    try:
        with grpcclient.InferenceServerClient(server.grpc_url) as client:
            client.start_stream(lambda result, error: results.put((result, error)))
            for value, start, end in ((3, True, False), (4, False, True)):
                client.async_stream_infer("acc_stream", inputs(grpcclient, value),
                                          sequence_id=21, sequence_start=start,
                                          sequence_end=end)
            answered = []
            for _ in range(4):
                result, error = results.get(timeout=30)
                assert error is None
                answered.append(total(result))
            client.stop_stream()
        assert answered == [3, 6, 7, 14]
    finally:
        assert server.stop() == 0
