"""Dynamic batching by Triton's rules, proven through the statistics NVIDIA's clients read.

The server runs with TRITONSERVER_DELAY_SCHEDULER=3 (Triton's own switch for its L0_batcher
tests): each model's batcher is held, once, until three of its requests are queued, and no
timeout is applied while it is held. Every scenario therefore sends exactly three requests to
its own model; the batches that form from them are then fixed by the rules alone, and
`batch_stats` (batch size -> executions) shows them.
"""

from __future__ import annotations

import json
import queue
import time
import urllib.request
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import onnx
import pytest
import tritonclient.grpc as grpcclient
from google.protobuf import json_format
from tritonclient.grpc import service_pb2
from tritonclient.utils import InferenceServerException

from conftest import batch_counts, settled_statistics, start_server

HOLD = {"TRITONSERVER_DELAY_SCHEDULER": "3"}
GAP_S = 0.02  # between sends where arrival order matters; nothing runs while the batcher is held
RESULT_TIMEOUT_S = 30

DYNAMIC = "max_batch_size: 8\ndynamic_batching { }"
MODELS = {
    "preferred": "max_batch_size: 8\ndynamic_batching { preferred_batch_size: [ 2, 4 ] }",
    "queue_delay": "max_batch_size: 8\ndynamic_batching { max_queue_delay_microseconds: 200000 }",
    "max_size": DYNAMIC,
    "shapes": DYNAMIC,
    "ragged": DYNAMIC,  # the input gets allow_ragged_batch: true, see build_model
    "priority": "max_batch_size: 1\n"
                "dynamic_batching { priority_levels: 2 default_priority_level: 2 }",
    "timeout_reject": "max_batch_size: 8\ndynamic_batching { default_queue_policy {"
                      " timeout_action: REJECT default_timeout_microseconds: 1000000"
                      " allow_timeout_override: true } }",
    "timeout_delay": "max_batch_size: 1\ndynamic_batching { default_queue_policy {"
                     " timeout_action: DELAY default_timeout_microseconds: 1000000"
                     " allow_timeout_override: true } }",
    "http_stats": "max_batch_size: 8\ndynamic_batching { preferred_batch_size: [ 2 ] }",
}
QUEUE_LIMIT = "max_batch_size: 8\ndynamic_batching { default_queue_policy { max_queue_size: 2 } }"


# --- repository ---------------------------------------------------------------------------

def identity_onnx() -> bytes:
    """INPUT0 FP32 [batch, n] (both dynamic) -> Identity -> OUTPUT0."""
    from onnx import TensorProto, helper

    graph = helper.make_graph(
        [helper.make_node("Identity", ["INPUT0"], ["OUTPUT0"])], "identity",
        [helper.make_tensor_value_info("INPUT0", TensorProto.FLOAT, ["batch", "n"])],
        [helper.make_tensor_value_info("OUTPUT0", TensorProto.FLOAT, ["batch", "n"])])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.checker.check_model(model)
    return model.SerializeToString()


def build_model(repository: Path, name: str, batching: str, ragged: bool = False) -> None:
    """One copy of the identity model, with `batching` (max_batch_size, dynamic_batching)."""
    directory = repository / name
    (directory / "1").mkdir(parents=True)
    (directory / "1" / "model.onnx").write_bytes(identity_onnx())
    ragged_line = "    allow_ragged_batch: true\n" if ragged else ""
    (directory / "config.pbtxt").write_text(
        f'name: "{name}"\nplatform: "onnxruntime_onnx"\n{batching}\n'
        f'input [\n  {{\n    name: "INPUT0"\n    data_type: TYPE_FP32\n    dims: [ -1 ]\n'
        f'{ragged_line}  }}\n]\n'
        'output [\n  {\n    name: "OUTPUT0"\n    data_type: TYPE_FP32\n    dims: [ -1 ]\n  }\n]\n'
        "instance_group [ { count: 1 kind: KIND_CPU } ]\n")


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    repository = tmp_path_factory.mktemp("batching_repo")
    for name, batching in MODELS.items():
        build_model(repository, name, batching, ragged=name == "ragged")
    process = start_server([repository], tmp_path_factory.mktemp("logs") / "batching.log",
                           env=HOLD)
    yield process
    process.stop()


@pytest.fixture(scope="module")
def client(server):
    with grpcclient.InferenceServerClient(server.grpc_url) as c:
        yield c


# --- sending ------------------------------------------------------------------------------

@dataclass
class Done:
    """One finished request: its index in sending order, its output or its error."""

    index: int
    output: np.ndarray | None
    error: InferenceServerException | None


def data(index: int, shape=(1, 4)) -> np.ndarray:
    """Distinct data per request, so that every result shows whose it is."""
    return np.full(shape, 10.0 * (index + 1), dtype=np.float32) + np.arange(
        int(np.prod(shape)), dtype=np.float32).reshape(shape)


class Sender:
    """Sends requests with async_infer and collects them in completion order."""

    def __init__(self, client: grpcclient.InferenceServerClient, model: str) -> None:
        self.client, self.model = client, model
        self.inputs: list[np.ndarray] = []
        self._done: queue.Queue[Done] = queue.Queue()

    def _tensor(self, array: np.ndarray) -> tuple[int, grpcclient.InferInput]:
        self.inputs.append(array)
        tensor = grpcclient.InferInput("INPUT0", list(array.shape), "FP32")
        tensor.set_data_from_numpy(array)
        return len(self.inputs) - 1, tensor

    def send(self, array: np.ndarray, **kwargs) -> None:
        index, tensor = self._tensor(array)

        def callback(result, error):
            output = None if result is None else result.as_numpy("OUTPUT0")
            self._done.put(Done(index, output, error))

        self.client.async_infer(self.model, [tensor], callback, **kwargs)

    def send_all(self, arrays: list[np.ndarray], gap: float = GAP_S) -> None:
        for i, array in enumerate(arrays):
            if i:
                time.sleep(gap)
            self.send(array)

    def wait(self, count: int | None = None) -> list[Done]:
        """The next `count` (default: all outstanding) results, in completion order."""
        count = len(self.inputs) if count is None else count
        return [self._done.get(timeout=RESULT_TIMEOUT_S) for _ in range(count)]

    def assert_correct(self, done: Done) -> None:
        assert done.error is None, done.error
        np.testing.assert_array_equal(done.output, self.inputs[done.index])


class StreamSender(Sender):
    """The same over one ModelStreamInfer stream (its own connection), for the tests that
    assert completion order: responses on separate RPCs may pass each other on the way back,
    while one stream returns them in the order the server completed them."""

    def __init__(self, url: str, model: str) -> None:
        super().__init__(grpcclient.InferenceServerClient(url), model)
        self.client.start_stream(self._on_response)

    def __enter__(self) -> "StreamSender":
        return self

    def __exit__(self, *exc) -> None:
        self.client.stop_stream()
        self.client.close()

    def _on_response(self, result, error) -> None:
        if error is not None:  # a stream error does not say which request it answers
            self._done.put(Done(-1, None, error))
        else:
            self._done.put(Done(int(result.get_response().id), result.as_numpy("OUTPUT0"), None))

    def send(self, array: np.ndarray, **kwargs) -> None:
        index, tensor = self._tensor(array)
        self.client.async_stream_infer(self.model, [tensor], request_id=str(index), **kwargs)


def statistics(client, model: str, settled: int = 0):
    """The model's statistics; with `settled`, once that many requests are counted in them."""
    return settled_statistics(client, model, settled, timeout=RESULT_TIMEOUT_S)


def assert_stats(stats, *, batches: dict[int, int], success: int, fail: int = 0) -> None:
    assert batch_counts(stats) == batches
    assert stats.execution_count == sum(batches.values())
    assert stats.inference_count == sum(size * n for size, n in batches.items())
    assert stats.inference_stats.success.count == success
    assert stats.inference_stats.fail.count == fail


# --- scenarios ----------------------------------------------------------------------------

def test_preferred_size_is_sent_before_the_rest(client):
    """preferred [2, 4]: three batch-1 requests go as 2 then 1, never as one batch of 3."""
    sender = Sender(client, "preferred")
    sender.send_all([data(i) for i in range(3)], gap=0)
    done = sender.wait()
    for d in done:
        sender.assert_correct(d)
    assert_stats(statistics(client, "preferred", settled=3), batches={2: 1, 1: 1}, success=3)


def test_max_queue_delay_waits_for_a_fuller_batch(client):
    """No preferred size reachable (default [8]): the batcher waits the 200 ms delay."""
    sender = Sender(client, "queue_delay")
    sender.send_all([data(i) for i in range(3)], gap=0)
    for d in sender.wait():
        sender.assert_correct(d)
    stats = statistics(client, "queue_delay", settled=3)
    assert_stats(stats, batches={3: 1}, success=3)
    queue_stats = stats.inference_stats.queue
    assert queue_stats.count == 3
    assert queue_stats.ns / queue_stats.count >= 150e6  # nanoseconds


def test_requests_are_never_split_across_batches(client):
    """Batch sizes 3, 3, 3 under max_batch_size 8: 6 then 3, not 8 then 1."""
    sender = Sender(client, "max_size")
    sender.send_all([data(i, (3, 4)) for i in range(3)], gap=0)
    for d in sender.wait():
        sender.assert_correct(d)
    assert_stats(statistics(client, "max_size", settled=3), batches={6: 1, 3: 1}, success=3)


def test_different_shapes_end_a_batch(server, client):
    """[1,2], [1,2], [1,3] in that order: the third's shape differs, so 2 then 1."""
    with StreamSender(server.grpc_url, "shapes") as sender:
        sender.send_all([data(0, (1, 2)), data(1, (1, 2)), data(2, (1, 3))])
        done = sender.wait()
    for d in done:
        sender.assert_correct(d)
    assert done[-1].index == 2  # the batch of two ran first
    assert_stats(statistics(client, "shapes", settled=3), batches={2: 1, 1: 1}, success=3)


def test_ragged_input_batches_different_shapes_together(client):
    """allow_ragged_batch: the same three requests form one batch of 3.

    A ragged input is gathered as the elements end to end (1-D, 2 + 2 + 3 = 7 values), which
    is how Triton's backends receive one too; a rank-2 ONNX model cannot take that, so the
    batch fails in ONNX Runtime. A request run alone keeps its own [1, n] shape and would
    succeed, so all three failing with the rank error proves they ran as one batch. As in
    Triton's backends, a batch whose responses all failed reports no batch statistics and no
    execution: only fail.count shows it.
    """
    sender = Sender(client, "ragged")
    sender.send_all([data(0, (1, 2)), data(1, (1, 2)), data(2, (1, 3))])
    done = sender.wait()
    for d in done:
        assert d.error is not None, d.output
        assert "Invalid rank for input: INPUT0 Got: 1 Expected: 2" in d.error.message()
    stats = statistics(client, "ragged", settled=3)
    assert_stats(stats, batches={}, success=0, fail=3)


def test_higher_priority_is_served_first(server, client):
    """Two requests at the default level 2, then one at level 1: the level-1 one runs first."""
    with StreamSender(server.grpc_url, "priority") as sender:
        sender.send(data(0))
        time.sleep(GAP_S)
        sender.send(data(1))
        time.sleep(GAP_S)
        sender.send(data(2), priority=1)
        done = sender.wait()
    for d in done:
        sender.assert_correct(d)
    assert [d.index for d in done] == [2, 0, 1]
    assert_stats(statistics(client, "priority", settled=3), batches={1: 3}, success=3)


TIMEOUT_WAIT_S = 0.1


def _send_two_timing_out_then_one(sender: Sender) -> None:
    sender.send(data(0), timeout=1000)  # µs: shorter than the 1 s default, so it applies
    time.sleep(GAP_S)
    sender.send(data(1), timeout=1000)
    time.sleep(TIMEOUT_WAIT_S)  # both expire while the batcher is held (no timeouts applied)
    sender.send(data(2))


def _assert_two_waited(duration) -> None:
    """Precondition, read back from the server: the two timed requests were queued through
    the wait (else the host stalled them past the third, and the test proves nothing)."""
    assert duration.ns >= 2 * 0.8 * TIMEOUT_WAIT_S * 1e9, (
        f"the timed requests were not queued before the third: {duration}")


def test_timed_out_requests_are_rejected(client):
    sender = Sender(client, "timeout_reject")
    _send_two_timing_out_then_one(sender)
    done = {d.index: d for d in sender.wait()}
    stats = statistics(client, "timeout_reject", settled=3)
    _assert_two_waited(stats.inference_stats.fail)  # a rejection counts its queue time there
    for index in (0, 1):
        error = done[index].error
        assert error is not None
        assert error.status() == "StatusCode.UNAVAILABLE"
        assert "Request timeout expired" in error.message()
    sender.assert_correct(done[2])
    assert_stats(stats, batches={1: 1}, success=1, fail=2)


def test_timed_out_requests_are_delayed_behind_the_others(server, client):
    with StreamSender(server.grpc_url, "timeout_delay") as sender:
        _send_two_timing_out_then_one(sender)
        done = sender.wait()
    stats = statistics(client, "timeout_delay", settled=3)
    _assert_two_waited(stats.inference_stats.queue)
    for d in done:
        sender.assert_correct(d)
    assert [d.index for d in done] == [2, 0, 1]
    assert_stats(stats, batches={1: 3}, success=3)


def test_queue_limit_refuses_and_stop_flushes_the_held(tmp_path):
    """max_queue_size 2: the third is refused at once; the two held ones still run on stop.

    A short --exit-timeout-secs keeps the test quick: held requests must be answered on stop
    however short the grace is, since stopping runs them at once.
    """
    repository = tmp_path / "repo"
    build_model(repository, "queue_limit", QUEUE_LIMIT)
    own = start_server([repository], tmp_path / "queue_limit.log", "--exit-timeout-secs", "3",
                       env=HOLD)
    try:
        with grpcclient.InferenceServerClient(own.grpc_url) as c:
            sender = Sender(c, "queue_limit")
            sender.send(data(0))
            time.sleep(GAP_S)
            sender.send(data(1))
            time.sleep(GAP_S)
            sender.send(data(2))
            refused = sender.wait(1)[0]  # the only one that can finish while held
            assert refused.index == 2
            assert refused.error is not None
            assert refused.error.status() == "StatusCode.UNAVAILABLE"
            assert "Exceeds maximum queue size" in refused.error.message()
            stats = statistics(c, "queue_limit")
            assert stats.execution_count == 0 and stats.inference_stats.success.count == 0

            assert own.stop() == 0
            held = sender.wait(2)
    finally:
        own.stop()
    assert sorted(d.index for d in held) == [0, 1]
    for d in held:
        sender.assert_correct(d)


def test_http_statistics_match_grpc(server, client):
    sender = Sender(client, "http_stats")
    sender.send_all([data(i) for i in range(3)], gap=0)
    for d in sender.wait():
        sender.assert_correct(d)
    grpc_stats = statistics(client, "http_stats", settled=3)
    assert_stats(grpc_stats, batches={2: 1, 1: 1}, success=3)

    def get(path: str) -> dict:
        with urllib.request.urlopen(f"http://{server.http_url}{path}", timeout=10) as response:
            assert response.status == 200
            return json.loads(response.read())

    one = get("/v2/models/http_stats/stats")
    assert len(one["model_stats"]) == 1
    http_stats = json_format.ParseDict(one["model_stats"][0], service_pb2.ModelStatistics())
    assert http_stats == grpc_stats

    listed = get("/v2/models/stats")
    assert {entry["name"] for entry in listed["model_stats"]} == set(MODELS)
    entry = next(e for e in listed["model_stats"] if e["name"] == "http_stats")
    assert json_format.ParseDict(entry, service_pb2.ModelStatistics()) == grpc_stats
