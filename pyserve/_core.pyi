"""Type stubs for pyserve._core, the C++ serving core (private: use the pyserve package)."""

from typing import Any, Callable, Sequence

class QueuePolicy:
    delay_on_timeout: bool
    default_timeout_us: int
    allow_timeout_override: bool
    max_queue_size: int
    def __init__(self) -> None: ...

class BatchingOptions:
    max_batch_size: int
    preferred_batch_sizes: list[int]
    max_queue_delay_us: int
    priority_levels: int
    default_priority_level: int
    default_policy: QueuePolicy
    level_policies: dict[int, QueuePolicy]
    equal_shape_inputs: list[str]
    equal_input_sets: bool
    def __init__(self) -> None: ...

class SequenceControl:
    def __init__(self, name: str, kind: int, dtype: str, false_value: float = 0.0,
                 true_value: float = 1.0) -> None: ...

# What a backend returns for a request released with RESCHEDULE (iterative sequences).
RESCHEDULE: object

class SequenceBatchingOptions:
    oldest: bool
    max_batch_size: int
    max_candidate_sequences: int
    preferred_batch_sizes: list[int]
    max_queue_delay_us: int
    minimum_slot_utilization: float
    max_sequence_idle_us: int
    iterative: bool
    backlog_delay_count: int
    controls: list[SequenceControl]
    def __init__(self) -> None: ...

class SchedulerOptions:
    model_name: str
    instance_count: int
    instance_devices: list[int]
    device_inputs: bool
    queue_capacity: int
    max_pending: int
    dynamic_batching: bool
    batching: BatchingOptions
    sequence_batching: bool
    sequence: SequenceBatchingOptions
    delay_scheduler_count: int
    def __init__(self) -> None: ...

# (name, datatype, dims, optional, reshape or None)
TensorSpecTuple = tuple[str, str, Sequence[int], bool, Sequence[int] | None]

class ModelSpec:
    """What the data path knows of a model version's normalized config."""
    def __init__(self, name: str, version: int, max_batch_size: int,
                 inputs: Sequence[TensorSpecTuple], outputs: Sequence[TensorSpecTuple],
                 labels: dict[str, list[str]] = ..., preserve_ordering: bool = False,
                 request_info: bool = False) -> None: ...
    @property
    def name(self) -> str: ...
    @property
    def version(self) -> int: ...

class PythonSink:
    """Delivers responses of requests submitted from Python: callback(results) once per batch,
    results = [(tag, [(name, datatype, array), ...] | None, (code, message) | None), ...]."""
    def __init__(self, callback: Callable[[list[tuple[int, Any, Any]]], None]) -> None: ...
    def close(self) -> None: ...

class CancelFlag:
    """Set when a submitted request's caller goes away: a queued request is then answered
    CANCELLED instead of computed."""
    def __init__(self) -> None: ...
    def set(self) -> None: ...
    @property
    def is_set(self) -> bool: ...

class Model:
    """A served model version: checks, batches and runs requests; execute(instance,
    batch_sizes, inputs, requests) is the backend's compute, called once per batch."""
    def __init__(self, spec: ModelSpec, options: SchedulerOptions,
                 execute: Callable[[int, list[int], dict[str, Any], list[tuple] | None], Any],
                 ) -> None: ...
    @staticmethod
    def ensemble(spec: ModelSpec, steps: Sequence[tuple[str, int, dict[str, str], dict[str, str]]],
                 table: ModelTable) -> Model:
        """An ensemble version: each step, (model name, version or -1, {model input: ensemble
        tensor}, {model output: ensemble tensor}), runs on the model `table` serves."""
    def submit(self, tag: int, sink: PythonSink,
               inputs: Sequence[tuple[str, str, Sequence[int], Any]], request_id: str = "",
               outputs: Sequence[tuple[str, int] | tuple[str, int, SharedMemoryBlock | None]] = ...,
               parameters: dict[str, Any] = ...,
               priority: int = 0, timeout_us: int = 0, cancel: CancelFlag | None = None,
               traceparent: str = "", correlation_id: int | str | None = None,
               flags: int = 0) -> None: ...
    def stop(self, timeout: float = -1.0) -> bool: ...
    def enable_cache(self, cache: ResponseCache) -> None: ...
    def enable_summaries(self) -> None: ...
    # phase -> (count, sum in us, values of `quantiles` over the last minute)
    def latency_summaries(self, quantiles: Sequence[float]) -> dict[str, tuple[int, int, list[float]]]: ...
    def statistics(self) -> dict[str, Any]: ...
    def request_counts(self) -> dict[str, int]: ...
    @property
    def inflight_count(self) -> int: ...
    @property
    def pending_count(self) -> int: ...

class ResponseCache:
    """The server's response cache (`--cache-config local,size=N`), shared by the models
    whose config enables it; least recently used entries evicted within `byte_size`."""
    def __init__(self, byte_size: int) -> None: ...
    # capacity, used, entries, hits, misses, evictions, lookup_ns, insertion_ns
    def usage(self) -> dict[str, int]: ...

class ModelTable:
    """The READY versions of every model, for frontends that resolve requests natively."""
    def __init__(self) -> None: ...
    def publish(self, name: str, versions: Sequence[Model]) -> None: ...

class SharedMemoryBlock:
    """A block of a registered region (held mapped while this lives); a buffer of host memory
    unless `device` >= 0."""
    @property
    def byte_size(self) -> int: ...
    @property
    def device(self) -> int: ...

class SharedMemoryRegistry:
    """Client shared-memory regions by name (Triton's system_shared_memory and
    cuda_shared_memory extensions); kind is "system" or "cuda"."""
    def __init__(self) -> None: ...
    def register_system(self, name: str, key: str, offset: int, byte_size: int) -> None: ...
    def register_cuda(self, name: str, raw_handle: bytes, device_id: int,
                      byte_size: int) -> None: ...
    def unregister(self, name: str, kind: str) -> None: ...
    def status(self, name: str, kind: str) -> list[dict[str, Any]]: ...
    def input(self, name: str, offset: int, byte_size: int) -> SharedMemoryBlock: ...
    def output(self, name: str, offset: int, byte_size: int) -> SharedMemoryBlock: ...

def set_cuda_search_paths(paths: list[str]) -> None: ...
def cuda_device_count() -> int: ...
def cuda_library() -> str: ...
def host_memory_usage() -> dict[str, Any]: ...
def reset_host_memory() -> None: ...
def set_host_memory_pool_bytes(bytes: int) -> None: ...

def request_limits() -> dict[str, int]:
    """What one inference message may declare: inputs, outputs, parameters, rank, elements
    (of one tensor) and name_bytes."""
def set_request_limits(limits: dict[str, int]) -> None:
    """Sets the limits named, the others to their defaults; before serving."""
def trace_configure(model: str, setting: int, enabled: bool, rate: int, count: int,
                    opentelemetry: bool, tensors: bool) -> None:
    """Sets the global trace setting (model '') or a model's own (its sampling half)."""
def trace_forget(model: str) -> None:
    """Puts a model back on the global trace setting."""
def trace_count(model: str) -> int:
    """The traces the setting of a model may still sample (-1: unlimited)."""
def trace_drain(timeout_ms: int) -> list[tuple[int, int, str, int, str, str,
                                                 list[tuple[str, int]], int, bool,
                                                 list[tuple[str, str, str, list[int], bytes]]]]:
    """The finished traces (id, setting, model, version, request_id, traceparent, timestamps,
    sample, last, tensors), waiting up to timeout_ms for the first."""

class DeviceTensor:
    """A batch input the core copied to a GPU (valid during the execute call it is handed to);
    speaks __cuda_array_interface__ (v3, with the stream the copy was enqueued on)."""
    def __init__(self, name: str, data_ptr: int, byte_size: int, shape: Sequence[int],
                 dtype: Any, device: int, stream: int, host: Any) -> None: ...
    name: str
    data_ptr: int
    byte_size: int
    shape: tuple[int, ...]
    dtype: Any
    device: int
    stream: int
    host: Any
    __cuda_array_interface__: dict[str, Any]

class DeviceBuffer:
    """Device memory owned by the object."""
    def __init__(self, device: int, byte_size: int) -> None: ...
    ptr: int
    byte_size: int
    device: int
    def copy_from_host(self, array: Any, stream: int = 0, wait: bool = True) -> None: ...
    def copy_to_host(self, array: Any, stream: int = 0, wait: bool = True) -> None: ...

def cuda_set_device(device: int) -> None: ...
def cuda_synchronize(stream: int = 0) -> None: ...
