"""numpy <-> wire tensors: datatype names both ways, BYTES and BF16 encodings.

BYTES tensors are numpy object arrays of `bytes` (str elements are sent as UTF-8, numpy
`S`/`U` arrays are accepted too). BF16 tensors are `ml_dtypes.bfloat16` arrays when ml_dtypes
is installed, else uint16 arrays holding the raw 16 bits; torch tensors (any dtype, bfloat16
included) are accepted as inputs and moved to host memory.
"""

from __future__ import annotations

import struct

import numpy as np

from pyserve.datatypes import NUMPY_DTYPE

try:  # optional: numpy has no bfloat16 of its own
    from ml_dtypes import bfloat16 as _bfloat16
    BF16_DTYPE: np.dtype | None = np.dtype(_bfloat16)
except ImportError:  # pragma: no cover - depends on the environment
    BF16_DTYPE = None

# The server's table, with BF16 as ml_dtypes' bfloat16 where it is installed.
_TO_NUMPY: dict[str, np.dtype] = {
    **NUMPY_DTYPE, "BF16": BF16_DTYPE if BF16_DTYPE is not None else np.dtype(np.uint16)}
_FROM_NUMPY: dict[np.dtype, str] = {
    dtype: name for name, dtype in _TO_NUMPY.items() if name not in ("BYTES", "BF16")}
if BF16_DTYPE is not None:
    _FROM_NUMPY[BF16_DTYPE] = "BF16"


def numpy_dtype(datatype: str) -> np.dtype:
    """"FP32" -> float32; BYTES -> object; BF16 -> ml_dtypes.bfloat16 (or uint16)."""
    try:
        return _TO_NUMPY[datatype]
    except KeyError:
        raise ValueError(f"unknown tensor datatype '{datatype}'") from None


def datatype_of(array: np.ndarray) -> str:
    """The wire name for a numpy array's dtype."""
    dtype = array.dtype
    datatype = _FROM_NUMPY.get(dtype)
    if datatype is not None:
        return datatype
    if dtype.kind in "OSU":
        return "BYTES"
    raise ValueError(f"no Triton datatype for numpy dtype {dtype}")


def as_array(value, datatype: str | None = None) -> tuple[np.ndarray, str]:
    """An input value (numpy array, torch tensor, scalar or list) as (array, wire datatype).

    `datatype` forces the wire type, e.g. "BF16" for a uint16 array holding raw bits."""
    if type(value) is np.ndarray:  # the common case first: no conversion to look for
        array = value
    else:
        if type(value).__module__.startswith("torch"):
            value, torch_type = _from_torch(value)
            datatype = datatype or torch_type
        array = value if isinstance(value, np.ndarray) else np.asarray(value)
    if datatype is None:
        datatype = datatype_of(array)
    return array, datatype


def _from_torch(tensor) -> tuple[np.ndarray, str | None]:
    import torch

    tensor = tensor.detach()
    if tensor.device.type != "cpu":
        tensor = tensor.cpu()
    if tensor.dtype == torch.bfloat16:
        bits = tensor.contiguous().view(torch.int16).numpy().view(np.uint16)
        return (bits.view(BF16_DTYPE) if BF16_DTYPE is not None else bits), "BF16"
    return tensor.numpy(), None


def to_bytes(array: np.ndarray, datatype: str) -> bytes:
    """The tensor's raw wire bytes: row-major, little-endian; BYTES length-prefixed."""
    if datatype == "BYTES":
        return serialize_bytes(array)
    if array.dtype.byteorder == ">":
        array = array.astype(array.dtype.newbyteorder("<"))
    return np.ascontiguousarray(array).tobytes()


_LENGTH = struct.Struct("<I")


def serialize_bytes(array: np.ndarray) -> bytes:
    """BYTES elements, each a 4-byte little-endian length then the bytes."""
    parts = []
    pack = _LENGTH.pack
    for item in array.reshape(-1).tolist():
        if isinstance(item, str):
            item = item.encode()
        elif not isinstance(item, bytes):
            item = bytes(item) if isinstance(item, (bytearray, memoryview)) else str(item).encode()
        parts.append(pack(len(item)))
        parts.append(item)
    return b"".join(parts)


def deserialize_bytes(buffer, count: int) -> np.ndarray:
    """`count` length-prefixed elements as a flat object array of bytes."""
    data = buffer if type(buffer) is bytes else bytes(buffer)  # slices of bytes are bytes
    items = []
    offset, end = 0, len(data)
    unpack = _LENGTH.unpack_from
    for i in range(count):
        if end - offset < 4:
            raise ValueError(f"BYTES tensor ends inside the length prefix of element {i}")
        (length,) = unpack(data, offset)
        offset += 4
        if length > end - offset:
            raise ValueError(f"BYTES element {i} runs past the end of the tensor")
        items.append(data[offset:offset + length])
        offset += length
    out = np.empty(count, dtype=np.object_)
    out[:] = items  # one assignment, not one per element
    return out


def from_bytes(buffer, datatype: str, shape) -> np.ndarray:
    """A received tensor as a numpy array (a read-only view of `buffer` when numeric)."""
    if datatype == "BYTES":
        count = 1
        for d in shape:
            count *= d
        return deserialize_bytes(buffer, count).reshape(shape)
    return np.frombuffer(buffer, dtype=numpy_dtype(datatype)).reshape(shape)


def from_json_data(data, datatype: str, shape) -> np.ndarray:
    """A tensor sent as JSON `data` (flat or nested) as a numpy array."""
    if datatype == "BYTES":
        items = np.asarray(data, dtype=np.object_).reshape(-1)
        flat = np.empty(items.size, dtype=np.object_)
        for i, item in enumerate(items):
            flat[i] = item.encode() if isinstance(item, str) else item
        return flat.reshape(tuple(shape))
    return np.asarray(data, dtype=numpy_dtype(datatype)).reshape(tuple(shape))


__all__ = ["BF16_DTYPE", "numpy_dtype", "datatype_of", "as_array", "to_bytes",
           "serialize_bytes", "deserialize_bytes", "from_bytes", "from_json_data"]
