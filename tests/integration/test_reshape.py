"""Triton's `reshape` with a real server: the model sees the reshape's shape, clients send and
receive the `dims` shape. Two ONNX models: one whose tensors are a scalar per batch row
(auto-complete writes dims [1] with an empty reshape), one with an explicit reshape whose
variable dimension carries over; both batched by the dynamic batcher."""

from __future__ import annotations

import numpy as np
import onnx
import pytest
import tritonclient.grpc as grpcclient
from onnx import TensorProto, helper

from conftest import batch_counts, send_concurrently, settled_statistics, start_server, tensor

# Y = X * 2 over X [batch] (a scalar per row).
def scalar_rows_model() -> onnx.ModelProto:
    two = helper.make_tensor("two", TensorProto.FLOAT, [], [2.0])
    graph = helper.make_graph(
        [helper.make_node("Mul", ["X", "two"], ["Y"])], "scalar_rows",
        [helper.make_tensor_value_info("X", TensorProto.FLOAT, ["batch"])],
        [helper.make_tensor_value_info("Y", TensorProto.FLOAT, ["batch"])], [two])
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])


# Y = each 2x2 block of X transposed: X, Y [batch, n, 2, 2].
def blocks_model() -> onnx.ModelProto:
    graph = helper.make_graph(
        [helper.make_node("Transpose", ["X"], ["Y"], perm=[0, 1, 3, 2])], "blocks",
        [helper.make_tensor_value_info("X", TensorProto.FLOAT, ["batch", "n", 2, 2])],
        [helper.make_tensor_value_info("Y", TensorProto.FLOAT, ["batch", "n", 2, 2])])
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])


BLOCKS_CONFIG = """
name: "blocks"
platform: "onnxruntime_onnx"
max_batch_size: 8
input [ { name: "X" data_type: TYPE_FP32 dims: [ -1, 4 ] reshape: { shape: [ -1, 2, 2 ] } } ]
output [ { name: "Y" data_type: TYPE_FP32 dims: [ -1, 4 ] reshape: { shape: [ -1, 2, 2 ] } } ]
dynamic_batching { }
"""


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    repository = tmp_path_factory.mktemp("reshape_models")
    for name, model in (("scalar_rows", scalar_rows_model()), ("blocks", blocks_model())):
        (repository / name / "1").mkdir(parents=True)
        onnx.save(model, repository / name / "1" / "model.onnx")
    (repository / "blocks" / "config.pbtxt").write_text(BLOCKS_CONFIG)
    process = start_server([repository], tmp_path_factory.mktemp("logs") / "reshape.log",
                           env={"TRITONSERVER_DELAY_SCHEDULER": "3"})
    yield process
    process.stop()


def test_auto_completed_scalar_rows_are_served_as_dims_one(server):
    with grpcclient.InferenceServerClient(server.grpc_url) as c:
        config = c.get_model_config("scalar_rows").config
        assert list(config.input[0].dims) == [1] and config.input[0].HasField("reshape")
        rows = [np.array([[1.5]], np.float32), np.array([[2.0], [-3.0]], np.float32),
                np.array([[0.25]], np.float32)]
        results = send_concurrently(c, "scalar_rows", [[tensor(grpcclient, "X", r, "FP32")]
                                                       for r in rows])
        for row, (result, error) in zip(rows, results):
            assert error is None, error
            assert result.get_output("Y").shape == list(row.shape)
            np.testing.assert_array_equal(result.as_numpy("Y"), row * 2)
        assert batch_counts(settled_statistics(c, "scalar_rows", 3)) == {4: 1}


def test_variable_dimensions_carry_through_the_reshape(server):
    with grpcclient.InferenceServerClient(server.grpc_url) as c:
        flat = [np.arange(12, dtype=np.float32).reshape(1, 3, 4) + 100 * i for i in range(3)]
        results = send_concurrently(c, "blocks", [[tensor(grpcclient, "X", x, "FP32")]
                                                  for x in flat])
        for x, (result, error) in zip(flat, results):
            assert error is None, error
            # The model sees [1, 3, 2, 2]; the client gets its dims [-1, 4] back: [1, 3, 4].
            expected = x.reshape(1, 3, 2, 2).transpose(0, 1, 3, 2).reshape(1, 3, 4)
            assert result.get_output("Y").shape == [1, 3, 4]
            np.testing.assert_array_equal(result.as_numpy("Y"), expected)
        assert batch_counts(settled_statistics(c, "blocks", 3)) == {3: 1}
