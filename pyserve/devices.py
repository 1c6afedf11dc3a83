"""GPUs as the C++ core sees them (CUDA runtime through dlopen; 0 without CUDA)."""

from __future__ import annotations

import atexit
import functools
import sys
from pathlib import Path

from pyserve import _core


def _nvidia_wheel_dirs() -> list[str]:
    """libcudart from NVIDIA's pip wheels (nvidia-cuda-runtime-cu12 and the like)."""
    found = []
    for entry in sys.path:
        lib = Path(entry) / "nvidia" / "cuda_runtime" / "lib"
        if lib.is_dir():
            found.append(str(lib))
    return found


# Before anything in the core looks for CUDA.
_core.set_cuda_search_paths(_nvidia_wheel_dirs())
# Pinned buffers must go back before the CUDA runtime unloads at exit.
atexit.register(_core.reset_host_memory)


@functools.cache
def gpu_count() -> int:
    return _core.cuda_device_count()
