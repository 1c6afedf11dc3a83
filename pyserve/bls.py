"""BLS (Triton's business logic scripting): a `model.py` calls another model in-process with
`pb_utils.InferenceRequest(...).exec()` or `await ....async_exec()`; a decoupled model with
`decoupled=True` (an iterator of its responses, or a future of their list).

The request goes to the target version's core model like any other (checked, batched with the
rest of its traffic); its response comes back through one PythonSink, which wakes the calling
thread (`exec`) or resolves the caller's asyncio future (`async_exec`). Nothing is copied
into the call but BYTES tensors (serialized) and non-contiguous arrays; the outputs are
read-only numpy views of the core's memory.

Triton blocks forever when a model calls itself, or a model whose every instance is itself
waiting on such calls (a cycle). pyserve answers such a call at once with UNAVAILABLE, naming
the cycle: every instance of a BLS caller waiting on a call is recorded with what it waits
for, and a call whose target can only be served once the caller itself is free is refused.
A call with a `timeout` (µs) that is still unanswered then fails with "Request timeout
expired" (and is dropped from the target's queue if it has not started).
"""

from __future__ import annotations

import asyncio
import collections
import itertools
import json
import queue
import threading
import time
from contextlib import contextmanager

import numpy as np

from pyserve import _core
from pyserve.datatypes import config_type, serialize_bytes, wire_name
from pyserve.errors import ErrorCode, ServerError

_manager = None  # the ModelManager whose models BLS calls reach (attach)
_local = threading.local()  # `caller`: (name, version) of the model running on this thread


def attach(manager) -> None:
    """Called by the ModelManager: BLS calls reach its models."""
    global _manager
    _manager = manager


@contextmanager
def calling_from(model: tuple[str, int]):
    """Around a Python model's execute: BLS calls made on this thread come from `model`
    (name, version)."""
    previous = getattr(_local, "caller", None)
    _local.caller = model
    try:
        yield
    finally:
        _local.caller = previous


def _instances(model: tuple[str, int]) -> int:
    entry = _manager.find(model[0]) if _manager is not None else None
    version = entry.versions.get(model[1]) if entry is not None else None
    runner = version.runner if version is not None else None
    return max(len(runner._instances), 1) if runner is not None else 1


class _Waits:
    """Which model versions' instances wait on BLS calls to which (the wait-for graph), by
    (name, version)."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._waiting: dict[tuple, collections.Counter] = {}  # caller -> Counter(target)

    def cycle(self, caller, target) -> list[str] | None:
        """The names along the cycle when `caller` waiting on `target` would never end: every
        instance of each model on the way back to the caller waits on the next."""
        if caller is None:
            return None
        with self._lock:
            path, seen = [target], {target}
            while True:
                current = path[-1]
                waiting = sum(self._waiting.get(current, {}).values()) + (current == caller)
                if waiting < _instances(current):
                    return None  # an instance is free to serve it
                if current == caller:
                    return [caller[0]] + [name for name, _ in path]
                following = [t for t in self._waiting.get(current, {}) if t not in seen]
                if not following:
                    return None
                seen.add(following[0])
                path.append(following[0])

    def wait(self, caller, target) -> None:
        if caller is not None:
            with self._lock:
                self._waiting.setdefault(caller, collections.Counter())[target] += 1

    def done(self, caller, target) -> None:
        if caller is not None:
            with self._lock:
                counts = self._waiting[caller]
                counts[target] -= 1
                if counts[target] <= 0:
                    del counts[target]


_WAITS = _Waits()


class _Calls:
    """The calls in flight: one PythonSink, each call's completion by tag."""

    def __init__(self) -> None:
        self._sink = _core.PythonSink(self._deliver)
        self._pending: dict[int, object] = {}
        self._tags = itertools.count(1)

    def submit(self, runner, request, done) -> _core.CancelFlag:
        """Submits `request` to `runner`'s core model; `done(response, final)` on a core thread,
        once per response (a decoupled model may send several before its final one)."""
        tag = next(self._tags)
        cancel = _core.CancelFlag()
        self._pending[tag] = done
        try:
            runner.model.submit(
                tag, self._sink, [_input(t) for t in request.inputs()], request.request_id(),
                [(name, 0) for name in request.requested_output_names()],
                _parameters(request.parameters()), 0, int(request.timeout() or 0), cancel, "",
                _correlation(request.correlation_id()), int(request.flags() or 0))
        except BaseException:
            del self._pending[tag]
            raise
        return cancel

    def _deliver(self, results: list) -> None:  # a core thread, GIL held
        for tag, outputs, error, final in results:
            done = self._pending.pop(tag, None) if final else self._pending.get(tag)
            if done is not None:
                done(_response(outputs, error), final)


_CALLS = _Calls()  # lives as long as the process: the core holds its sink


def _target(request, decoupled: bool):
    """The (name, version) and runner the request names, or Triton's refusal as a
    ServerError (a decoupled model called without `decoupled=True` included)."""
    if _manager is None:
        raise ServerError("BLS requests are served only inside a running pyserve server",
                          ErrorCode.UNAVAILABLE)
    version = request.model_version()
    entry = _manager.get(request.model_name(), str(version) if version > 0 else "")
    if entry.runner.decoupled and not decoupled:
        raise ServerError(
            f"Model {entry.name} is using the decoupled. The current BLS request call doesn't "
            "support models using the decoupled transaction policy. Please use "
            "'decoupled=True' argument to the 'exec' or 'async_exec' calls for decoupled "
            "models.'", ErrorCode.INVALID_ARG)
    return (entry.name, entry.version), entry.runner


def _refusal(caller, target):
    cycle = _WAITS.cycle(caller, target)
    if cycle is None:
        return None
    return _error_response(
        f"BLS request from model '{caller[0]}' to model '{target[0]}' would wait forever: "
        f"every instance on the cycle {' -> '.join(cycle)} waits on a BLS call",
        ErrorCode.UNAVAILABLE)


def execute(request):
    """InferenceRequest.exec(): the response (its error set when the call failed)."""
    return list(_call(request, decoupled=False))[-1]  # a model not decoupled answers once


def execute_async(request, decoupled: bool = False) -> asyncio.Future:
    """InferenceRequest.async_exec(): a future of the response (with `decoupled`, of the list
    of responses), on the running event loop (an `async def execute`'s)."""
    loop = asyncio.get_running_loop()
    future = loop.create_future()
    caller = getattr(_local, "caller", None)
    try:
        target, runner = _target(request, decoupled)
    except ServerError as e:
        future.set_result(_error_response(e.message, e.code))
        return future
    refused = _refusal(caller, target)
    if refused is not None:
        future.set_result(refused)
        return future
    responses = []

    def resolve(result):
        if not future.done():
            future.set_result(result)

    def done(response, final):  # a core thread
        responses.append(response)
        if final:
            _WAITS.done(caller, target)
            loop.call_soon_threadsafe(resolve, responses if decoupled else response)

    _WAITS.wait(caller, target)
    try:
        cancel = _CALLS.submit(runner, request, done)
    except ServerError as e:
        _WAITS.done(caller, target)
        future.set_result(_error_response(e.message, e.code))
        return future
    timeout_us = int(request.timeout() or 0)
    if timeout_us:
        def expire():
            if not future.done():
                cancel.set()
                future.set_result(_error_response("Request timeout expired",
                                                  ErrorCode.UNAVAILABLE))
        loop.call_later(timeout_us / 1e6, expire)
    return future


def execute_decoupled(request):
    """exec(decoupled=True): an iterator of the target's responses as they arrive; the last
    may be empty (a final flag sent on its own), as in Triton."""
    return _call(request, decoupled=True)


def _call(request, decoupled: bool):
    """Submits `request` at once; an iterator of its responses, ending with the final one
    (or with the refusal or the timeout's error)."""
    caller = getattr(_local, "caller", None)
    try:
        target, runner = _target(request, decoupled)
    except ServerError as e:
        return iter([_error_response(e.message, e.code)])
    refused = _refusal(caller, target)
    if refused is not None:
        return iter([refused])
    arrived: queue.SimpleQueue = queue.SimpleQueue()
    _WAITS.wait(caller, target)
    try:
        cancel = _CALLS.submit(runner, request, lambda *answer: arrived.put(answer))
    except ServerError as e:
        _WAITS.done(caller, target)
        return iter([_error_response(e.message, e.code)])

    def responses():
        timeout_us = int(request.timeout() or 0)
        deadline = time.monotonic() + timeout_us / 1e6 if timeout_us else None
        try:
            while True:
                left = None if deadline is None else max(deadline - time.monotonic(), 0)
                try:
                    response, final = arrived.get(timeout=left)
                except queue.Empty:
                    cancel.set()
                    yield _error_response("Request timeout expired", ErrorCode.UNAVAILABLE)
                    return
                yield response
                if final:
                    return
        finally:
            _WAITS.done(caller, target)

    return responses()


def execute_decoupled_async(request) -> asyncio.Future:
    """async_exec(decoupled=True): a future of the list of the target's responses."""
    return execute_async(request, decoupled=True)


# --- conversions --------------------------------------------------------------------------

def _input(tensor) -> tuple:
    array = tensor._array
    if array.dtype == np.object_:
        return (tensor.name(), "BYTES", list(array.shape), serialize_bytes(array))
    return (tensor.name(), wire_name(tensor.triton_dtype()), list(array.shape),
            np.ascontiguousarray(array))


def _parameters(parameters) -> dict:
    if isinstance(parameters, str):
        parameters = json.loads(parameters or "{}")
    return dict(parameters or {})


def _correlation(value) -> object:
    return value if isinstance(value, str) else int(value or 0)


def _response(outputs, error):
    import triton_python_backend_utils as pb_utils

    if error is not None:
        return _error_response(error[1], ErrorCode(error[0]))
    if outputs is None:  # a decoupled model's final flag, sent on its own
        return pb_utils.InferenceResponse()
    return pb_utils.InferenceResponse(
        [pb_utils.Tensor._wrap(name, array, config_type(datatype))
         for name, datatype, array in outputs])


def _error_response(message: str, code: ErrorCode):
    import triton_python_backend_utils as pb_utils

    error_code = getattr(pb_utils.TritonError, code.name, pb_utils.TritonError.INTERNAL)
    return pb_utils.InferenceResponse(error=pb_utils.TritonError(message, error_code))
