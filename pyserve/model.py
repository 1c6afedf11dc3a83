"""The native form of a Python model: one decorated function over batched numpy dicts.

A `model.py` in a model's version directory (config.pbtxt with `backend: "python"`, or just
the file, which makes the backend "python") defines::

    import numpy as np
    import pyserve

    @pyserve.batched
    def infer(inputs: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        return {"OUTPUT0": inputs["INPUT0"] * 2}

pyserve's core forms the batch (dynamic batching, max_batch_size from the config), so
`inputs` holds every request of the batch concatenated along dim 0, as read-only numpy views
of the received bytes (BYTES as object arrays of `bytes`). The function returns every output
for the whole batch; pyserve splits it back per request. It runs on the instance's worker
thread, one batch at a time per instance; module-level code runs once per model instance.
A Triton-style `TritonPythonModel` class in the same file takes precedence.
"""

from __future__ import annotations

from typing import Callable, Dict

import numpy as np

BatchFunction = Callable[[Dict[str, np.ndarray]], Dict[str, np.ndarray]]

_MARK = "__pyserve_batched__"


def batched(function: BatchFunction) -> BatchFunction:
    """Mark `function(inputs) -> outputs` as the model's batch function (returned unchanged)."""
    if not callable(function):
        raise TypeError(f"@pyserve.batched needs a function, got {type(function).__name__}")
    setattr(function, _MARK, True)
    return function


def is_batched(obj: object) -> bool:
    return callable(obj) and getattr(obj, _MARK, False) is True


__all__ = ["batched", "is_batched"]
