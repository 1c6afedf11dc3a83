"""pyserve._core.Scheduler from Python: zero-copy views, instances, draining stop, errors."""

from __future__ import annotations

import threading

import numpy as np
import pytest

from pyserve import _core
from pyserve.datatypes import config_type
from pyserve.errors import ServerError


def test_executor_sees_read_only_views_of_the_enqueued_bytes():
    seen = {}
    done = threading.Event()

    def execute(instance, request_ids, inputs):
        array = inputs["X"]
        seen.update(ids=request_ids, instance=instance, array=array.copy(),
                    address=array.__array_interface__["data"][0],
                    writeable=array.flags.writeable, thread=threading.get_ident())
        done.set()

    scheduler = _core.Scheduler("m", 1, execute)
    data = np.arange(6, dtype=np.float32).reshape(2, 3)
    scheduler.enqueue(42, [("X", config_type("FP32"), [2, 3], data)])
    assert done.wait(10)
    scheduler.stop()
    assert seen["ids"] == [42] and seen["instance"] == 0
    np.testing.assert_array_equal(seen["array"], data)
    assert seen["address"] == data.__array_interface__["data"][0]  # no copy
    assert not seen["writeable"]
    assert seen["thread"] != threading.get_ident()


def test_stop_runs_every_accepted_request_on_all_instances():
    ran, lock = [], threading.Lock()

    def execute(instance, request_ids, inputs):
        with lock:
            ran.append((instance, request_ids[0]))

    scheduler = _core.Scheduler("m", 3, execute)
    payload = b"\x00" * 4
    for i in range(500):
        scheduler.enqueue(i, [("X", config_type("INT32"), [1], payload)])
    scheduler.stop()
    assert sorted(r for _, r in ran) == list(range(500))
    assert scheduler.inflight_count == 0
    with pytest.raises(ServerError) as error:
        scheduler.enqueue(7, [("X", config_type("INT32"), [1], payload)])
    assert error.value.code.value == "UNAVAILABLE"


def test_bad_instance_count_is_an_invalid_argument():
    with pytest.raises(ServerError) as error:
        _core.Scheduler("m", 0, lambda *a: None)
    assert error.value.code.value == "INVALID_ARG"
