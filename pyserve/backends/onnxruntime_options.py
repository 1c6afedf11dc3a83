"""How a config.pbtxt becomes ONNX Runtime session options and execution providers, by the rules
of Triton's onnxruntime backend (ModelState::LoadModel): session `parameters`, the
`optimization.execution_accelerators` (TensorRT and CUDA on GPU, OpenVINO on CPU) and the
older CUDA `parameters`. Plain functions of the config, so they are tested on every machine.
"""

from __future__ import annotations

import onnxruntime as ort

from pyserve.backends.base import int_parameter
from pyserve.errors import ErrorCode, ServerError
from pyserve.protocol import pb

# Triton's onnxruntime backend: optimization.graph.level -1 = basic, 1 = extended, else all.
_GRAPH_LEVELS = {-1: ort.GraphOptimizationLevel.ORT_ENABLE_BASIC,
                 1: ort.GraphOptimizationLevel.ORT_ENABLE_EXTENDED}


def session_options(config: pb.ModelConfig) -> ort.SessionOptions:
    """SessionOptions from the config as Triton's onnxruntime backend reads them: the
    `parameters` intra_op_thread_count, inter_op_thread_count, execution_mode (0 sequential,
    1 parallel), enable_mem_arena, enable_mem_pattern; and optimization.graph.level."""
    options = ort.SessionOptions()
    options.log_severity_level = 3
    options.graph_optimization_level = _GRAPH_LEVELS.get(
        config.optimization.graph.level, ort.GraphOptimizationLevel.ORT_ENABLE_ALL)
    threads = int_parameter(config, "intra_op_thread_count")
    if threads is not None:
        options.intra_op_num_threads = threads
    threads = int_parameter(config, "inter_op_thread_count")
    if threads is not None:
        options.inter_op_num_threads = threads
    mode = int_parameter(config, "execution_mode")
    if mode is not None:
        options.execution_mode = (ort.ExecutionMode.ORT_PARALLEL if mode == 1
                                  else ort.ExecutionMode.ORT_SEQUENTIAL)
    arena = int_parameter(config, "enable_mem_arena")
    if arena is not None:
        options.enable_cpu_mem_arena = arena != 0
    pattern = int_parameter(config, "enable_mem_pattern")
    if pattern is not None:
        options.enable_mem_pattern = pattern != 0
    return options


def providers(config: pb.ModelConfig, kind: str, device_id: int = 0) -> list:
    """The execution providers of an instance of `kind` ("CPU"/"GPU"), best first, as
    onnxruntime.InferenceSession takes them: (name, options) pairs, then "CPUExecutionProvider"."""
    accelerators = config.optimization.execution_accelerators
    chosen: list = []
    if kind == "GPU":
        cuda = {"device_id": str(device_id)}
        for accelerator in accelerators.gpu_execution_accelerator:
            if accelerator.name == "tensorrt":
                chosen.append(("TensorrtExecutionProvider",
                               {**tensorrt_options(accelerator.parameters),
                                "device_id": str(device_id)}))
            elif accelerator.name == "cuda":
                cuda.update(_cuda_accelerator_options(accelerator.parameters))
            else:
                raise _unknown_accelerator(accelerator.name)
        cuda.update(_cuda_parameters(config))
        chosen.append(("CUDAExecutionProvider", cuda))
    else:
        for accelerator in accelerators.cpu_execution_accelerator:
            if accelerator.name != "openvino":
                raise _unknown_accelerator(accelerator.name)
            chosen.append(("OpenVINOExecutionProvider", dict(accelerator.parameters)))
    chosen.append("CPUExecutionProvider")
    return chosen


def _unknown_accelerator(name: str) -> ServerError:
    return ServerError(f"unknown Execution Accelerator '{name}' is requested",
                       ErrorCode.INVALID_ARG)


# The TensorRT accelerator's parameters: Triton's name -> (ORT's option, value kind).
_TENSORRT_OPTIONS = {
    "max_workspace_size_bytes": ("trt_max_workspace_size", int),
    "int8_calibration_table_name": ("trt_int8_calibration_table_name", str),
    "int8_use_native_calibration_table": ("trt_int8_use_native_calibration_table", bool),
    **{name: (name, int) for name in (
        "trt_max_partition_iterations", "trt_min_subgraph_size", "trt_dla_core",
        "trt_builder_optimization_level", "trt_auxiliary_streams", "trt_ep_context_embed_mode")},
    **{name: (name, bool) for name in (
        "trt_dla_enable", "trt_engine_cache_enable", "trt_dump_subgraphs",
        "trt_force_sequential_engine_build", "trt_context_memory_sharing_enable",
        "trt_layer_norm_fp32_fallback", "trt_timing_cache_enable", "trt_force_timing_cache",
        "trt_detailed_build_log", "trt_build_heuristics_enable", "trt_sparsity_enable",
        "trt_cuda_graph_enable", "trt_dump_ep_context_model")},
    **{name: (name, str) for name in (
        "trt_engine_cache_path", "trt_engine_cache_prefix", "trt_timing_cache_path",
        "trt_tactic_sources", "trt_extra_plugin_lib_paths", "trt_profile_min_shapes",
        "trt_profile_max_shapes", "trt_profile_opt_shapes", "trt_ep_context_file_path")},
}
_PRECISIONS = {"FP32": None, "FP16": "trt_fp16_enable", "BF16": "trt_bf16_enable",
               "INT8": "trt_int8_enable"}


def tensorrt_options(parameters) -> dict[str, str]:
    """The TensorRT accelerator's parameters as the TensorRT execution provider's options."""
    options = {}
    for key, value in parameters.items():
        if key == "precision_mode":
            if value not in _PRECISIONS:
                raise ServerError(f"unsupported precision mode '{value}' is requested",
                                  ErrorCode.INVALID_ARG)
            if _PRECISIONS[value]:
                options[_PRECISIONS[value]] = "1"
            continue
        if key not in _TENSORRT_OPTIONS:
            raise ServerError(f"unknown parameter '{key}' is provided for TensorRT Execution "
                              "Accelerator", ErrorCode.INVALID_ARG)
        option, kind = _TENSORRT_OPTIONS[key]
        options[option] = _checked(key, value, kind)
    return options


def _cuda_accelerator_options(parameters) -> dict[str, str]:
    """The `cuda` accelerator's parameters: the CUDA execution provider's own options."""
    boolean = {"do_copy_in_default_stream", "use_ep_level_unified_stream"}
    return {key: _checked(key, value, bool if key in boolean else str)
            for key, value in parameters.items()}


# The older CUDA settings in the config's `parameters`, with Triton's numeric codes.
_CONV_ALGO_SEARCH = {0: "EXHAUSTIVE", 1: "HEURISTIC", 2: "DEFAULT"}
_ARENA_EXTEND = {0: "kNextPowerOfTwo", 1: "kSameAsRequested"}


def _cuda_parameters(config: pb.ModelConfig) -> dict[str, str]:
    options = {}
    for key, names in (("cudnn_conv_algo_search", _CONV_ALGO_SEARCH),
                       ("arena_extend_strategy", _ARENA_EXTEND)):
        code = int_parameter(config, key)
        if code is not None:
            if code not in names:
                raise ServerError(f"unsupported {key} value '{code}' is requested",
                                  ErrorCode.INVALID_ARG)
            options[key] = names[code]
    if "gpu_mem_limit" in config.parameters:
        options["gpu_mem_limit"] = str(int_parameter(config, "gpu_mem_limit"))
    if "do_copy_in_default_stream" in config.parameters:
        options["do_copy_in_default_stream"] = _checked(
            "do_copy_in_default_stream",
            config.parameters["do_copy_in_default_stream"].string_value, bool)
    return options


_TRUE = {"true", "1", "on", "yes"}
_FALSE = {"false", "0", "off", "no"}


def _checked(key: str, value: str, kind: type) -> str:
    """`value` checked as Triton checks it; booleans become "1"/"0", which ORT reads."""
    if kind is int:
        try:
            int(value)
        except ValueError:
            raise ServerError(f"failed to convert '{value}' to an integer for parameter "
                              f"'{key}'", ErrorCode.INVALID_ARG) from None
    elif kind is bool:
        if value.strip().lower() not in _TRUE | _FALSE:
            raise ServerError(f"failed to convert '{value}' to a boolean value for parameter "
                              f"'{key}'", ErrorCode.INVALID_ARG)
        return "1" if value.strip().lower() in _TRUE else "0"
    return value
