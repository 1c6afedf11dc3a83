"""Triton's shared-memory extensions in the Python frontends.

Regions live in the core's one registry (`pyserve._core.SharedMemoryRegistry`, one per server),
which the native frontends resolve tensors in as well and the control RPCs and routes of both
protocols manage. A tensor in shared memory is named by its `shared_memory_region`,
`shared_memory_offset` and `shared_memory_byte_size` parameters: an input is read from its
block without a copy (CUDA blocks are copied to the host), an output is written into its block
by the core, and the response then carries no data for it, as Triton's does.
"""

from __future__ import annotations

from dataclasses import dataclass

from pyserve import _core
from pyserve.errors import ServerError


@dataclass(frozen=True)
class ShmRef:
    """Where a tensor lives: `byte_size` bytes at `offset` of region `region`."""

    region: str
    offset: int
    byte_size: int


def input_block(registry: _core.SharedMemoryRegistry, ref: ShmRef) -> _core.SharedMemoryBlock:
    """An input's bytes: a buffer of host memory that holds its region alive."""
    return registry.input(ref.region, ref.offset, ref.byte_size)


def output_blocks(registry: _core.SharedMemoryRegistry, refs: dict[str, ShmRef]
                  ) -> dict[str, _core.SharedMemoryBlock]:
    """Where the core is to write each output in shared memory."""
    return {name: registry.output(ref.region, ref.offset, ref.byte_size)
            for name, ref in refs.items()}


def no_classification(refs: dict[str, ShmRef], classification: dict[str, int], text: str) -> None:
    """Triton computes classes from the output's values, never into a region."""
    if any(name in classification for name in refs):
        raise ServerError(text)


def grpc_ref(tensor) -> ShmRef | None:
    """A gRPC tensor's shared_memory_* parameters (protobuf InferParameter), checked with the
    texts of Triton's gRPC frontend."""
    params = tensor.parameters
    where = f" parameter for tensor '{tensor.name}'"
    if "shared_memory_region" not in params:
        for key in ("shared_memory_offset", "shared_memory_byte_size"):
            if key in params:
                raise ServerError(f"'{key}' can not be specified without "
                                  f"'shared_memory_region'{where}")
        return None

    def value(key: str, kind: str):
        param = params[key]
        if param.WhichOneof("parameter_choice") != kind:
            raise ServerError(f"invalid value type for '{key}'{where}, expected {kind}.")
        return getattr(param, kind)

    region = value("shared_memory_region", "string_param")
    offset = value("shared_memory_offset", "int64_param") if "shared_memory_offset" in params else 0
    if "shared_memory_byte_size" not in params:
        raise ServerError("'shared_memory_byte_size' must be specified along with "
                          f"'shared_memory_region'{where}")
    return ShmRef(region, offset, value("shared_memory_byte_size", "int64_param"))


def http_ref(parameters: dict) -> ShmRef | None:
    """A JSON tensor's shared_memory_* parameters, as Triton's HTTP frontend reads them."""
    if "shared_memory_region" not in parameters:
        return None
    region = parameters["shared_memory_region"]
    if not isinstance(region, str):
        raise ServerError("Unable to parse 'shared_memory_region'")

    def unsigned(key: str) -> int:
        number = parameters.get(key, 0)
        if isinstance(number, bool) or not isinstance(number, int) or number < 0:
            raise ServerError(f"Unable to parse '{key}'")
        return number

    return ShmRef(region, unsigned("shared_memory_offset"), unsigned("shared_memory_byte_size"))
