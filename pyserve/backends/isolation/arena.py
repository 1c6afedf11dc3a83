"""The shared memory one isolated instance and its child process pass tensors through.

An arena is an anonymous memory file (memfd) that both processes map; the parent's copy of
the fd travels to the child at spawn. Tensors are written into it by one side and read as
numpy views by the other; only small descriptors (name, dtype, shape, offset, size) cross
the control pipe, never the arrays. Either side may grow the file when what it writes does
not fit; each message carries the size the reader needs mapped. The protocol is strictly
request/reply per instance, so the two sides never write at the same time.
"""

from __future__ import annotations

import mmap
import os

import numpy as np

from pyserve.datatypes import deserialize_bytes, serialize_bytes

ALIGNMENT = 64  # each tensor starts on a cache line
INITIAL_SIZE = 1 << 20  # the file is sparse: pages cost memory only once touched
BYTES = "bytes"  # the dtype of a BYTES tensor in a descriptor (Triton's length-prefixed form)

# name, numpy dtype string or BYTES, shape, offset, byte size
Descriptor = tuple[str, str, tuple[int, ...], int, int]


class Arena:
    def __init__(self, fd: int) -> None:
        self.fd = fd
        self.size = 0
        self._map: mmap.mmap | None = None
        self.follow(max(os.fstat(fd).st_size, INITIAL_SIZE))

    @classmethod
    def create(cls, name: str) -> "Arena":
        return cls(os.memfd_create(name))  # close-on-exec: only the child it is passed to gets it

    def follow(self, size: int) -> None:
        """Map at least `size` bytes, growing the file if the other side has not already.
        Views of the old mapping keep it alive until they are gone."""
        if size <= self.size:
            return
        if os.fstat(self.fd).st_size < size:
            os.ftruncate(self.fd, size)
        self._map = mmap.mmap(self.fd, size)
        self.size = size

    def write(self, tensors: dict, start: int = 0) -> tuple[list[Descriptor], int]:
        """Copy `tensors` (name -> array-like) in from `start`; returns their descriptors and
        the end of what was written."""
        staged, offset = [], _aligned(start)
        for name, value in tensors.items():
            array = np.asarray(value)
            if array.dtype == np.object_:
                data, dtype = serialize_bytes(array), BYTES
                size = len(data)
            else:
                data, dtype = array, array.dtype.str
                size = array.nbytes
            staged.append(((name, dtype, tuple(array.shape), offset, size), data))
            offset = _aligned(offset + size)
        self.follow(_grown(offset, self.size))
        for (_, dtype, shape, at, size), data in staged:
            if dtype == BYTES:
                self._map[at:at + size] = data
            else:
                np.ndarray(shape, data.dtype, buffer=self._map, offset=at)[...] = data
        return [descriptor for descriptor, _ in staged], offset

    def read(self, descriptors: list[Descriptor], end: int) -> dict[str, np.ndarray]:
        """Numeric tensors as read-only views of the arena, BYTES as object arrays."""
        self.follow(end)
        tensors = {}
        for name, dtype, shape, offset, size in descriptors:
            if dtype == BYTES:
                items = deserialize_bytes(memoryview(self._map)[offset:offset + size])
                array = np.empty(len(items), dtype=np.object_)
                array[:] = items
                array = array.reshape(shape)
            else:
                array = np.ndarray(shape, np.dtype(dtype), buffer=self._map, offset=offset)
            array.flags.writeable = False
            tensors[name] = array
        return tensors

    def close(self) -> None:
        self._map = None  # unmapped when the last view is gone
        os.close(self.fd)


def _aligned(offset: int) -> int:
    return (offset + ALIGNMENT - 1) // ALIGNMENT * ALIGNMENT


def _grown(needed: int, size: int) -> int:
    """Double rather than grow by the byte, so that a growing batch remaps rarely."""
    return size if needed <= size else max(needed, 2 * size)
