"""Config -> ONNX Runtime session options and execution providers, by Triton's rules."""

from __future__ import annotations

import onnxruntime as ort
import pytest

from pyserve.backends.onnxruntime_options import providers, session_options
from pyserve.config import parse_config
from pyserve.errors import ServerError


def test_session_options_follow_the_config_parameters():
    config = parse_config('parameters { key: "intra_op_thread_count" value: { string_value: "1" } }'
                          'parameters { key: "execution_mode" value: { string_value: "1" } }'
                          'parameters { key: "enable_mem_pattern" value: { string_value: "0" } }'
                          'optimization { graph { level: -1 } }')
    options = session_options(config)
    assert options.intra_op_num_threads == 1
    assert options.execution_mode == ort.ExecutionMode.ORT_PARALLEL
    assert not options.enable_mem_pattern
    assert options.graph_optimization_level == ort.GraphOptimizationLevel.ORT_ENABLE_BASIC
    default = session_options(parse_config(""))
    assert default.graph_optimization_level == ort.GraphOptimizationLevel.ORT_ENABLE_ALL


def accelerators(kind: str, *entries: str, cpu: tuple[str, ...] = ()) -> str:
    listed = [f"{kind}_execution_accelerator {{ {entry} }}" for entry in entries]
    listed += [f"cpu_execution_accelerator {{ {entry} }}" for entry in cpu]
    return "optimization { execution_accelerators { " + " ".join(listed) + " } }"


def parameter(key: str, value: str) -> str:
    return f'parameters {{ key: "{key}" value: "{value}" }}'


GPU_CONFIG = parse_config(
    accelerators("gpu",
                 'name: "tensorrt" ' + parameter("precision_mode", "FP16")
                 + parameter("max_workspace_size_bytes", "1073741824")
                 + parameter("trt_engine_cache_enable", "true")
                 + parameter("trt_engine_cache_path", "/tmp/engines"),
                 'name: "cuda" ' + parameter("cudnn_conv_use_max_workspace", "1")
                 + parameter("do_copy_in_default_stream", "false"),
                 cpu=('name: "openvino"',))
    # The older form: CUDA settings among the model's parameters, with numeric codes.
    + 'parameters { key: "cudnn_conv_algo_search" value: { string_value: "1" } }'
    + 'parameters { key: "arena_extend_strategy" value: { string_value: "1" } }'
    + 'parameters { key: "gpu_mem_limit" value: { string_value: "4294967296" } }')


def test_gpu_instance_gets_tensorrt_then_cuda_with_tritons_option_names():
    assert providers(GPU_CONFIG, "GPU", device_id=1) == [
        ("TensorrtExecutionProvider", {
            "trt_fp16_enable": "1", "trt_max_workspace_size": "1073741824",
            "trt_engine_cache_enable": "1", "trt_engine_cache_path": "/tmp/engines",
            "device_id": "1"}),
        ("CUDAExecutionProvider", {
            "device_id": "1", "cudnn_conv_use_max_workspace": "1",
            "do_copy_in_default_stream": "0", "cudnn_conv_algo_search": "HEURISTIC",
            "arena_extend_strategy": "kSameAsRequested", "gpu_mem_limit": "4294967296"}),
        "CPUExecutionProvider",
    ]


def test_cpu_instance_takes_only_the_cpu_accelerators():
    assert providers(GPU_CONFIG, "CPU") == [("OpenVINOExecutionProvider", {}),
                                            "CPUExecutionProvider"]
    assert providers(parse_config(""), "CPU") == ["CPUExecutionProvider"]


@pytest.mark.parametrize("config, kind, message", [
    (accelerators("gpu", 'name: "tensorrt" ' + parameter("precision_mode", "FP8")), "GPU",
     "unsupported precision mode 'FP8' is requested"),
    (accelerators("gpu", 'name: "tensorrt" ' + parameter("minimum_segment_size", "3")), "GPU",
     "unknown parameter 'minimum_segment_size' is provided for TensorRT Execution Accelerator"),
    (accelerators("gpu", 'name: "tensorrt" ' + parameter("trt_dla_enable", "maybe")), "GPU",
     "failed to convert 'maybe' to a boolean value for parameter 'trt_dla_enable'"),
    (accelerators("gpu", 'name: "tensorrt" ' + parameter("max_workspace_size_bytes", "1G")), "GPU",
     "failed to convert '1G' to an integer for parameter 'max_workspace_size_bytes'"),
    (accelerators("gpu", 'name: "openvino"'), "GPU",
     "unknown Execution Accelerator 'openvino' is requested"),
    (accelerators("cpu", 'name: "tensorrt"'), "CPU",
     "unknown Execution Accelerator 'tensorrt' is requested"),
    ('parameters { key: "cudnn_conv_algo_search" value: { string_value: "7" } }', "GPU",
     "unsupported cudnn_conv_algo_search value '7' is requested"),
])
def test_bad_accelerator_settings_are_refused_with_tritons_texts(config, kind, message):
    with pytest.raises(ServerError) as error:
        providers(parse_config(config), kind)
    assert message in error.value.message
    assert error.value.code.value == "INVALID_ARG"
