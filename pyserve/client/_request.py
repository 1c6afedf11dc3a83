"""An inference request in protocol-neutral form, built once from the caller's arguments.

Both protocols encode the same `InferRequest`: inputs already turned into wire bytes (or a
shared memory reference), requested outputs, and the request parameters with Triton's
reserved keys (sequence_id, sequence_start, sequence_end, priority, timeout) filled in.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Callable, Iterable

import numpy as np

from pyserve.client._tensors import as_array, to_bytes

# (region name, offset, byte size) of a tensor that lives in registered shared memory
ShmRef = tuple[str, int, int]
ShmLookup = Callable[[np.ndarray], "ShmRef | None"]


@dataclass(slots=True)
class WireInput:
    name: str
    datatype: str
    shape: tuple[int, ...]
    data: bytes | None  # None when the tensor is in shared memory
    shm: ShmRef | None = None


@dataclass(slots=True)
class WireOutput:
    name: str
    shm: ShmRef | None = None
    parameters: dict[str, Any] = field(default_factory=dict)


@dataclass(slots=True)
class InferRequest:
    model: str
    version: str
    inputs: list[WireInput]
    outputs: list[WireOutput]
    id: str = ""
    parameters: dict[str, Any] = field(default_factory=dict)
    # outputs written into shared memory: name -> the caller's array there
    shm_outputs: dict[str, np.ndarray] = field(default_factory=dict)


def build_request(model: str, inputs: Mapping[str, Any], *, outputs: Iterable[str] | Mapping | None = None,
                  version: str | int = "", request_id: str = "",
                  parameters: Mapping[str, Any] | None = None, sequence_id: int | str = 0,
                  sequence_start: bool = False, sequence_end: bool = False, priority: int = 0,
                  timeout: int = 0, datatypes: Mapping[str, str] | None = None,
                  shm_lookup: ShmLookup | None = None) -> InferRequest:
    """`inputs` maps names to arrays (numpy, torch, or anything np.asarray takes);
    `outputs` is a list of names, or a dict of name -> None or an array in shared memory;
    `datatypes` forces wire types per input (e.g. "BF16" for raw uint16 bits)."""
    if not isinstance(inputs, Mapping):
        raise TypeError("inputs must be a mapping of input name -> array")
    wire_inputs = []
    for name, value in inputs.items():
        array, datatype = as_array(value, datatypes.get(name) if datatypes else None)
        ref = shm_lookup(array) if shm_lookup is not None else None
        wire_inputs.append(WireInput(name, datatype, array.shape,
                                     None if ref else to_bytes(array, datatype), ref))
    wire_outputs, shm_outputs = [], {}
    if outputs is not None:
        items = outputs.items() if isinstance(outputs, Mapping) else ((n, None) for n in outputs)
        for name, target in items:
            ref = None
            if target is not None:
                ref = shm_lookup(target) if shm_lookup is not None else None
                if ref is None:
                    raise ValueError(f"output '{name}': the array given for it is not in a "
                                     "registered shared memory region of this client")
                shm_outputs[name] = target
            wire_outputs.append(WireOutput(name, ref))
    params = dict(parameters or {})
    if sequence_id:
        params["sequence_id"] = sequence_id
        params["sequence_start"] = bool(sequence_start)
        params["sequence_end"] = bool(sequence_end)
    if priority:
        params["priority"] = int(priority)
    if timeout:
        params["timeout"] = int(timeout)
    return InferRequest(model, str(version), wire_inputs, wire_outputs, request_id, params,
                        shm_outputs)
