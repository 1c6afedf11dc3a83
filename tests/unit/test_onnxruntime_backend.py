"""The ONNX Runtime backend on its own: execution providers by instance kind, outputs."""

from __future__ import annotations

import numpy as np
import onnxruntime as ort
import pytest

from conftest import EXAMPLES
from pyserve.backends import InstanceSpec, ModelContext, backend_class
from pyserve.config import load_config, normalize
from pyserve.devices import gpu_count
from pyserve.errors import ServerError


def _context(gpus: int = 0) -> ModelContext:
    config = normalize(load_config(EXAMPLES / "simple"), "simple", gpu_count=gpus)
    return ModelContext("simple", 1, config, EXAMPLES / "simple" / "1")


def test_cpu_instance_runs_on_the_cpu_provider():
    backend = backend_class("onnxruntime")(_context(), InstanceSpec(0, "CPU"))
    a = np.arange(32, dtype=np.int32).reshape(2, 16)
    outputs = backend.execute({"INPUT0": a, "INPUT1": a}, [2])
    np.testing.assert_array_equal(outputs["OUTPUT0"], a + a)
    np.testing.assert_array_equal(outputs["OUTPUT1"], a - a)
    assert backend._session.get_providers() == ["CPUExecutionProvider"]
    backend.close()


def test_missing_model_file_is_a_clear_error(tmp_path):
    context = _context()
    context = ModelContext("simple", 2, context.config, tmp_path)
    with pytest.raises(ServerError) as error:
        backend_class("onnxruntime")(context, InstanceSpec(0, "CPU"))
    assert "model.onnx" in error.value.message


@pytest.mark.skipif(gpu_count() == 0 or "CUDAExecutionProvider" not in ort.get_available_providers(),
                    reason="needs a GPU and onnxruntime-gpu")
def test_gpu_instance_selects_the_cuda_provider():
    backend = backend_class("onnxruntime")(_context(gpu_count()), InstanceSpec(0, "GPU", 0))
    assert backend._session.get_providers()[0] == "CUDAExecutionProvider"
    a = np.ones((1, 16), np.int32)
    np.testing.assert_array_equal(backend.execute({"INPUT0": a, "INPUT1": a}, [1])["OUTPUT0"], a * 2)
    backend.close()
