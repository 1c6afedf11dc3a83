"""ONNX Runtime on a GPU instance, served: the core copies each batch to the GPU and the
backend binds it in place (I/O binding). Runs where onnxruntime has CUDA and the core finds
a GPU; skips elsewhere."""

from __future__ import annotations

import shutil

import numpy as np
import onnxruntime as ort
import pytest
import tritonclient.grpc as grpcclient

from conftest import EXAMPLES, batch_counts, send_concurrently, settled_statistics, start_server, tensor
from pyserve.devices import gpu_count

pytestmark = pytest.mark.skipif(
    gpu_count() == 0 or "CUDAExecutionProvider" not in ort.get_available_providers(),
    reason="needs a GPU and onnxruntime-gpu")


def test_batched_requests_on_a_gpu_instance(tmp_path):
    repository = tmp_path / "models"
    shutil.copytree(EXAMPLES / "simple", repository / "simple_gpu")
    config = repository / "simple_gpu" / "config.pbtxt"
    config.write_text(config.read_text().replace('name: "simple"', 'name: "simple_gpu"')
                      + "instance_group [ { count: 1 kind: KIND_GPU gpus: [ 0 ] } ]\n"
                      + "dynamic_batching { }\n")
    server = start_server([repository], tmp_path / "gpu.log",
                          env={"TRITONSERVER_DELAY_SCHEDULER": "4"})
    try:
        with grpcclient.InferenceServerClient(server.grpc_url) as c:
            rows = [np.arange(16, dtype=np.int32).reshape(1, 16) * (i + 1) for i in range(4)]
            ones = np.ones((1, 16), np.int32)
            results = send_concurrently(c, "simple_gpu", [
                [tensor(grpcclient, "INPUT0", r, "INT32"), tensor(grpcclient, "INPUT1", ones, "INT32")]
                for r in rows])
            for row, (result, error) in zip(rows, results):
                assert error is None, error
                np.testing.assert_array_equal(result.as_numpy("OUTPUT0"), row + 1)
                np.testing.assert_array_equal(result.as_numpy("OUTPUT1"), row - 1)
            assert batch_counts(settled_statistics(c, "simple_gpu", 4)) == {4: 1}
    finally:
        server.stop()
