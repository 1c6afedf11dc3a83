"""pyserve: a pip-installable, Triton-compatible inference server with a C++ serving core."""

from __future__ import annotations

from pyserve.model import batched

__version__ = "0.1.0"

__all__ = ["__version__", "batched"]
