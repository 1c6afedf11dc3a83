"""System shared memory regions whose numpy views the client sends by reference.

A region is a POSIX shared memory object (`/dev/shm`) that the server maps once registered.
`region.ndarray(shape, dtype)` hands out views into it; when such a view is an input, or the
target of an output, the client sends only (region, offset, byte size) and no tensor bytes.
"""

from __future__ import annotations

import mmap
import os
import secrets

import _posixshmem  # CPython's shm_open/shm_unlink (what multiprocessing.shared_memory uses)

import numpy as np

_ALIGN = 64


class SharedMemoryRegion:
    """A POSIX shared memory object of `byte_size` bytes, and a bump allocator over it."""

    def __init__(self, name: str, byte_size: int, key: str | None = None) -> None:
        if byte_size <= 0:
            raise ValueError("a shared memory region needs at least one byte")
        self.name = name
        self.key = "/" + (key or f"pyserve_{secrets.token_hex(6)}").lstrip("/")
        self.byte_size = byte_size
        fd = _posixshmem.shm_open(self.key, os.O_CREAT | os.O_EXCL | os.O_RDWR, mode=0o600)
        try:
            os.ftruncate(fd, byte_size)
            self._mmap = mmap.mmap(fd, byte_size)
        except BaseException:
            _posixshmem.shm_unlink(self.key)
            raise
        finally:
            os.close(fd)
        self._unlinked = False
        self._buffer = np.frombuffer(self._mmap, dtype=np.uint8, count=byte_size)
        self._base = self._buffer.ctypes.data
        self._next = 0

    @property
    def buffer(self) -> np.ndarray:
        """The whole region as a uint8 array."""
        return self._buffer

    def ndarray(self, shape, dtype, offset: int | None = None) -> np.ndarray:
        """A C-contiguous array view into the region: at `offset`, or the next free one."""
        dtype = np.dtype(dtype)
        if dtype.hasobject:
            raise TypeError("BYTES tensors cannot be viewed in shared memory; use numeric dtypes")
        shape = (shape,) if isinstance(shape, int) else tuple(shape)
        count = int(np.prod(shape, dtype=np.int64))
        nbytes = count * dtype.itemsize
        if offset is None:
            offset = -(-self._next // _ALIGN) * _ALIGN
        if offset < 0 or offset + nbytes > self.byte_size:
            raise ValueError(f"{nbytes} bytes at offset {offset} do not fit in region "
                             f"'{self.name}' of {self.byte_size} bytes")
        self._next = max(self._next, offset + nbytes)
        return self._buffer[offset:offset + nbytes].view(dtype).reshape(shape)

    def locate(self, array: np.ndarray) -> tuple[int, int] | None:
        """(offset, byte size) of `array` if it is a contiguous view inside this region."""
        if not isinstance(array, np.ndarray) or not array.flags.c_contiguous:
            return None
        address = array.__array_interface__["data"][0]
        offset = address - self._base
        if 0 <= offset and offset + array.nbytes <= self.byte_size:
            return offset, array.nbytes
        return None

    def close(self) -> None:
        """Unlink the object; the mapping goes when the last view of it is gone."""
        if not self._unlinked:
            self._unlinked = True
            try:
                _posixshmem.shm_unlink(self.key)
            except FileNotFoundError:
                pass
        self._buffer = None
        try:
            self._mmap.close()
        except BufferError:  # views of it are still alive: they keep the mapping
            pass

    def __repr__(self) -> str:
        return f"SharedMemoryRegion({self.name!r}, {self.byte_size}, key={self.key!r})"


def filled_view(target: np.ndarray, shape) -> np.ndarray:
    """What the server wrote into an output's target array: its first elements, in `shape`
    (the response carries the shape, and no data, for outputs in shared memory)."""
    count = int(np.prod(shape, dtype=np.int64))
    return target.reshape(-1)[:count].reshape(shape)


class RegionContext:
    """`with client.shared_memory(...)` / `async with ...`: creates, registers, and on exit
    unregisters and unlinks a region."""

    def __init__(self, client, name: str, byte_size: int, key: str | None) -> None:
        self._client = client
        self._args = (name, byte_size, key)
        self.region: SharedMemoryRegion | None = None

    def _create(self) -> SharedMemoryRegion:
        self.region = SharedMemoryRegion(*self._args)
        return self.region

    def _forget(self) -> None:
        if self.region is not None:
            if self.region in self._client._regions:
                self._client._regions.remove(self.region)
            self.region.close()

    def __enter__(self) -> SharedMemoryRegion:
        region = self._create()
        try:
            self._client.register_system_shared_memory(region.name, region.key, region.byte_size)
        except BaseException:
            region.close()
            raise
        self._client._regions.append(region)
        return region

    def __exit__(self, *exc) -> None:
        try:
            self._client.unregister_system_shared_memory(self.region.name)
        finally:
            self._forget()

    async def __aenter__(self) -> SharedMemoryRegion:
        region = self._create()
        try:
            await self._client.register_system_shared_memory(region.name, region.key,
                                                             region.byte_size)
        except BaseException:
            region.close()
            raise
        self._client._regions.append(region)
        return region

    async def __aexit__(self, *exc) -> None:
        try:
            await self._client.unregister_system_shared_memory(self.region.name)
        finally:
            self._forget()
