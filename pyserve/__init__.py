"""pyserve: a pip-installable, Triton-compatible inference server with a C++ serving core."""

from __future__ import annotations

__version__ = "0.1.0"

__all__ = ["__version__"]
