"""pyserve._core.Model from Python: zero-copy inputs, batching, per-request outputs, native
checks, ordering, draining stop, errors."""

from __future__ import annotations

import threading

import numpy as np
import pytest

from pyserve import _core
from pyserve.datatypes import serialize_bytes
from pyserve.errors import ServerError


class Recorder:
    """The backend's execute and a sink's callback, remembering what the core handed them."""

    def __init__(self, execute=None) -> None:
        self.executed, self.delivered = [], []
        self.done = threading.Semaphore(0)
        self._execute = execute
        self.sink = _core.PythonSink(self.deliver)

    def execute(self, instance, batch_sizes, inputs, requests):
        if self._execute is not None:
            return self._execute(instance, batch_sizes, inputs, requests)
        x = inputs["X"]
        self.executed.append(dict(instance=instance, sizes=list(batch_sizes), array=x.copy(),
                                  writeable=x.flags.writeable, requests=requests,
                                  address=x.__array_interface__["data"][0] if x.dtype != object else 0,
                                  thread=threading.get_ident()))
        return {"Y": x}

    def deliver(self, results):
        for tag, outputs, error, final in results:
            assert final  # a model that is not decoupled answers each request once
            self.delivered.append((tag, outputs, error))
            self.done.release()

    def model(self, options: _core.SchedulerOptions, **spec) -> _core.Model:
        return _core.Model(_spec(**spec), options, self.execute)

    def wait(self, count: int) -> None:
        for _ in range(count):
            assert self.done.acquire(timeout=10)

    def outputs(self) -> dict:
        return {tag: {name: array for name, _, array in outputs or []}
                for tag, outputs, _ in self.delivered}


def _spec(datatype: str = "INT32", dims=(-1,), max_batch_size: int = 8, ordered: bool = False,
          info: bool = False, labels=None) -> _core.ModelSpec:
    return _core.ModelSpec("m", 1, max_batch_size, [("X", datatype, list(dims), False, None)],
                           [("Y", datatype, list(dims), False, None)], labels or {}, ordered, info)


def _options(instances: int = 1, batching: bool = False) -> _core.SchedulerOptions:
    options = _core.SchedulerOptions()
    options.model_name = "m"
    options.instance_count = instances
    options.instance_devices = [-1] * instances
    if batching:
        options.dynamic_batching = True
        options.batching.max_batch_size = 8
        options.batching.equal_shape_inputs = ["X"]
    return options


def _submit(model, recorder, tag, array, datatype="INT32", **kwargs):
    payload = serialize_bytes(array) if datatype == "BYTES" else array
    model.submit(tag, recorder.sink, [("X", datatype, list(array.shape), payload)], **kwargs)
    return payload


def test_single_request_is_a_read_only_view_of_the_submitted_bytes():
    recorder = Recorder()
    model = recorder.model(_options(), datatype="FP32", dims=(3,))
    data = np.arange(6, dtype=np.float32).reshape(2, 3)
    _submit(model, recorder, 42, data, "FP32")
    recorder.wait(1)
    model.stop()
    (seen,) = recorder.executed
    np.testing.assert_array_equal(seen["array"], data)
    assert seen["address"] == data.__array_interface__["data"][0]  # no copy
    assert not seen["writeable"] and seen["thread"] != threading.get_ident()
    assert seen["requests"] is None  # the spec did not ask for request info
    ((tag, outputs, error),) = recorder.delivered
    assert tag == 42 and error is None
    ((name, datatype, array),) = outputs
    assert (name, datatype) == ("Y", "FP32")
    np.testing.assert_array_equal(array, data)


def test_queued_requests_are_gathered_into_one_batch_and_split_per_request():
    recorder = Recorder()
    options = _options(batching=True)
    options.delay_scheduler_count = 3  # hold until all three are queued
    model = recorder.model(options, dims=(4,))
    rows = [np.full((i + 1, 4), i, dtype=np.int32) for i in range(3)]
    for i, row in enumerate(rows):
        _submit(model, recorder, i, row)
    recorder.wait(3)
    model.stop()
    (seen,) = recorder.executed
    np.testing.assert_array_equal(seen["array"], np.concatenate(rows))
    assert seen["sizes"] == [1, 2, 3]
    outputs = recorder.outputs()
    for i, row in enumerate(rows):
        np.testing.assert_array_equal(outputs[i]["Y"], row)
    stats = model.statistics()
    assert stats["execution_count"] == 1 and stats["inference_count"] == 6
    assert [b["batch_size"] for b in stats["batch_stats"]] == [6]
    assert stats["inference_stats"]["success"]["count"] == 3
    assert model.request_counts()["success"] == 3


def test_outputs_that_alias_the_gathered_batch_survive_the_next_batch():
    """The pooled batch buffer is reused after a batch: outputs must not point into it."""
    recorder = Recorder()
    options = _options(batching=True)
    options.delay_scheduler_count = 2
    model = recorder.model(options, dims=(4,))
    payloads = [_submit(model, recorder, tag, np.full((1, 4), tag, dtype=np.int32))
                for tag in range(4)]
    recorder.wait(4)
    model.stop()
    assert len(payloads) == 4
    for tag, outputs in recorder.outputs().items():
        np.testing.assert_array_equal(outputs["Y"], np.full((1, 4), tag, dtype=np.int32))


def test_bytes_inputs_arrive_as_object_arrays_and_outputs_are_split():
    recorder = Recorder()
    options = _options(batching=True)
    options.delay_scheduler_count = 2
    model = recorder.model(options, datatype="BYTES", dims=(2,))
    first = np.array([[b"a", b"bc"]], dtype=np.object_)
    second = np.array([[b"", "d\u00e9".encode()]], dtype=np.object_)
    payloads = [_submit(model, recorder, i, a, "BYTES") for i, a in enumerate((first, second))]
    recorder.wait(2)
    model.stop()
    assert len(payloads) == 2
    assert recorder.executed[0]["array"].tolist() == [[b"a", b"bc"], [b"", "d\u00e9".encode()]]
    outputs = recorder.outputs()
    assert outputs[0]["Y"].tolist() == [[b"a", b"bc"]]
    assert outputs[1]["Y"].tolist() == [[b"", "d\u00e9".encode()]]


def test_requests_are_checked_natively_with_tritons_texts():
    recorder = Recorder()
    model = recorder.model(_options(), dims=(4,))
    with pytest.raises(ServerError) as error:
        _submit(model, recorder, 1, np.zeros((1, 3), dtype=np.int32))
    assert error.value.code.value == "INVALID_ARG"
    assert error.value.message.startswith(
        "[request id: <id_unknown>] unexpected shape for input 'X' for model 'm'. "
        "Expected [-1,4], got [1,3].")
    with pytest.raises(ServerError) as error:
        _submit(model, recorder, 2, np.zeros((1, 4), dtype=np.int32), request_id="r7",
                outputs=[("Z", 0)])
    assert error.value.message == "unexpected inference output 'Z' for model 'm'"
    model.stop()
    assert recorder.delivered == [] and model.request_counts()["failure"] == 2


def test_non_contiguous_buffers_are_refused():
    recorder = Recorder()
    model = recorder.model(_options(), dims=(2,))
    strided = np.arange(8, dtype=np.int32).reshape(2, 4)[:, ::2]
    with pytest.raises(ServerError) as error:
        model.submit(1, recorder.sink, [("X", "INT32", [2, 2], memoryview(strided))])
    assert "not a contiguous buffer" in error.value.message
    model.stop()


def test_classification_and_requested_outputs():
    recorder = Recorder(lambda i, sizes, inputs, requests: {"Y": np.array(inputs["X"]) * 2})
    model = recorder.model(_options(), datatype="FP32", dims=(3,), labels={"Y": ["a", "b"]})
    payload = _submit(model, recorder, 1, np.array([[0.5, 3.0, 1.0]], dtype=np.float32),
                      "FP32", outputs=[("Y", 2)])
    recorder.wait(1)
    model.stop()
    assert payload is not None
    ((_, outputs, error),) = recorder.delivered
    ((name, datatype, array),) = outputs
    assert error is None and (name, datatype) == ("Y", "BYTES")
    assert array.tolist() == [[b"6.000000:1:b", b"2.000000:2"]]


def test_preserve_ordering_releases_responses_in_arrival_order():
    order = []
    gate = threading.Event()

    def execute(instance, sizes, inputs, requests):
        if instance == 0:
            gate.wait(10)  # the first request finishes last
        return {"Y": inputs["X"]}

    recorder = Recorder(execute)
    model = recorder.model(_options(instances=2), ordered=True, dims=(1,))
    payloads = [_submit(model, recorder, tag, np.array([[tag]], dtype=np.int32)) for tag in (1, 2)]
    threading.Timer(0.2, gate.set).start()
    recorder.wait(2)
    model.stop()
    order = [tag for tag, _, _ in recorder.delivered]
    assert order == [1, 2] and len(payloads) == 2


def test_request_info_reaches_backends_that_ask():
    recorder = Recorder()
    model = recorder.model(_options(), dims=(1,), info=True)
    payload = _submit(model, recorder, 5, np.ones((1, 1), dtype=np.int32), request_id="abc",
                      outputs=[("Y", 0)], parameters={"flag": True, "n": 3, "s": "x", "f": 0.5})
    recorder.wait(1)
    model.stop()
    assert payload is not None
    ((*info, cancellation),) = recorder.executed[0]["requests"]
    assert info == [5, "abc", {"flag": True, "n": 3, "s": "x", "f": 0.5}, ["Y"], 0, 0,
                    None]  # no sequence, no sender
    batch, index = cancellation  # whether the client went away, asked while the batch runs
    assert isinstance(batch, _core.BatchCancellation) and index == 0
    assert batch.is_cancelled(0) is False


def test_backend_errors_fail_the_batch_and_count_as_failures():
    def failing(instance, sizes, inputs, requests):
        raise ServerError("boom", "INTERNAL")

    recorder = Recorder(failing)
    model = recorder.model(_options())
    _submit(model, recorder, 1, np.zeros((1, 1), dtype=np.int32))
    recorder.wait(1)
    model.stop()
    ((tag, outputs, error),) = recorder.delivered
    assert tag == 1 and outputs is None and error == ("INTERNAL", "boom")
    stats = model.statistics()["inference_stats"]
    assert stats["fail"]["count"] == 1 and stats["success"]["count"] == 0
    assert model.request_counts()["failure"] == 1


def test_a_wrong_batch_dimension_fails_every_request_of_the_batch():
    recorder = Recorder(lambda i, sizes, inputs, requests: {"Y": np.zeros((1, 1), np.int32)})
    options = _options(batching=True)
    options.delay_scheduler_count = 2
    model = recorder.model(options, dims=(1,))
    payloads = [_submit(model, recorder, t, np.zeros((1, 1), dtype=np.int32)) for t in (1, 2)]
    recorder.wait(2)
    model.stop()
    assert len(payloads) == 2
    assert [error for _, _, error in recorder.delivered] == [
        ("INTERNAL", "model 'm' output 'Y' has batch dimension (1,), expected 2")] * 2


def test_stop_runs_every_accepted_request_then_refuses():
    recorder = Recorder()
    model = recorder.model(_options(instances=3))
    payload = np.zeros((1, 1), dtype=np.int32)
    for i in range(300):
        _submit(model, recorder, i, payload)
    model.stop()
    assert sorted(tag for tag, _, _ in recorder.delivered) == list(range(300))
    assert model.inflight_count == 0
    with pytest.raises(ServerError) as error:
        _submit(model, recorder, 7, payload)
    assert error.value.code.value == "UNAVAILABLE"


def test_bad_instance_count_is_an_invalid_argument():
    options = _options()
    options.instance_count = 0
    options.instance_devices = []
    with pytest.raises(ServerError) as error:
        Recorder().model(options)
    assert error.value.code.value == "INVALID_ARG"


def test_host_memory_pool_reports_usage():
    usage = _core.host_memory_usage()
    assert set(usage) == {"pinned", "cached_bytes", "in_use_bytes", "allocations"}
    assert usage["pinned"] == (_core.cuda_device_count() > 0)


def test_pending_counts_queued_requests_not_executing_ones():
    started, release = threading.Event(), threading.Event()

    def execute(instance, sizes, inputs, requests):
        started.set()
        release.wait(10)
        return {"Y": inputs["X"]}

    recorder = Recorder(execute)
    model = recorder.model(_options())
    payload = np.zeros((1, 1), dtype=np.int32)
    _submit(model, recorder, 1, payload)
    assert started.wait(10)
    for tag in (2, 3):
        _submit(model, recorder, tag, payload)
    assert (model.pending_count, model.inflight_count) == (2, 3)
    release.set()
    recorder.wait(3)
    model.stop()
    assert (model.pending_count, model.inflight_count) == (0, 0)


def test_a_stopped_model_is_freed():
    """stop() breaks the cycle runner -> model -> execute -> runner (issue: reload leak)."""
    import gc
    import weakref

    class Owner:
        def __init__(self):
            self.model = _core.Model(_spec(), _options(), self.execute)

        def execute(self, instance, sizes, inputs, requests):
            return {"Y": inputs["X"]}

    owner = Owner()
    ref = weakref.ref(owner)
    owner.model.stop()
    del owner
    gc.collect()
    assert ref() is None


def test_request_limits_are_set_by_name_and_reset_to_their_defaults():
    defaults = _core.request_limits()
    assert defaults["inputs"] == 4096 and defaults["elements"] == 2**36
    try:
        _core.set_request_limits({"inputs": 8, "rank": 3})
        assert _core.request_limits() == {**defaults, "inputs": 8, "rank": 3}
        _core.set_request_limits({})  # every limit not named takes its default
        assert _core.request_limits() == defaults
        with pytest.raises(KeyError, match="unknown request limit 'input'"):
            _core.set_request_limits({"input": 8})
        with pytest.raises(ValueError, match="at most 2\\^60"):  # byte sizes would wrap past it
            _core.set_request_limits({"elements": 2**61})
    finally:
        _core.set_request_limits({})
