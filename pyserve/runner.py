"""ModelRunner: one served model version, its instances and its core scheduler.

`infer()` is called on the asyncio loop: it hands the request to the C++ scheduler (inputs as
views, no copy) and awaits the completion. The scheduler's worker threads call `_execute`
once per batch with the GIL taken once; results return to the loop in one hand-off per batch.
"""

from __future__ import annotations

import asyncio
import itertools
import logging
from dataclasses import dataclass, field
from typing import Sequence

import numpy as np

from pyserve import _core
from pyserve.backends import Backend
from pyserve.datatypes import config_type, deserialize_bytes
from pyserve.errors import ErrorCode, ServerError

log = logging.getLogger("pyserve")


@dataclass
class InputTensor:
    """A request input as received: `data` is a view of the wire bytes (BYTES serialized)."""

    name: str
    datatype: str
    shape: list[int]
    data: bytes | memoryview


@dataclass
class _Pending:
    future: asyncio.Future
    inputs: Sequence[InputTensor] = field(repr=False)  # keeps the viewed bytes alive


class ModelRunner:
    def __init__(self, name: str, version: int, instances: list[Backend],
                 loop: asyncio.AbstractEventLoop) -> None:
        self.name = name
        self.version = version
        self._instances = instances
        self._loop = loop
        self._pending: dict[int, _Pending] = {}
        self._ids = itertools.count(1)
        self._scheduler = _core.Scheduler(f"{name}:{version}", len(instances), self._execute)

    async def infer(self, inputs: Sequence[InputTensor]) -> dict[str, np.ndarray]:
        """Run one request; returns every output of the model by name."""
        request_id = next(self._ids)
        future = self._loop.create_future()
        self._pending[request_id] = _Pending(future, inputs)
        try:
            self._scheduler.enqueue(
                request_id, [(t.name, config_type(t.datatype), t.shape, t.data) for t in inputs])
        except BaseException:
            del self._pending[request_id]
            raise
        return await future

    def _execute(self, instance: int, request_ids: list[int], inputs: dict[str, np.ndarray]) -> None:
        """Worker thread, GIL held: run the batch and hand all completions to the loop."""
        try:
            # The core hands BYTES over serialized; the entry in _pending (inserted before the
            # enqueue, removed only after completion) has its shape.
            for tensor in self._pending[request_ids[0]].inputs:
                if tensor.datatype == "BYTES":
                    items = deserialize_bytes(inputs[tensor.name])
                    array = np.empty(len(items), dtype=np.object_)
                    array[:] = items
                    inputs[tensor.name] = array.reshape(tensor.shape)
            outputs = self._instances[instance].execute(inputs)
            results = [(request_ids[0], outputs, None)]
        except ServerError as e:
            results = [(rid, None, e) for rid in request_ids]
        except Exception as e:  # noqa: BLE001 - a backend failure fails the batch, not the server
            log.exception("model '%s' version %d failed a batch", self.name, self.version)
            error = ServerError(f"{type(e).__name__}: {e}", ErrorCode.INTERNAL)
            results = [(rid, None, error) for rid in request_ids]
        self._loop.call_soon_threadsafe(self._complete, results)

    def _complete(self, results: list) -> None:
        for request_id, outputs, error in results:
            pending = self._pending.pop(request_id)
            if pending.future.done():  # the caller went away
                continue
            if error is None:
                pending.future.set_result(outputs)
            else:
                pending.future.set_exception(error)

    @property
    def inflight_count(self) -> int:
        return len(self._pending)

    def stop(self) -> None:
        """Refuse new requests and run every accepted one; then release the instances."""
        self._scheduler.stop()
        for backend in self._instances:
            backend.close()
