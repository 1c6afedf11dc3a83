"""ModelRunner: one served model version, its instances and its core model.

The C++ core owns the data path: `_core.Model` checks each request against the config,
batches by the config's rules, and splits each batch's outputs per request. Python runs once
per batch: `_execute` calls the backend with the GIL taken once. Frontends in native code
submit to the core directly (through the model table); Python frontends call `infer()`, whose
responses come back through one hand-off to the event loop per batch.
"""

from __future__ import annotations

import asyncio
import collections
import itertools
import logging
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import numpy as np

from pyserve import _core, devices  # noqa: F401 - devices sets up CUDA discovery first
from pyserve.backends import Backend
from pyserve.backends.base import RequestInfo
from pyserve.config.ensemble import core_steps
from pyserve.config.sequence_state import state_specs
from pyserve.datatypes import wire_name
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


# Runners whose hung instances were abandoned: never freed, since those threads may return.
_ABANDONED: list[ModelRunner] = []


@dataclass
class OutputTensor:
    name: str
    datatype: str
    array: np.ndarray


class ModelRunner:
    def __init__(self, config: pb.ModelConfig, version: int, instances: list[Backend],
                 instance_devices: list[int], loop: asyncio.AbstractEventLoop,
                 labels: dict[str, list[str]] | None = None, max_queue_size: int = 0,
                 stop_timeout: float = -1.0,
                 host_policies: list[_core.HostPolicy] | None = None,
                 cache: _core.ResponseCache | None = None, summaries: bool = False,
                 models: _core.ModelTable | None = None,
                 rate_limiter: _core.RateLimiter | None = None,
                 rate_limits: list[_core.InstanceRateLimit] | None = None,
                 model_dir: Path | None = None) -> None:
        """An ensemble (no instances) runs its steps on the models `models` serves. With a
        `rate_limiter`, an instance executes only while it holds what `rate_limits` asks;
        `model_dir` holds the files a config names (implicit state's initial_state/)."""
        self.name = config.name
        self.version = version
        self._instances = instances
        self._stop_timeout = stop_timeout
        self._loop = loop
        # tag -> (receiver, inputs, objects): the receiver is the future of the response, or a
        # decoupled model's queue of responses; the inputs keep the viewed bytes alive until
        # the (final) response; objects are Python-only request parameters for the backend.
        self._in_flight: dict[int, tuple[asyncio.Future | asyncio.Queue, Sequence[InputTensor],
                                         dict | None]] = {}
        self.decoupled = config.model_transaction_policy.decoupled
        self._errors: dict[int, ServerError] = {}  # per-request errors a backend returned
        self._tags = itertools.count(1)
        # Completions waiting for the loop; one wake-up of the loop serves all of them.
        self._handed_off: collections.deque = collections.deque()
        self._wake_pending = False
        spec = model_spec(config, version, labels or {},
                          request_info=any(backend.request_info for backend in instances))
        if config.HasField("ensemble_scheduling"):
            self.model = _core.Model.ensemble(spec, core_steps(config), models)
        else:
            options = scheduler_options(config, instance_devices, max_queue_size, model_dir)
            options.device_inputs = any(backend.device_inputs for backend in instances)
            if host_policies and any(p.cpus or p.numa_node >= 0 for p in host_policies):
                options.instance_policies = host_policies
            if rate_limiter is not None and rate_limits:
                options.rate_limiter = rate_limiter
                options.instance_rate_limits = rate_limits
            self.model = _core.Model(spec, options, self._execute)
        self.cached = cache is not None  # repeated requests answered from the cache
        if cache is not None:
            self.model.enable_cache(cache)
        if summaries:  # latency samples for the summary metrics
            self.model.enable_summaries()
        # Metrics' counters go on across reloads of this version, as Triton's do: the runner
        # this one replaced is read while it stops, then its final counts are carried.
        self.predecessor: ModelRunner | None = None
        self._carried: dict[str, float] = {}
        self._sink = _core.PythonSink(self._hand_off)

    async def infer(self, inputs: Sequence[InputTensor], outputs: Sequence[tuple] = (),
                    request_id: str = "", parameters: dict | None = None, priority: int = 0,
                    timeout_us: int = 0, objects: dict | None = None,
                    traceparent: str = "",
                    sequence: tuple[int | str, int] = (0, 0)) -> list[OutputTensor]:
        """Run one request: the outputs asked for as (name, classification count or 0[, the
        _core.SharedMemoryBlock to write it into]), or every output of the config, in config
        order. `objects` join the request's parameters in the backend's RequestInfo without
        passing through the core (any Python value); `traceparent` is the W3C trace context
        the request carried (tracing); `sequence`: the correlation ID (an integer or a string;
        0 = none) and the sequence flags."""
        future = self._loop.create_future()
        cancel = self._submit(future, inputs, outputs, request_id, parameters, priority,
                              timeout_us, objects, traceparent, sequence)
        try:
            return await future
        except asyncio.CancelledError:  # the client went away: not computed if still queued
            cancel.set()
            raise

    async def infer_decoupled(self, inputs: Sequence[InputTensor], outputs: Sequence[tuple] = (),
                              request_id: str = "", parameters: dict | None = None,
                              priority: int = 0, timeout_us: int = 0, traceparent: str = "",
                              sequence: tuple[int | str, int] = (0, 0)):
        """Run one request of a decoupled model (any model works: it sends one response):
        yields (outputs or None, ServerError or None, final) per response as it comes, the
        final one last (its outputs are None when the model sent only the final flag).
        Closing the generator early cancels the request (the model sees is_cancelled())."""
        queue: asyncio.Queue = asyncio.Queue()
        cancel = self._submit(queue, inputs, outputs, request_id, parameters, priority,
                              timeout_us, None, traceparent, sequence)
        final = False
        try:
            while not final:
                item = await queue.get()
                final = item[2]
                yield item
        finally:
            if not final:
                cancel.set()

    def _submit(self, receiver, inputs, outputs, request_id, parameters, priority, timeout_us,
                objects, traceparent: str = "",
                sequence: tuple[int | str, int] = (0, 0)) -> _core.CancelFlag:
        tag = next(self._tags)
        self._in_flight[tag] = (receiver, inputs, objects)
        cancel = _core.CancelFlag()
        try:
            self.model.submit(tag, self._sink,
                              [(t.name, t.datatype, t.shape, t.data) for t in inputs],
                              request_id, list(outputs), parameters or {}, priority, timeout_us,
                              cancel, traceparent, *sequence)
        except (TypeError, RuntimeError):  # pybind11 could not convert a value the client sent
            del self._in_flight[tag]
            raise ServerError("invalid inference request: a tensor name, datatype, shape or "
                              "parameter is not of the protocol's type") from None
        except BaseException:
            del self._in_flight[tag]
            raise
        return cancel

    def _execute(self, instance: int, batch_sizes: list[int], inputs: dict,
                 requests: list[tuple] | None):
        """Worker thread, GIL held: the backend's compute for one batch."""
        infos = None if requests is None else [self._request_info(*r) for r in requests]
        try:
            result = self._instances[instance].execute(inputs, batch_sizes, infos)
        except ServerError:
            raise
        except BaseException as e:  # noqa: BLE001 - a model's fault fails its batch only
            log.error("model '%s' version %d failed a batch: %s: %s", self.name, self.version,
                      type(e).__name__, e)
            raise ServerError(f"{type(e).__name__}: {e}", ErrorCode.INTERNAL) from None
        if requests is not None and isinstance(result, list):
            # A request's own ServerError (a subclass may carry more) reaches its caller as is.
            for request, item in zip(requests, result):
                if isinstance(item, ServerError) and request[0] in self._in_flight:
                    self._errors[request[0]] = item
        return result

    def _request_info(self, tag: int, request_id: str, parameters: dict,
                      outputs: list[str], correlation_id: int | str = 0, flags: int = 0,
                      sender=None, cancellation=None) -> RequestInfo:
        pending = self._in_flight.get(tag)  # None for requests native frontends submitted
        objects = pending[2] if pending is not None else None
        return RequestInfo(request_id, {**parameters, **objects} if objects else parameters,
                           outputs, correlation_id, flags, sender, cancellation)

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
            for tag, outputs, error, final in self._handed_off.popleft():
                receiver = (self._in_flight.pop(tag) if final else self._in_flight[tag])[0]
                own_error = self._errors.pop(tag, None) if final else None
                if isinstance(receiver, asyncio.Queue):
                    receiver.put_nowait((
                        None if outputs is None else [OutputTensor(*o) for o in outputs],
                        None if error is None else own_error or ServerError(error[1], error[0]),
                        final))
                elif receiver.done():  # the caller went away
                    continue
                elif error is None:
                    receiver.set_result([OutputTensor(*o) for o in outputs or ()])
                else:
                    receiver.set_exception(own_error or ServerError(error[1], error[0]))

    @property
    def inflight_count(self) -> int:
        return self.model.inflight_count

    @property
    def pending_count(self) -> int:
        """Requests queued and not yet executing."""
        return self.model.pending_count

    def statistics(self) -> dict:
        return self.model.statistics()

    def metric_counts(self) -> dict[str, float]:
        """The counters Triton's metrics report for this version, over its reloads."""
        counts = _metric_counts(self.model.request_counts(), self.model.statistics())
        earlier = self.predecessor.metric_counts() if self.predecessor else self._carried
        return {key: value + earlier.get(key, 0) for key, value in counts.items()}

    def inherit(self) -> None:
        """The predecessor has stopped: keep its final counts, let it go."""
        if self.predecessor is not None:
            self._carried = self.predecessor.metric_counts()
            self.predecessor = None

    def stop(self) -> None:
        """Refuse new requests and run every accepted one; then release the instances. Past
        the stop timeout, what still waits is refused and a hung instance is abandoned: the
        runner is then kept (its thread may still return into the backend and the sink)."""
        if not self.model.stop(self._stop_timeout):
            log.error("model '%s' version %d: an instance was still executing after %g s; "
                      "it is abandoned", self.name, self.version, self._stop_timeout)
            _ABANDONED.append(self)
            for backend in self._instances:
                if backend.closes_while_executing:  # a child process: killing it ends the hang
                    backend.close()
            return
        self._sink.close()
        for backend in self._instances:
            backend.close()


def _metric_counts(requests: dict, statistics: dict) -> dict[str, float]:
    inference = statistics["inference_stats"]
    counts = {"success": requests["success"], "success_ns": requests["success_ns"],
              **{f"failure.{reason}": n for reason, n in requests["failures"].items()},
              "inference_count": statistics["inference_count"],
              "execution_count": statistics["execution_count"]}
    for phase in ("queue", "compute_input", "compute_infer", "compute_output", "cache_hit",
                  "cache_miss"):
        counts[f"{phase}.count"] = inference[phase]["count"]
        counts[f"{phase}.ns"] = inference[phase]["ns"]
    return counts


def model_spec(config: pb.ModelConfig, version: int, labels: dict[str, list[str]],
               request_info: bool = False) -> _core.ModelSpec:
    """What the core's data path needs of a normalized config."""
    def tensor(t):
        reshape = list(t.reshape.shape) if t.HasField("reshape") else None
        return (t.name, wire_name(t.data_type), list(t.dims), getattr(t, "optional", False),
                reshape)
    sequence = config.sequence_batching
    ordered = ((config.HasField("dynamic_batching") and config.dynamic_batching.preserve_ordering)
               or (sequence.HasField("oldest") and sequence.oldest.preserve_ordering))
    # The sequence batcher fills the control inputs: clients never send them.
    controls = {c.name for c in config.sequence_batching.control_input}
    # Implicit state: the core keeps each state output for the sequence's next request.
    states = {s.output_name: (s.output_name, wire_name(s.data_type), list(s.dims), False, None)
              for s in reversed(config.sequence_batching.state)}  # the first of a name counts
    return _core.ModelSpec(config.name, version, config.max_batch_size,
                           [tensor(i) for i in config.input if i.name not in controls],
                           [tensor(o) for o in config.output],
                           labels, ordered, request_info,
                           config.model_transaction_policy.decoupled, list(states.values()))


def scheduler_options(config: pb.ModelConfig, instance_devices: list[int],
                      max_queue_size: int = 0,
                      model_dir: Path | None = None) -> _core.SchedulerOptions:
    """The core's scheduling options from a normalized model config; `max_queue_size` bounds
    the requests the version queues (0 = unbounded but for the queue's capacity)."""
    options = _core.SchedulerOptions()
    options.model_name = config.name
    options.max_pending = max_queue_size
    options.queue_capacity = min(max(max_queue_size, 4096), 1 << 20) if max_queue_size else 1 << 16
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
        # Shapes to compare within a batch: the core has checked fixed dims on arrival.
        batching.equal_shape_inputs = [i.name for i in config.input
                                       if not i.allow_ragged_batch and -1 in i.dims]
        batching.equal_input_sets = any(i.optional for i in config.input)
    if config.HasField("sequence_batching"):
        options.sequence_batching = True
        options.sequence = _sequence_options(config, model_dir or Path())
    # Triton's switch for deterministic batching tests: hold until N requests are queued.
    options.delay_scheduler_count = int(os.environ.get("TRITONSERVER_DELAY_SCHEDULER") or 0)
    return options


def _sequence_options(config: pb.ModelConfig, model_dir: Path) -> _core.SequenceBatchingOptions:
    batcher = config.sequence_batching
    out = _core.SequenceBatchingOptions()
    out.max_batch_size = config.max_batch_size
    out.max_sequence_idle_us = batcher.max_sequence_idle_microseconds
    out.iterative = batcher.iterative_sequence
    # Triton's test hook, with TRITONSERVER_DELAY_SCHEDULER: hold until the backlog has N.
    out.backlog_delay_count = int(os.environ.get("TRITONSERVER_BACKLOG_DELAY_SCHEDULER") or 0)
    if out.backlog_delay_count:
        log.info("Delaying scheduler until %d backlog queued requests...",
                 out.backlog_delay_count)
    if batcher.HasField("oldest"):
        out.oldest = True
        out.max_candidate_sequences = batcher.oldest.max_candidate_sequences
        out.preferred_batch_sizes = list(batcher.oldest.preferred_batch_size)
        out.max_queue_delay_us = batcher.oldest.max_queue_delay_microseconds
    else:
        out.max_queue_delay_us = batcher.direct.max_queue_delay_microseconds
        out.minimum_slot_utilization = batcher.direct.minimum_slot_utilization
    out.controls = [_sequence_control(i.name, c) for i in batcher.control_input
                    for c in i.control]
    out.states = state_specs(config, model_dir)
    return out


def _sequence_control(name: str, control) -> _core.SequenceControl:
    """One control input (validated by the config's loader): its false/true values, or the
    CORRID's data type."""
    for field, dtype in (("int32_false_true", "INT32"), ("fp32_false_true", "FP32"),
                         ("bool_false_true", "BOOL")):
        values = list(getattr(control, field))
        if values:
            return _core.SequenceControl(name, control.kind, dtype, float(values[0]),
                                         float(values[1]))
    return _core.SequenceControl(name, control.kind, wire_name(control.data_type))


def _queue_policy(policy: pb.ModelQueuePolicy) -> _core.QueuePolicy:
    out = _core.QueuePolicy()
    out.delay_on_timeout = policy.timeout_action == pb.ModelQueuePolicy.TimeoutAction.Value("DELAY")
    out.default_timeout_us = policy.default_timeout_microseconds
    out.allow_timeout_override = policy.allow_timeout_override
    out.max_queue_size = policy.max_queue_size
    return out
