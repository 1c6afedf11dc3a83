"""ModelRunner: one served model version, its instances and its core scheduler.

`infer()` is called on the asyncio loop: it hands the request to the C++ scheduler (inputs as
views, no copy) and awaits the completion. The core batches requests by the config's rules
and calls back once per batch, with the GIL taken once: `_execute` runs the backend and
`_deliver` splits the outputs per request and hands them to the loop in one call.
"""

from __future__ import annotations

import asyncio
import collections
import itertools
import logging
import os
from dataclasses import dataclass, field
from typing import Sequence

import numpy as np

from pyserve import _core, devices  # noqa: F401 - devices sets up CUDA discovery first
from pyserve.backends import Backend
from pyserve.backends.base import RequestInfo
from pyserve.datatypes import config_type
from pyserve.errors import ErrorCode, ServerError
from pyserve.protocol import pb

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
    info: RequestInfo
    result: tuple | None = None  # (outputs, error) once done, for preserve_ordering


class ModelRunner:
    def __init__(self, config: pb.ModelConfig, version: int, instances: list[Backend],
                 instance_devices: list[int], loop: asyncio.AbstractEventLoop) -> None:
        self.name = config.name
        self.version = version
        self._instances = instances
        self._loop = loop
        self._pending: dict[int, _Pending] = {}
        self._ids = itertools.count(1)
        self._batching = config.max_batch_size > 0
        # Triton's `reshape`: the model sees the reshape's shape, clients see `dims`.
        self._input_reshapes = {i.name: (tuple(i.dims), tuple(i.reshape.shape))
                                for i in config.input if i.HasField("reshape")}
        self._output_reshapes = {o.name: (tuple(o.reshape.shape), tuple(o.dims))
                                 for o in config.output if o.HasField("reshape")}
        self._ordered = (config.HasField("dynamic_batching")
                         and config.dynamic_batching.preserve_ordering)
        # Completions waiting for the loop; one wake-up of the loop serves all of them.
        self._handed_off: collections.deque = collections.deque()
        self._wake_pending = False
        options = scheduler_options(config, instance_devices)
        options.device_inputs = any(backend.device_inputs for backend in instances)
        self._scheduler = _core.Scheduler(options,
                                          self._execute, self._deliver, self._reject)

    async def infer(self, inputs: Sequence[InputTensor], batch_size: int = 1,
                    priority: int = 0, timeout_us: int = 0,
                    info: RequestInfo | None = None) -> dict[str, np.ndarray]:
        """Run one request; returns every output of the model by name."""
        request_id = next(self._ids)
        future = self._loop.create_future()
        self._pending[request_id] = _Pending(future, inputs, info or RequestInfo())
        try:
            self._scheduler.enqueue(
                request_id, [(t.name, config_type(t.datatype), self._model_shape(t), t.data)
                             for t in inputs],
                batch_size, priority, timeout_us)
        except BaseException:
            del self._pending[request_id]
            raise
        return await future

    def _model_shape(self, tensor: InputTensor):
        if tensor.name not in self._input_reshapes:
            return tensor.shape
        return reshaped(tensor.shape, *self._input_reshapes[tensor.name], self._batching)

    def _client_shapes(self, outputs: dict) -> dict:
        """Outputs with a config `reshape` back in the shape of their `dims`."""
        for name, (source, target) in self._output_reshapes.items():
            array = outputs.get(name)
            if array is not None and array.ndim == len(source) + self._batching:
                outputs[name] = array.reshape(reshaped(array.shape, source, target,
                                                       self._batching))
        return outputs

    def _execute(self, instance: int, request_ids: list[int], batch_sizes: list[int],
                  inputs: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        """Worker thread, GIL held: the backend's compute for one batch. (_pending entries
        are added before their enqueue and removed after their completion, so they are here.)"""
        requests = [self._pending[request_id].info for request_id in request_ids]
        return self._instances[instance].execute(inputs, batch_sizes, requests)

    def _deliver(self, request_ids: list[int], batch_sizes: list[int],
                 inputs: dict[str, np.ndarray], outputs: dict | None,
                 error: BaseException | None) -> None:
        """Worker thread, GIL held: each request's share of the outputs, to the loop at once."""
        if error is None:
            try:
                results = self._split(request_ids, batch_sizes, inputs, outputs)
            except ServerError as e:
                error = e
        if error is not None:
            if not isinstance(error, ServerError):
                log.error("model '%s' version %d failed a batch: %s: %s", self.name, self.version,
                          type(error).__name__, error)
                error = ServerError(f"{type(error).__name__}: {error}", ErrorCode.INTERNAL)
            results = [(request_id, None, error) for request_id in request_ids]
        self._hand_off(results)

    def _split(self, request_ids, batch_sizes, inputs, outputs) -> list[tuple]:
        # A gathered batch lives in pooled buffers that are reused after it: an output that
        # points into them (an input passed through) must be copied out.
        gathered = list(inputs.values()) if len(request_ids) > 1 else []
        if isinstance(outputs, list):  # one result per request, from the backend itself
            if len(outputs) != len(request_ids):
                raise ServerError(f"model '{self.name}' returned {len(outputs)} responses for "
                                  f"{len(request_ids)} requests", ErrorCode.INTERNAL)
            results = []
            for request_id, result in zip(request_ids, outputs):
                share, error = _per_request(self.name, result)
                if share is not None:
                    share = self._client_shapes(
                        {name: _detached(np.asarray(a), gathered) for name, a in share.items()})
                results.append((request_id, share, error))
            return results
        if not isinstance(outputs, dict):
            raise ServerError(f"model '{self.name}' returned {type(outputs).__name__}, not a dict "
                              "of outputs", ErrorCode.INTERNAL)
        if len(request_ids) == 1:
            return [(request_ids[0], self._client_shapes(outputs), None)]
        total = sum(batch_sizes)
        results, offset = [], 0
        for request_id, size in zip(request_ids, batch_sizes):
            share = {}
            for name, array in outputs.items():
                array = np.asarray(array)
                if array.ndim == 0 or array.shape[0] != total:
                    raise ServerError(
                        f"model '{self.name}' output '{name}' has batch dimension "
                        f"{array.shape[:1]}, expected {total}", ErrorCode.INTERNAL)
                share[name] = _detached(array[offset:offset + size], gathered)
            results.append((request_id, self._client_shapes(share), None))
            offset += size
        return results

    def _reject(self, request_ids: list[int], code: str, message: str) -> None:
        error = ServerError(message, code)
        self._hand_off([(rid, None, error) for rid in request_ids])

    def _hand_off(self, results: list) -> None:
        """Worker thread, GIL held. Wakes the loop only if no wake-up is already on its way,
        which saves a syscall per batch under load."""
        self._handed_off.append(results)
        if not self._wake_pending:
            self._wake_pending = True
            self._loop.call_soon_threadsafe(self._drain)

    def _drain(self) -> None:
        self._wake_pending = False  # first: a hand-off during the drain schedules another
        while self._handed_off:
            self._complete(self._handed_off.popleft())

    def _complete(self, results: list) -> None:
        for request_id, outputs, error in results:
            self._pending[request_id].result = (outputs, error)
            if not self._ordered:
                self._finish(request_id)
        if self._ordered:  # release in arrival order: only the oldest finished ones
            while self._pending:
                request_id, pending = next(iter(self._pending.items()))
                if pending.result is None:
                    break
                self._finish(request_id)

    def _finish(self, request_id: int) -> None:
        pending = self._pending.pop(request_id)
        if pending.future.done():  # the caller went away
            return
        outputs, error = pending.result
        if error is None:
            pending.future.set_result(outputs)
        else:
            pending.future.set_exception(error)

    @property
    def inflight_count(self) -> int:
        return len(self._pending)

    @property
    def pending_count(self) -> int:
        """Requests queued and not yet executing."""
        return self._scheduler.pending_count

    def statistics(self) -> dict:
        return self._scheduler.statistics()

    def stop(self) -> None:
        """Refuse new requests and run every accepted one; then release the instances."""
        self._scheduler.stop()
        for backend in self._instances:
            backend.close()


def reshaped(shape, source: tuple, target: tuple, batching: bool) -> tuple:
    """Triton's reshape of a tensor whose shape follows `source` (config dims or reshape) into
    `target`: each -1 of `target` takes the value of the next -1 of `source`; a batching
    model's first dimension stays."""
    rows, rest = (tuple(shape[:1]), shape[1:]) if batching else ((), shape)
    variable = iter([value for value, dim in zip(rest, source) if dim == -1])
    return (*rows, *(next(variable) if dim == -1 else dim for dim in target))


def _detached(array: np.ndarray, gathered: list[np.ndarray]) -> np.ndarray:
    if array.dtype != np.object_ and any(np.may_share_memory(array, g) for g in gathered):
        return array.copy()
    return array


def _per_request(model: str, result) -> tuple:
    """(outputs, error) for one request's entry of a per-request result list."""
    if isinstance(result, dict):
        return result, None
    if isinstance(result, ServerError):
        return None, result
    if isinstance(result, Exception):
        return None, ServerError(str(result), ErrorCode.INTERNAL)
    return None, ServerError(f"model '{model}' returned {type(result).__name__} for a request",
                             ErrorCode.INTERNAL)


def scheduler_options(config: pb.ModelConfig, instance_devices: list[int]) -> _core.SchedulerOptions:
    """The core's scheduling options from a normalized model config."""
    options = _core.SchedulerOptions()
    options.model_name = config.name
    options.instance_count = len(instance_devices)
    options.instance_devices = instance_devices
    if config.HasField("dynamic_batching") and config.max_batch_size > 0:
        dynamic = config.dynamic_batching
        options.dynamic_batching = True
        batching = options.batching
        batching.max_batch_size = config.max_batch_size
        batching.preferred_batch_sizes = list(dynamic.preferred_batch_size)
        batching.max_queue_delay_us = dynamic.max_queue_delay_microseconds
        batching.priority_levels = dynamic.priority_levels
        batching.default_priority_level = dynamic.default_priority_level
        batching.default_policy = _queue_policy(dynamic.default_queue_policy)
        batching.level_policies = {level: _queue_policy(policy)
                                   for level, policy in dynamic.priority_queue_policy.items()}
        batching.equal_shape_inputs = [i.name for i in config.input if not i.allow_ragged_batch]
        batching.equal_input_sets = any(i.optional for i in config.input)
    # Triton's switch for deterministic batching tests: hold until N requests are queued.
    options.delay_scheduler_count = int(os.environ.get("TRITONSERVER_DELAY_SCHEDULER") or 0)
    return options


def _queue_policy(policy: pb.ModelQueuePolicy) -> _core.QueuePolicy:
    out = _core.QueuePolicy()
    out.delay_on_timeout = policy.timeout_action == pb.ModelQueuePolicy.TimeoutAction.Value("DELAY")
    out.default_timeout_us = policy.default_timeout_microseconds
    out.allow_timeout_override = policy.allow_timeout_override
    out.max_queue_size = policy.max_queue_size
    return out
