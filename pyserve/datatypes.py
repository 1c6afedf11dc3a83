"""Tensor data types in their four spellings: the wire string ("FP32"), the config enum
(TYPE_FP32 = 11, also the core's DataType code), numpy, and element size."""

from __future__ import annotations

import struct

import numpy as np

from pyserve.protocol import pb

# wire name -> numpy dtype; BYTES elements are Python bytes in object arrays, and BF16 travels
# as its raw 16 bits because numpy has no bfloat16.
NUMPY_DTYPE: dict[str, np.dtype] = {
    "BOOL": np.dtype(np.bool_),
    "UINT8": np.dtype(np.uint8),
    "UINT16": np.dtype(np.uint16),
    "UINT32": np.dtype(np.uint32),
    "UINT64": np.dtype(np.uint64),
    "INT8": np.dtype(np.int8),
    "INT16": np.dtype(np.int16),
    "INT32": np.dtype(np.int32),
    "INT64": np.dtype(np.int64),
    "FP16": np.dtype(np.float16),
    "FP32": np.dtype(np.float32),
    "FP64": np.dtype(np.float64),
    "BYTES": np.dtype(np.object_),
    "BF16": np.dtype(np.uint16),
}

ELEMENT_SIZE: dict[str, int] = {
    name: (0 if name == "BYTES" else dtype.itemsize) for name, dtype in NUMPY_DTYPE.items()
}

_DataType = pb.ModelInput.DESCRIPTOR.fields_by_name["data_type"].enum_type


def wire_name(config_type: int) -> str:
    """TYPE_FP32 -> "FP32", TYPE_STRING -> "BYTES"."""
    name = _DataType.values_by_number[config_type].name[len("TYPE_"):]
    return "BYTES" if name == "STRING" else name


def config_type(wire: str) -> int:
    """"FP32" -> TYPE_FP32; unknown names -> TYPE_INVALID (0)."""
    name = "TYPE_STRING" if wire == "BYTES" else f"TYPE_{wire}"
    value = _DataType.values_by_name.get(name)
    return value.number if value is not None else 0


def serialize_bytes(array: np.ndarray) -> bytes:
    """BYTES elements as Triton sends them: a 4-byte little-endian length, then the bytes."""
    parts = []
    for item in array.reshape(-1):
        data = item.encode() if isinstance(item, str) else bytes(item)
        parts.append(struct.pack("<I", len(data)))
        parts.append(data)
    return b"".join(parts)


def deserialize_bytes(buffer: bytes | memoryview | np.ndarray, count: int | None = None) -> list[bytes]:
    """Split length-prefixed BYTES elements; raises ValueError on a broken length prefix."""
    view = memoryview(buffer).cast("B")
    items: list[bytes] = []
    offset, end = 0, len(view)
    while offset < end and (count is None or len(items) < count):
        if end - offset < 4:
            raise ValueError(f"incomplete length prefix at byte {offset}")
        (length,) = struct.unpack_from("<I", view, offset)
        offset += 4
        if length > end - offset:
            raise ValueError(f"element length {length} at byte {offset - 4} runs past the end")
        items.append(bytes(view[offset:offset + length]))
        offset += length
    return items
