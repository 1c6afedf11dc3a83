"""Process isolation's parts on their own: the shared-memory arena, what crosses the control
pipe, and an isolated instance driven directly (its child a real process)."""

from __future__ import annotations

import os
import textwrap
import threading
import time
from pathlib import Path

import numpy as np
import pytest

from conftest import child_pids
from pyserve.backends import InstanceSpec, ModelContext, backend_class, create_instance
from pyserve.backends.base import RequestInfo
from pyserve.backends.isolation import host, process_isolated
from pyserve.backends.isolation.arena import INITIAL_SIZE, Arena
from pyserve.backends.isolation.messages import (apply_object_states, detach_requests,
                                                 object_states, portable_error, restore_error)
from pyserve.config import normalize, parse_config
from pyserve.errors import ErrorCode, ServerError
from pyserve.torchserve.request import TorchServeError, TorchServeRequest


def test_arena_round_trips_numeric_and_bytes_tensors():
    arena, other = Arena.create("test"), None
    try:
        tensors = {
            "f32": np.arange(12, dtype=np.float32).reshape(3, 4),
            "f16": np.array([1.5, -2], np.float16),
            "bool": np.array([[True, False]]),
            "strided": np.arange(20, dtype=np.int64).reshape(4, 5)[:, ::2],  # not contiguous
            "empty": np.zeros((0, 3), np.int32),
            "bytes": np.array([[b"a\x00b", b""], [b"\xff", "text"]], dtype=np.object_),
        }
        descriptors, end = arena.write(tensors)
        other = Arena(os.dup(arena.fd))  # the child's mapping of the same memory
        read = other.read(descriptors, end)
        for name, array in tensors.items():
            assert read[name].shape == array.shape
            assert not read[name].flags.writeable
            if name == "bytes":
                assert read[name].tolist() == [[b"a\x00b", b""], [b"\xff", b"text"]]
            else:
                assert read[name].dtype == array.dtype
                np.testing.assert_array_equal(read[name], array)
        assert all(offset % 64 == 0 for _, _, _, offset, _ in descriptors)
    finally:
        arena.close()
        if other is not None:
            other.close()


def test_arena_grows_and_the_other_side_follows():
    arena = Arena.create("test")
    other = Arena(os.dup(arena.fd))
    try:
        big = np.arange(INITIAL_SIZE, dtype=np.float64)  # 8x the initial mapping
        descriptors, end = other.write({"big": big}, start=100)
        assert other.size >= end > INITIAL_SIZE
        np.testing.assert_array_equal(arena.read(descriptors, end)["big"], big)
        assert arena.size == end
    finally:
        arena.close()
        other.close()


def test_errors_cross_with_their_type_code_and_status():
    error = restore_error(portable_error(ServerError("no such thing", ErrorCode.NOT_FOUND)))
    assert type(error) is ServerError and error.code == ErrorCode.NOT_FOUND
    assert error.message == str(error) == "no such thing"
    ts = restore_error(portable_error(TorchServeError("Prediction failed", 503)))
    assert type(ts) is TorchServeError and ts.status == 503 and ts.code == ErrorCode.INTERNAL
    other = restore_error(portable_error(SystemExit(4)))
    assert other.code == ErrorCode.INTERNAL and other.message == "SystemExit: 4"


def test_attached_objects_cross_without_callables_and_their_changes_come_back():
    chunks = []
    original = TorchServeRequest({"body": b"x"}, {"explain": "False"}, "r1",
                                 on_chunk=lambda *a: chunks.append(a))
    infos = [RequestInfo("r1", {"k": 3, "ts": original}, ["output"])]
    detached = detach_requests(infos)
    copy = detached[0].parameters["ts"]
    assert copy is not original and copy.on_chunk is None and copy.parameters == {"body": b"x"}
    copy.body, copy.status = b"answer", 201  # what the handler did, in the child
    apply_object_states(infos, object_states(detached))
    assert original.body == b"answer" and original.status == 201
    assert original.on_chunk is not None


def _config(extra: str = ""):
    return normalize(parse_config(
        'backend: "python" max_batch_size: 8 '
        'input [{ name: "X" data_type: TYPE_FP32 dims: [ 2 ] }] '
        'output [{ name: "Y" data_type: TYPE_FP32 dims: [ 2 ] }] ' + extra), "m")


ISOLATED = 'parameters { key: "isolation" value { string_value: "process" } }'


def test_the_isolation_parameter_is_checked():
    assert not process_isolated(_config())
    assert not process_isolated(_config(ISOLATED.replace("process", "none")))
    assert process_isolated(_config(ISOLATED))
    with pytest.raises(ServerError, match="must be one of none, process, not 'thread'"):
        process_isolated(_config(ISOLATED.replace("process", "thread")))


def test_a_backend_without_isolation_refuses_it(tmp_path):
    config = _config(ISOLATED)
    config.backend = "onnxruntime"
    with pytest.raises(ServerError, match="cannot run in a child process") as error:
        create_instance(backend_class("onnxruntime"), ModelContext("m", 1, config, tmp_path),
                        InstanceSpec(0, "CPU"))
    assert error.value.code == ErrorCode.UNSUPPORTED


# Answers with its PID; hangs in execute for a negative input (after leaving a file named
# "hung" beside itself), and always in finalize.
HANGING = '''
import os
import time
from pathlib import Path

import triton_python_backend_utils as pb_utils


class TritonPythonModel:
    def execute(self, requests):
        if requests[0].get_input_tensor_by_name("X").as_numpy()[0, 0] < 0:
            (Path(__file__).parent / "hung").touch()
            time.sleep(600)
        return [pb_utils.InferenceResponse([pb_utils.Tensor(
                    "Y", r.get_input_tensor_by_name("X").as_numpy() + os.getpid())])
                for r in requests]

    def finalize(self):
        time.sleep(600)
'''


@pytest.fixture
def hanging(tmp_path, monkeypatch):
    """An isolated instance of HANGING, stopped within half a second, and its child's PID."""
    monkeypatch.setattr(host, "STOP_TIMEOUT_S", 0.5)
    version_dir = tmp_path / "m" / "1"
    version_dir.mkdir(parents=True)
    (version_dir / "model.py").write_text(textwrap.dedent(HANGING))
    backend = create_instance(backend_class("python"),
                              ModelContext("m", 1, _config(ISOLATED), version_dir),
                              InstanceSpec(0, "CPU"))
    results = backend.execute({"X": np.zeros((2, 2), np.float32)}, [1, 1],
                              [RequestInfo(), RequestInfo()])
    pid = int(results[0]["Y"][0, 0])
    assert pid != os.getpid() and Path(f"/proc/{pid}").exists()
    yield backend, pid, version_dir / "hung"
    backend.close()


def test_a_child_that_does_not_finish_closing_is_killed(hanging, caplog):
    backend, pid, _ = hanging
    started = time.monotonic()
    backend.close()
    assert time.monotonic() - started < 5
    assert not Path(f"/proc/{pid}").exists()  # killed and reaped
    backend.close()  # again: nothing left to stop, nothing logged
    assert not [r for r in caplog.records if r.levelname == "ERROR"]


def test_closing_during_a_hung_batch_kills_the_child_and_fails_the_batch(hanging):
    backend, pid, hung = hanging
    before = child_pids(os.getpid()) - {pid}
    failed = []

    def run() -> None:
        with pytest.raises(ServerError) as error:
            backend.execute({"X": -np.ones((1, 2), np.float32)}, [1], [RequestInfo()])
        failed.append(error.value)

    worker = threading.Thread(target=run)
    worker.start()
    deadline = time.monotonic() + 30
    while not hung.exists() and time.monotonic() < deadline:  # the batch is in the child
        time.sleep(0.01)
    backend.close()
    worker.join(10)
    assert not worker.is_alive()
    assert "died while executing: killed by signal SIGKILL" in failed[0].message
    assert not Path(f"/proc/{pid}").exists()
    time.sleep(0.5)
    assert child_pids(os.getpid()) <= before  # and no new child was started after the close

