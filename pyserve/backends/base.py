"""The interface every backend implements: one object per model instance."""

from __future__ import annotations

import abc
from dataclasses import dataclass, field
from pathlib import Path
from typing import Union

import numpy as np

from pyserve.errors import ServerError
from pyserve.protocol import pb


@dataclass(frozen=True)
class ModelContext:
    name: str
    version: int
    config: pb.ModelConfig  # normalized
    version_dir: Path

    @property
    def model_path(self) -> Path:
        return self.version_dir / self.config.default_model_filename


@dataclass(frozen=True)
class InstanceSpec:
    index: int  # position among all instances of the model version
    kind: str  # "CPU" or "GPU"
    device_id: int = 0
    host_policy: str = ""  # the name of the host policy it runs under (pyserve.host_policy)
    group: int = 0  # its instance_group's position in the config


# What execute() returns: every output of the batch by name (split per request by the
# runner), or one entry per request: its outputs, or an Exception that fails that request only.
BatchResult = Union[dict[str, np.ndarray], list[Union[dict[str, np.ndarray], Exception]]]


@dataclass
class RequestInfo:
    """What a backend may want to know of each request in a batch besides its tensors."""

    id: str = ""
    parameters: dict = field(default_factory=dict)  # the request's own (custom) parameters
    requested_outputs: list[str] = field(default_factory=list)  # empty = all
    correlation_id: int | str = 0  # the request's sequence (0 = none)
    flags: int = 0  # TRITONSERVER_RequestFlag: sequence start 1, end 2
    # A decoupled model's way to answer this request (_core.ResponseSender); None otherwise.
    response_sender: object = None
    # Otherwise (_core.BatchCancellation, the request's index): whether its client went away.
    cancellation: tuple | None = None


class Backend(abc.ABC):
    """A loaded model instance. `execute` runs on the instance's worker thread, one batch at a
    time, with batch-shaped numpy inputs (read-only views; BYTES as object arrays of bytes)
    and the batch size of each request in the batch, in order."""

    # Set (on a GPU instance) to have the core copy the batch inputs to the instance's GPU on
    # the instance's stream: execute() then gets pyserve._core.DeviceTensor values for them
    # (device pointer, shape, stream, and the host view as `.host`); BYTES stay numpy.
    device_inputs: bool = False
    # Set to have execute() get each request's RequestInfo (id, parameters, outputs asked
    # for); others get None, which spares the core building them per request.
    request_info: bool = False
    # Set when instances may run in a child process on request (config parameter
    # "isolation": "process"): the backend's inputs, outputs and RequestInfo pickle.
    isolatable: bool = False
    # close() may run while execute() is running on another thread (and ends it).
    closes_while_executing: bool = False

    def __init__(self, model: ModelContext, instance: InstanceSpec) -> None:
        self.model = model
        self.instance = instance

    @abc.abstractmethod
    def execute(self, inputs: dict[str, np.ndarray], batch_sizes: list[int],
                requests: list[RequestInfo] | None = None) -> BatchResult: ...

    def close(self) -> None:
        """Release the framework's resources; called once, after the last execute."""

    @staticmethod
    def auto_complete_config(config: pb.ModelConfig, version_dir: Path | None,
                             options: object) -> pb.ModelConfig:
        """Complete `config` from the model files in `version_dir` (None when the model has no
        version yet), Triton's backend auto-complete; `options` is the
        pyserve.config.ConfigOptions in force. Called only when auto-complete is enabled, after
        the server-side normalization; returns the completed config (the default: unchanged)."""
        return config


def int_parameter(config: pb.ModelConfig, key: str) -> int | None:
    """A non-negative integer from the config's `parameters` (string values, as Triton's
    backends read them), or None when the key is absent."""
    if key not in config.parameters:
        return None
    text = config.parameters[key].string_value
    try:
        value = int(text)
    except ValueError:
        raise ServerError(f"failed to convert '{text}' to an integer for parameter '{key}' of "
                          f"model '{config.name}'") from None
    if value < 0:
        raise ServerError(f"parameter '{key}' of model '{config.name}' must be non-negative")
    return value


def instance_name(config: pb.ModelConfig, instance: InstanceSpec) -> str:
    """Triton's instance name: the instance group's name, '_', the index within the group."""
    start = 0
    for group in config.instance_group:
        size = group.count * (len(group.gpus) if group.kind == pb.ModelInstanceGroup.Kind.Value("KIND_GPU") and group.gpus else 1)
        if instance.index < start + size:
            return f"{group.name}_{instance.index - start}"
        start += size
    return f"{config.name}_{instance.index}"
