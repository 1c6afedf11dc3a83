"""sequence_batching.state, Triton's implicit state: its checks (with Triton's texts, from the
sequence batch scheduler's GenerateInitialStateData and SequenceStates::Initialize) and the
initial tensor each state starts from at a sequence's START, which the core keeps per sequence
(csrc/core/sequence_state.h).

The initial tensor is the config's `initial_state`: zeros (`zero_data`, set or not, as Triton
reads the oneof) or the row-major bytes of a file in the model directory's `initial_state/`
folder. Without one, Triton leaves the first input state uninitialized; here it is zeros, with
every variable dimension 1 as in Triton. `use_same_buffer_for_input_output` changes nothing
observable on the host (the state output is copied out of the batch either way).

`use_growable_memory` gets Triton's checks (the single buffer, GPU instances only) and nothing
more: in Triton it keeps each sequence's state in a CUDA virtual-memory buffer that grows in
place as the state grows. Here a sequence's state lives in host memory between its requests;
on a GPU instance it crosses to the device as one of the batch's inputs, into the instance's
device buffers, and comes back as one of the outputs, from the backend's device buffers
(TensorRT's). Both are reused from batch to batch and grow by doubling, so a state that grows
from request to request is not reallocated per request, with the flag or without it.
"""

from __future__ import annotations

import logging
import math
from pathlib import Path

from pyserve.config.model_config import ConfigError
from pyserve.datatypes import ELEMENT_SIZE, wire_name
from pyserve.protocol import pb

log = logging.getLogger("pyserve")

INITIAL_STATE_FOLDER = "initial_state"
MAX_STATE_BYTES = 1 << 31  # a sanity bound on the initial tensor, built once per model
_TYPES = pb.ModelInput.DESCRIPTOR.fields_by_name["data_type"].enum_type.values_by_name
_STRING = _TYPES["TYPE_STRING"].number
_INVALID = _TYPES["TYPE_INVALID"].number
_KIND_GPU = pb.ModelInstanceGroup.Kind.Value("KIND_GPU")


def _distinct_states(config: pb.ModelConfig) -> list:
    """The config's states, later ones that repeat an input or output name left out with
    Triton's warnings."""
    states, inputs, outputs = [], set(), set()
    for state in config.sequence_batching.state:
        if state.input_name in inputs:
            log.warning("Detected duplicate 'input_name' in the state configuration: '%s.' "
                        "This state configuration will be ignored.", state.input_name)
            continue
        if state.output_name in outputs:
            log.warning("Detected duplicate 'output_name' in the state configuration: '%s'. "
                        "This state configuration will be ignored.", state.output_name)
            continue
        inputs.add(state.input_name)
        outputs.add(state.output_name)
        states.append(state)
    return states


def validate_states(config: pb.ModelConfig) -> None:
    """What Triton checks of each state when the model loads (the file is read later), and
    bounds on the initial tensor."""
    with_initial: set[str] = set()
    for state in config.sequence_batching.state:
        name = state.input_name
        if state.data_type == _INVALID:
            raise ConfigError(f"state '{name}' of {config.name} must specify a data type")
        for dims in [state.dims, *(initial.dims for initial in state.initial_state)]:
            if any(d < -1 for d in dims):
                raise ConfigError(f"state '{name}' of {config.name} has a dimension below -1")
            if _byte_size(state.data_type, [max(d, 1) for d in dims]) > MAX_STATE_BYTES:
                raise ConfigError(f"state '{name}' of {config.name} is larger than "
                                  f"{MAX_STATE_BYTES} bytes")
        if state.use_growable_memory and not state.use_same_buffer_for_input_output:
            raise ConfigError(
                "In order to 'use_growable_memory', you must also enable 'use_single_buffer' "
                f"for state input name '{name}'.")
        if state.use_growable_memory and any(group.kind != _KIND_GPU
                                             for group in config.instance_group):
            raise ConfigError(
                "'use_growable_memory' can only work with KIND_GPU model instances right now. "
                "Please either change the instance type to KIND_GPU or set "
                f"'use_growable_memory' to false for state input '{name}'.")
        if len(state.initial_state) > 1:
            raise ConfigError(
                f"initial_state field for state input '{name}' must contain exactly one or "
                f"zero element. Found '{len(state.initial_state)}' elements.")
        if not state.initial_state:
            continue
        initial = state.initial_state[0]
        if initial.data_type != state.data_type:
            raise ConfigError(f"The data type used for 'initial_state' field of state '{name}' "
                              "does not match the state data type.")
        if not initial.name:
            raise ConfigError(
                f"Field 'name' must be set when using initial_state for state input '{name}'.")
        if name in with_initial:
            raise ConfigError(f"State input name '{name}' specified more than once.")
        with_initial.add(name)
        if len(initial.dims) != len(state.dims):
            raise ConfigError(
                "Number of dimensions in 'initial_state' doesn't match the size of 'state' "
                f"dimensions for state input '{name}'. {len(initial.dims)} != {len(state.dims)}")
        for initial_dim, state_dim in zip(initial.dims, state.dims):
            if initial_dim == -1:
                raise ConfigError(f"'initial_state' field for state input name '{name}' "
                                  "contains variable dimensions.")
            if state_dim != -1 and initial_dim != state_dim:
                raise ConfigError(
                    f"'initial_state' dim for input name '{name}' doesn't match 'state' dim "
                    f"description. {initial_dim} != {state_dim}")
        if initial.WhichOneof("state_data") is None:
            raise ConfigError(
                f"initial_state setting expects state'{name}' to have state_data set")


def state_specs(config: pb.ModelConfig, model_dir: Path) -> list:
    """Each state as the core's StateSpec, with the tensor a sequence starts from; checked
    first, when the model loads (as Triton checks them when it makes the scheduler)."""
    from pyserve import _core  # not needed by the checks
    validate_states(config)
    batch = [1] if config.max_batch_size > 0 else []
    return [_core.StateSpec(state.input_name, state.output_name, wire_name(state.data_type),
                            batch + dims, data)
            for state in _distinct_states(config)
            for dims, data in [_initial(state, model_dir)]]


def _initial(state, model_dir: Path) -> tuple[list[int], bytes]:
    if not state.initial_state:
        dims = [1 if d == -1 else d for d in state.dims]
        return dims, bytes(_byte_size(state.data_type, dims))
    initial = state.initial_state[0]
    dims = list(initial.dims)
    size = _byte_size(initial.data_type, dims)
    if initial.WhichOneof("state_data") == "zero_data":
        return dims, bytes(size)
    folder = (model_dir / INITIAL_STATE_FOLDER).resolve()
    path = (folder / initial.data_file).resolve()
    if not path.is_relative_to(folder):
        raise ConfigError(f"initial_state file '{initial.data_file}' is outside the model's "
                          f"{INITIAL_STATE_FOLDER} directory")
    try:
        data = path.read_bytes()
    except OSError as e:
        raise ConfigError(f"failed to open text file for read {path}: {e.strerror}") from None
    if initial.data_type == _STRING:
        return dims, data
    if size > len(data):
        raise ConfigError(
            f"initial_state setting expects {size} bytes, but the data provided from "
            f"{initial.data_file}only has {len(data)} bytes.")
    return dims, data[:size]


def _byte_size(data_type: int, dims: list[int]) -> int:
    """Bytes of a tensor of `dims` (a string element: its 4-byte length, zero)."""
    count = math.prod(dims)
    if data_type == _STRING:
        return 4 * count
    return count * ELEMENT_SIZE[wire_name(data_type)]
