"""pyserve._core.Scheduler from Python: zero-copy views, batching, draining stop, errors."""

from __future__ import annotations

import threading

import numpy as np
import pytest

from pyserve import _core
from pyserve.datatypes import config_type, serialize_bytes
from pyserve.errors import ServerError


class Recorder:
    """execute/deliver/reject callbacks that remember what the core handed them."""

    def __init__(self, expected: int = 1) -> None:
        self.executed, self.delivered, self.rejected = [], [], []
        self.done = threading.Semaphore(0)
        self.expected = expected

    def execute(self, instance, ids, batch_sizes, inputs):
        x = inputs["X"]
        self.executed.append(dict(instance=instance, array=x.copy(), writeable=x.flags.writeable,
                                  address=x.__array_interface__["data"][0] if x.dtype != object else 0,
                                  thread=threading.get_ident()))
        return {"Y": x}

    def deliver(self, ids, sizes, inputs, outputs, error):
        self.delivered.append((list(ids), list(sizes), error))
        for _ in ids:
            self.done.release()

    def reject(self, ids, code, message):
        self.rejected.append((list(ids), code, message))
        for _ in ids:
            self.done.release()

    def scheduler(self, options: _core.SchedulerOptions) -> _core.Scheduler:
        return _core.Scheduler(options, self.execute, self.deliver, self.reject)

    def wait(self, count: int) -> None:
        for _ in range(count):
            assert self.done.acquire(timeout=10)


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


def test_single_request_is_a_read_only_view_of_the_enqueued_bytes():
    recorder = Recorder()
    scheduler = recorder.scheduler(_options())
    data = np.arange(6, dtype=np.float32).reshape(2, 3)
    scheduler.enqueue(42, [("X", config_type("FP32"), [2, 3], data)], batch_size=2)
    recorder.wait(1)
    scheduler.stop()
    (seen,) = recorder.executed
    np.testing.assert_array_equal(seen["array"], data)
    assert seen["address"] == data.__array_interface__["data"][0]  # no copy
    assert not seen["writeable"] and seen["thread"] != threading.get_ident()
    assert recorder.delivered == [([42], [2], None)]


def test_queued_requests_are_gathered_into_one_batch():
    recorder = Recorder()
    options = _options(batching=True)
    options.delay_scheduler_count = 3  # hold until all three are queued
    scheduler = recorder.scheduler(options)
    rows = [np.full((1, 4), i, dtype=np.int32) for i in range(3)]
    for i, row in enumerate(rows):
        scheduler.enqueue(i, [("X", config_type("INT32"), [1, 4], row)])
    recorder.wait(3)
    scheduler.stop()
    (seen,) = recorder.executed
    np.testing.assert_array_equal(seen["array"], np.concatenate(rows))
    assert recorder.delivered == [([0, 1, 2], [1, 1, 1], None)]
    stats = scheduler.statistics()
    assert stats["execution_count"] == 1 and stats["inference_count"] == 3
    assert [b["batch_size"] for b in stats["batch_stats"]] == [3]
    assert stats["inference_stats"]["success"]["count"] == 3


def test_bytes_inputs_arrive_as_object_arrays():
    recorder = Recorder()
    options = _options(batching=True)
    options.delay_scheduler_count = 2
    scheduler = recorder.scheduler(options)
    first = np.array([[b"a", b"bc"]], dtype=np.object_)
    second = np.array([[b"", "d\u00e9".encode()]], dtype=np.object_)
    payloads = [serialize_bytes(a) for a in (first, second)]  # alive until delivered
    for i, payload in enumerate(payloads):
        scheduler.enqueue(i, [("X", config_type("BYTES"), [1, 2], payload)])
    recorder.wait(2)
    scheduler.stop()
    assert recorder.executed[0]["array"].tolist() == [[b"a", b"bc"], [b"", "d\u00e9".encode()]]


def test_backend_errors_reach_deliver_and_count_as_failures():
    recorder = Recorder()

    def failing(instance, ids, batch_sizes, inputs):
        raise ValueError("boom")

    scheduler = _core.Scheduler(_options(), failing, recorder.deliver, recorder.reject)
    scheduler.enqueue(1, [("X", config_type("INT32"), [1], b"\0\0\0\0")])
    recorder.wait(1)
    scheduler.stop()
    ((ids, _, error),) = recorder.delivered
    assert ids == [1] and isinstance(error, ValueError) and str(error) == "boom"
    stats = scheduler.statistics()["inference_stats"]
    assert stats["fail"]["count"] == 1 and stats["success"]["count"] == 0


def test_stop_runs_every_accepted_request_then_refuses():
    recorder = Recorder()
    scheduler = recorder.scheduler(_options(instances=3))
    payload = b"\x00" * 4
    for i in range(300):
        scheduler.enqueue(i, [("X", config_type("INT32"), [1], payload)])
    scheduler.stop()
    assert sorted(i for ids, _, _ in recorder.delivered for i in ids) == list(range(300))
    assert scheduler.inflight_count == 0
    with pytest.raises(ServerError) as error:
        scheduler.enqueue(7, [("X", config_type("INT32"), [1], payload)])
    assert error.value.code.value == "UNAVAILABLE"


def test_bad_instance_count_is_an_invalid_argument():
    options = _options()
    options.instance_count = 0
    options.instance_devices = []
    with pytest.raises(ServerError) as error:
        Recorder().scheduler(options)
    assert error.value.code.value == "INVALID_ARG"


def test_host_memory_pool_reports_usage():
    usage = _core.host_memory_usage()
    assert set(usage) == {"pinned", "cached_bytes", "in_use_bytes", "allocations"}
    assert usage["pinned"] == (_core.cuda_device_count() > 0)


def test_pending_counts_queued_requests_not_executing_ones():
    started, release = threading.Event(), threading.Event()

    def execute(instance, ids, batch_sizes, inputs):
        started.set()
        release.wait(10)
        return {}

    recorder = Recorder()
    scheduler = _core.Scheduler(_options(), execute, recorder.deliver, recorder.reject)
    payload = b"\0" * 4
    scheduler.enqueue(1, [("X", config_type("INT32"), [1], payload)])
    assert started.wait(10)
    for request_id in (2, 3):
        scheduler.enqueue(request_id, [("X", config_type("INT32"), [1], payload)])
    assert (scheduler.pending_count, scheduler.inflight_count) == (2, 3)
    release.set()
    recorder.wait(3)
    scheduler.stop()
    assert (scheduler.pending_count, scheduler.inflight_count) == (0, 0)

