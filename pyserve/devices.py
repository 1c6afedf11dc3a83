"""How many CUDA GPUs this process can use; 0 when there is no CUDA runtime or driver."""

from __future__ import annotations

import ctypes
import functools

_CUDART_NAMES = ("libcudart.so", "libcudart.so.13", "libcudart.so.12", "libcudart.so.11.0")


@functools.cache
def gpu_count() -> int:
    for name in _CUDART_NAMES:
        try:
            cudart = ctypes.CDLL(name)
        except OSError:
            continue
        count = ctypes.c_int(0)
        return count.value if cudart.cudaGetDeviceCount(ctypes.byref(count)) == 0 else 0
    return 0
