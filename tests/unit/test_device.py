"""GPU memory as Python backends see it: the core's device copies of batch inputs
(DeviceTensor, through __cuda_array_interface__) and backend-owned DeviceBuffers. The CUDA
parts run where the core finds a GPU and skip elsewhere."""

from __future__ import annotations

import threading

import numpy as np
import pytest

from pyserve import _core
from pyserve.devices import gpu_count
from pyserve.errors import ErrorCode, ServerError

needs_gpu = pytest.mark.skipif(gpu_count() == 0, reason="the core finds no CUDA GPU here")


def test_device_tensor_speaks_the_cuda_array_interface():
    host = np.zeros((2, 3), np.float16)
    t = _core.DeviceTensor("X", 4096, host.nbytes, [2, 3], np.float16, 1, 77, host)
    assert t.__cuda_array_interface__ == {
        "shape": (2, 3), "typestr": "<f2", "data": (4096, False), "version": 3,
        "strides": None, "stream": 77}
    assert t.shape == (2, 3) and t.device == 1 and t.host is host
    # A null stream handle is the legacy default stream, which the interface spells 1.
    assert _core.DeviceTensor("X", 1, 2, [1], np.float16, 0, 0, host) \
        .__cuda_array_interface__["stream"] == 1


@pytest.mark.skipif(gpu_count() > 0, reason="checks the answer where CUDA is absent")
def test_device_memory_without_cuda_is_a_clear_error():
    with pytest.raises(ServerError) as error:
        _core.DeviceBuffer(0, 16)
    assert error.value.code == ErrorCode.UNAVAILABLE and "CUDA is not available" in str(error.value)


@needs_gpu
def test_device_buffer_round_trip_and_bounds():
    data = np.arange(1000, dtype=np.float32)
    buffer = _core.DeviceBuffer(0, data.nbytes)
    buffer.copy_from_host(data)
    back = np.empty_like(data)
    buffer.copy_to_host(back)
    np.testing.assert_array_equal(back, data)
    with pytest.raises(ValueError, match="does not fit"):
        buffer.copy_to_host(np.empty(1001, np.float32))
    with pytest.raises(ValueError, match="C-contiguous"):
        buffer.copy_from_host(np.zeros((20, 50), np.float32)[:, ::2])


@needs_gpu
def test_gpu_instance_gets_the_batch_on_its_device():
    """The scheduler copies a batch to the instance's GPU on its stream; the executor sees a
    DeviceTensor whose device bytes equal the host batch (read back through torch's use of
    __cuda_array_interface__, which waits on the stream)."""
    torch = pytest.importorskip("torch")
    if not torch.cuda.is_available():
        pytest.skip("torch has no CUDA here")
    seen, done = [], threading.Semaphore(0)

    def execute(instance, sizes, inputs, requests):
        x = inputs["X"]
        seen.append((type(x).__name__, x.device, torch.as_tensor(x, device="cuda").cpu().numpy(),
                     np.array(x.host), type(inputs["S"]).__name__))
        return {"Y": x.host}

    def deliver(results):
        for _, _, error, _ in results:
            assert error is None, error
            done.release()

    options = _core.SchedulerOptions()
    options.model_name = "m"
    options.instance_count = 1
    options.instance_devices = [0]
    options.device_inputs = True
    options.dynamic_batching = True
    options.batching.max_batch_size = 8
    options.delay_scheduler_count = 3  # one batch of all three
    spec = _core.ModelSpec("m", 1, 8, [("X", "FP32", [4], False, None),
                                       ("S", "BYTES", [1], False, None)],
                           [("Y", "FP32", [4], False, None)])
    model = _core.Model(spec, options, execute)
    sink = _core.PythonSink(deliver)
    rows = [np.full((1, 4), i, np.float32) for i in range(3)]
    strings = b"\x01\x00\x00\x00a"
    for i, row in enumerate(rows):
        model.submit(i + 1, sink, [("X", "FP32", [1, 4], row.tobytes()),
                                   ("S", "BYTES", [1, 1], strings)])
    for _ in rows:
        assert done.acquire(timeout=10)
    model.stop()
    kind, device, on_device, host, string_kind = seen[0]
    assert (kind, device, string_kind) == ("DeviceTensor", 0, "ndarray")
    np.testing.assert_array_equal(on_device, np.concatenate(rows))
    np.testing.assert_array_equal(host, np.concatenate(rows))
