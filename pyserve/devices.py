"""GPUs as the C++ core sees them (CUDA runtime through dlopen; 0 without CUDA)."""

from __future__ import annotations

import atexit
import functools
import sys
from pathlib import Path

from pyserve import _core
from pyserve.errors import ErrorCode, ServerError


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


def check_load_limit(instance: str, device: int, limits: dict[int, float]) -> None:
    """--model-load-gpu-limit: an instance is not created on a GPU whose memory in use is past
    its limit (a fraction of the total), with Triton's text."""
    limit = limits.get(device)
    if limit is None:
        return
    free, total = _core.cuda_memory_info(device)
    if total - free > total * limit:
        raise ServerError(f"can not create model '{instance}': memory limit set for KIND_GPU "
                          f"{device} has exceeded, model loading is rejected.",
                          ErrorCode.UNAVAILABLE)
