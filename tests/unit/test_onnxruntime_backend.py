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


@pytest.mark.skipif(gpu_count() == 0 or "CUDAExecutionProvider" not in ort.get_available_providers(),
                    reason="needs a GPU and onnxruntime-gpu")
def test_gpu_instance_binds_device_inputs_in_place():
    """I/O binding: inputs the core put on the GPU are read there, not copied back first."""
    from pyserve import _core

    backend = backend_class("onnxruntime")(_context(gpu_count()), InstanceSpec(0, "GPU", 0))
    assert backend.device_inputs
    a = np.arange(48, dtype=np.int32).reshape(3, 16)
    b = np.full((3, 16), 5, np.int32)
    buffers, inputs = [], {}
    for name, host in (("INPUT0", a), ("INPUT1", b)):
        buffer = _core.DeviceBuffer(0, host.nbytes)
        buffer.copy_from_host(host)
        buffers.append(buffer)
        # A host view that disagrees with the device bytes shows which one was read.
        inputs[name] = _core.DeviceTensor(name, buffer.ptr, host.nbytes, list(host.shape),
                                          host.dtype, 0, 0, np.zeros_like(host))
    outputs = backend.execute(inputs, [1, 2])
    np.testing.assert_array_equal(outputs["OUTPUT0"], a + b)
    np.testing.assert_array_equal(outputs["OUTPUT1"], a - b)
    backend.close()


def test_bad_session_parameter_fails_the_load():
    context = _context()
    context.config.parameters["intra_op_thread_count"].string_value = "two"
    with pytest.raises(ServerError, match="failed to convert 'two' to an integer"):
        backend_class("onnxruntime")(context, InstanceSpec(0, "CPU"))


def test_unavailable_accelerator_is_a_clear_load_error():
    context = _context()
    context.config.optimization.execution_accelerators.cpu_execution_accelerator.add(name="openvino")
    with pytest.raises(ServerError, match="OpenVINOExecutionProvider") as error:
        backend_class("onnxruntime")(context, InstanceSpec(0, "CPU"))
    assert error.value.code.value == "UNAVAILABLE"


def test_model_directory_with_external_data(tmp_path):
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    weight = numpy_helper.from_array(np.arange(16 * 16, dtype=np.float32).reshape(16, 16), "w")
    graph = helper.make_graph(
        [helper.make_node("MatMul", ["x", "w"], ["y"])], "g",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["b", 16])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["b", 16])], [weight])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    directory = tmp_path / "1" / "model.onnx"  # Triton's form: a directory named model.onnx
    directory.mkdir(parents=True)
    onnx.save(model, str(directory / "model.onnx"), save_as_external_data=True,
              all_tensors_to_one_file=True, location="weights.bin", size_threshold=0)
    assert (directory / "weights.bin").stat().st_size == 16 * 16 * 4
    config = normalize(parse_config_for("ext", 'platform: "onnxruntime_onnx" max_batch_size: 4 '
                                        'input { name: "x" data_type: TYPE_FP32 dims: [16] } '
                                        'output { name: "y" data_type: TYPE_FP32 dims: [16] }'),
                       "ext")
    backend = backend_class("onnxruntime")(ModelContext("ext", 1, config, tmp_path / "1"),
                                           InstanceSpec(0, "CPU"))
    x = np.ones((2, 16), np.float32)
    np.testing.assert_allclose(backend.execute({"x": x}, [2])["y"],
                               x @ np.arange(256, dtype=np.float32).reshape(16, 16))


def parse_config_for(name: str, text: str):
    from pyserve.config import parse_config

    return parse_config(f'name: "{name}" ' + text)


def save_onnx(graph, version_dir) -> None:
    import onnx
    from onnx import helper

    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    version_dir.mkdir()
    onnx.save(model, str(version_dir / "model.onnx"))


def test_bf16_inputs_and_outputs_travel_as_raw_bits(tmp_path):
    import ml_dtypes
    from onnx import TensorProto, helper

    graph = helper.make_graph(
        [helper.make_node("Identity", ["x"], ["y"])], "g",  # ORT's CPU kernels do little BF16
        [helper.make_tensor_value_info("x", TensorProto.BFLOAT16, ["b", 4])],
        [helper.make_tensor_value_info("y", TensorProto.BFLOAT16, ["b", 4])])
    save_onnx(graph, tmp_path / "1")
    config = normalize(parse_config_for("bf", 'platform: "onnxruntime_onnx" max_batch_size: 4 '
                                       'input { name: "x" data_type: TYPE_BF16 dims: [4] } '
                                       'output { name: "y" data_type: TYPE_BF16 dims: [4] }'), "bf")
    backend = backend_class("onnxruntime")(ModelContext("bf", 1, config, tmp_path / "1"),
                                           InstanceSpec(0, "CPU"))
    x = np.array([[1.5, -2.0, 0.25, 3.0]], dtype=ml_dtypes.bfloat16)
    y = backend.execute({"x": x.view(np.uint16)}, [1])["y"]
    assert y.dtype == np.uint16
    np.testing.assert_array_equal(y.view(ml_dtypes.bfloat16), x)


@pytest.mark.skipif(gpu_count() == 0 or "CUDAExecutionProvider" not in ort.get_available_providers(),
                    reason="needs a GPU and onnxruntime-gpu")
def test_gpu_instance_with_strings_takes_the_host_path(tmp_path):
    """ORT's Python I/O binding cannot bind strings: such a model is fed from the host."""
    from onnx import TensorProto, helper

    graph = helper.make_graph(
        [helper.make_node("Identity", ["text"], ["same"]), helper.make_node("Neg", ["x"], ["y"])],
        "g", [helper.make_tensor_value_info("text", TensorProto.STRING, ["b", 1]),
              helper.make_tensor_value_info("x", TensorProto.FLOAT, ["b", 2])],
        [helper.make_tensor_value_info("same", TensorProto.STRING, ["b", 1]),
         helper.make_tensor_value_info("y", TensorProto.FLOAT, ["b", 2])])
    save_onnx(graph, tmp_path / "1")
    config = normalize(parse_config_for("mixed", 'platform: "onnxruntime_onnx" max_batch_size: 4 '
                                        'input { name: "text" data_type: TYPE_STRING dims: [1] } '
                                        'input { name: "x" data_type: TYPE_FP32 dims: [2] } '
                                        'output { name: "same" data_type: TYPE_STRING dims: [1] } '
                                        'output { name: "y" data_type: TYPE_FP32 dims: [2] }'),
                       "mixed", gpu_count=gpu_count())
    backend = backend_class("onnxruntime")(ModelContext("mixed", 1, config, tmp_path / "1"),
                                           InstanceSpec(0, "GPU", 0))
    assert not backend.device_inputs
    text = np.array([[b"abc"], [b"xyz"]], dtype=np.object_)
    x = np.array([[1, 2], [3, 4]], np.float32)
    outputs = backend.execute({"text": text, "x": x}, [2])
    assert [v.encode() if isinstance(v, str) else v for v in outputs["same"].reshape(-1)] == [b"abc", b"xyz"]
    np.testing.assert_array_equal(outputs["y"], -x)
    backend.close()
