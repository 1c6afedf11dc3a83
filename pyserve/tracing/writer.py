"""The writer thread: drains the core's finished traces in batches, off the data path, and
writes each as its setting asks: Triton's trace file (a JSON array; `<file>.<n>` files per
log_frequency or spent count) or OpenTelemetry spans (otel.py)."""

from __future__ import annotations

import itertools
import json
import logging
import os
import struct
import threading
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, NamedTuple

import numpy as np

from pyserve import _core
from pyserve.tracing.flags import OFF, OPENTELEMETRY, TIMESTAMPS, TRITON

if TYPE_CHECKING:
    from pyserve.tracing.settings import Setting

log = logging.getLogger("pyserve")


class _TraceFile:
    """One trace file as Triton writes it: a JSON array, traces appended as they finish
    (kept a valid array after each write), and `<file>.<n>` files of log_frequency traces."""

    def __init__(self, path: str) -> None:
        self.path = path
        self._index = itertools.count()
        self._started = False

    def append(self, items: list[str]) -> None:
        if not items:
            return
        try:
            if not self._started:
                with open(self.path, "w") as f:
                    f.write("[" + ",".join(items) + "]")
                self._started = True
            else:
                with open(self.path, "r+") as f:
                    f.seek(0, os.SEEK_END)
                    f.seek(f.tell() - 1)
                    f.write("," + ",".join(items) + "]")
        except OSError as e:
            log.error("failed creating trace file: %s", e)

    def write_indexed(self, items: list[str]) -> None:
        try:
            with open(f"{self.path}.{next(self._index)}", "w") as f:
                f.write("[" + ",".join(items) + "]")
        except OSError as e:
            log.error("failed creating trace file: %s", e)


class Record(NamedTuple):
    """A finished trace as the core hands it over (_core.trace_drain)."""
    id: int
    setting: int
    model: str
    version: int
    request_id: str
    traceparent: str
    timestamps: list  # (name, steady-clock ns)
    sample: int
    last: bool
    tensors: list  # (activity, name, datatype, shape, bytes)


# The timestamp each tensor activity follows in Triton's trace, and the one it precedes.
_AFTER = {"TENSOR_QUEUE_INPUT": "QUEUE_START", "TENSOR_BACKEND_INPUT": "COMPUTE_START"}
_BEFORE = {"TENSOR_BACKEND_OUTPUT": "COMPUTE_END"}
_NUMPY = {"BOOL": "?", "UINT8": "u1", "UINT16": "<u2", "UINT32": "<u4", "UINT64": "<u8",
          "INT8": "i1", "INT16": "<i2", "INT32": "<i4", "INT64": "<i8", "FP32": "<f4",
          "FP64": "<f8"}


def _json(value: dict) -> str:
    return json.dumps(value, separators=(",", ":"))


def _tensor_data(datatype: str, data: bytes) -> str:
    """The elements as Triton's tracer prints them (ostream's defaults; no FP16/BF16)."""
    if datatype == "BYTES":
        elements, offset = [], 0
        while offset + 4 <= len(data):
            (size,) = struct.unpack_from("<I", data, offset)
            offset += 4
            elements.append('"' + data[offset:offset + size].decode("utf-8", "replace") + '"')
            offset += size
        return ",".join(elements)
    if datatype not in _NUMPY:
        return ""
    values = np.frombuffer(data, _NUMPY[datatype]).tolist()
    if datatype in ("FP32", "FP64"):
        return ",".join(format(v, "g") for v in values)
    return ",".join(str(int(v)) for v in values)


def _tensor_item(trace_id: int, tensor: tuple) -> str:
    activity, name, datatype, shape, data = tensor
    return _json({"id": trace_id, "activity": activity, "tensor": {
        "name": name, "data": _tensor_data(datatype, data),
        "shape": ",".join(str(d) for d in shape), "dtype": datatype}})


def _trace_items(record: Record, timestamps: bool = True) -> list[str]:
    """One trace as Triton's JSON objects: the model's and one per timestamp (TIMESTAMPS
    level), one per tensor (TENSORS level), in the order Triton captures them."""
    head = {"id": record.id, "model_name": record.model, "model_version": record.version}
    if record.request_id:
        head["request_id"] = record.request_id
    tensors = {}
    for tensor in record.tensors:
        tensors.setdefault(tensor[0], []).append(_tensor_item(record.id, tensor))
    items = []
    for name, ns in sorted(record.timestamps, key=lambda s: s[1]):
        for activity, before in _BEFORE.items():
            if before == name:
                items += tensors.pop(activity, [])
        if timestamps:
            if name == "REQUEST_START":
                items.append(_json(head))
            items.append(_json({"id": record.id, "timestamps": [{"name": name, "ns": ns}]}))
        for activity, after in _AFTER.items():
            if after == name:
                items += tensors.pop(activity, [])
    return items + [item for rest in tensors.values() for item in rest]


@dataclass
class _Collected:
    """A setting's traces not yet in a file (Triton's trace stream of a TraceSetting)."""
    items: list[str] = field(default_factory=list)
    in_stream: int = 0
    collected: int = 0
    last_sample: int = 0  # the sample that took the setting's last count; 0 = not yet


class TraceWriter:
    """Drains the core's finished traces on its own thread and writes each to the output of
    the setting that sampled it. As Triton does: a setting without log_frequency or count
    appends to its file; with log_frequency, every that many traces go to `<file>.<n>`; with
    a count, its traces go to `<file>.<n>` once the count is spent and every sampled trace is
    collected; what is left at exit goes to `<file>.<n>` (log_frequency) or to the file."""

    def __init__(self) -> None:
        self._settings: dict[int, Setting] = {}
        self._held: dict[int, bool] = {}  # setting key -> traces wait in _collected
        self._files: dict[str, _TraceFile] = {}
        self._collected: dict[int, _Collected] = {}
        self._otel = None
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def add(self, setting: Setting) -> None:
        self._settings[setting.key] = setting
        self._held[setting.key] = setting.log_frequency != 0 or setting.count >= 0
        if setting.mode == TRITON and setting.file and setting.file not in self._files:
            self._files[setting.file] = _TraceFile(setting.file)
        if setting.mode == OPENTELEMETRY and self._otel is None and setting.level != OFF:
            from pyserve.tracing.otel import OpenTelemetryExport
            self._otel = OpenTelemetryExport(setting.options.get(OPENTELEMETRY, []))
        if self._thread is None and setting.level != OFF:
            self._thread = threading.Thread(target=self._run, name="pyserve-trace", daemon=True)
            self._thread.start()

    def _run(self) -> None:
        while not self._stop.is_set():
            self._write(_core.trace_drain(200))
        self._write(_core.trace_drain(0))

    def _write(self, records: list[tuple]) -> None:
        for record in map(Record._make, records):
            setting = self._settings.get(record.setting)
            if setting is None:
                continue
            try:
                if setting.mode == OPENTELEMETRY:
                    self._otel.export(record)
                else:
                    self._write_triton(setting, record)
            except Exception:  # a trace that cannot be written must not stop the writer
                log.exception("failed to write trace %d", record.id)

    def _write_triton(self, setting: Setting, record: Record) -> None:
        items = _trace_items(record, bool(setting.level & TIMESTAMPS))
        trace_file = self._files[setting.file]
        if not self._held[setting.key]:
            trace_file.append(items)
            return
        state = self._collected.setdefault(setting.key, _Collected())
        state.items.extend(items)
        state.in_stream += 1
        state.collected += 1
        if record.last:
            state.last_sample = record.sample
        if ((state.last_sample and state.collected == state.last_sample)
                or (setting.log_frequency and state.in_stream >= setting.log_frequency)):
            trace_file.write_indexed(state.items)
            state.items, state.in_stream = [], 0

    def close(self) -> None:
        """Write what is left (log_frequency's partial group to its own indexed file)."""
        if self._thread is not None:
            self._stop.set()
            self._thread.join()
        for key, state in self._collected.items():
            setting = self._settings[key]
            if state.items and setting.log_frequency:
                self._files[setting.file].write_indexed(state.items)
            elif state.items:
                self._files[setting.file].append(state.items)
        self._collected.clear()
        if self._otel is not None:
            self._otel.shutdown()
