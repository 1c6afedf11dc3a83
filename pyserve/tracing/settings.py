"""The trace settings: the command line's, the global one and each model's, merged field
by field as Triton's TraceManager merges them, with the trace extension's checks and texts.
Each setting's sampling half goes to the core's Tracer (csrc/core/trace.h)."""

from __future__ import annotations

import itertools
import re
import threading
from dataclasses import dataclass

from pyserve import _core
from pyserve.errors import ErrorCode, ServerError
from pyserve.tracing.flags import (_INT32, _UINT32_MAX, MIN_TRACE_COUNT, OFF, OPENTELEMETRY,
                                   TENSORS, TIMESTAMPS, TRITON, TraceConfig)
from pyserve.tracing.writer import TraceWriter


@dataclass
class Setting:
    """One trace setting (Triton's TraceSetting): values, which were set rather than
    inherited, and the key its traces carry back from the core."""
    level: int
    rate: int
    count: int
    log_frequency: int
    file: str
    mode: str
    options: dict
    specified: frozenset = frozenset()
    key: int = 0

    def invalid_reason(self) -> str:
        if self.level == OFF:
            return "tracing is disabled"
        if self.rate == 0:
            return "sample rate must be non-zero"
        if self.mode == TRITON and not self.file:
            return "trace file name is not given"
        return ""


_FIELDS = ("level", "rate", "count", "log_frequency")


class TraceManager:
    """The settings: global (falling back on the command line's) and per model (falling
    back on the global one, field by field), as Triton's TraceManager keeps them."""

    def __init__(self, config: TraceConfig) -> None:
        self._keys = itertools.count(1)
        self._lock = threading.Lock()
        self.writer = TraceWriter()
        # Unsigned in Triton: a negative rate or frequency wraps.
        values = dict(level=config.level, rate=config.rate & _UINT32_MAX, count=config.count,
                      log_frequency=config.log_frequency & _UINT32_MAX, file=config.file, mode=config.mode,
                      options=config.options)
        self._default = Setting(**values)
        self._global = self._install("", Setting(**values))
        self._models: dict[str, Setting] = {}
        self._fallback_models: set[str] = set()

    def _install(self, model: str, setting: Setting) -> Setting:
        setting.key = next(self._keys)
        self.writer.add(setting)
        _core.trace_configure(model, setting.key, setting.level != OFF and (
            setting.mode == OPENTELEMETRY or bool(setting.file)),
            setting.rate, setting.count, setting.mode == OPENTELEMETRY,
            # Triton's OpenTelemetry mode writes no tensors.
            bool(setting.level & TENSORS) and setting.mode == TRITON)
        return setting

    def _refresh_counts(self) -> None:
        """The core counts traces down; the settings read their count from it."""
        self._global.count = _core.trace_count("")
        for model, setting in self._models.items():
            setting.count = _core.trace_count(model)

    def setting(self, model: str) -> Setting:
        return self._models.get(model, self._global)

    def settings(self, model: str = "") -> dict[str, list[str] | str]:
        """The extension's answer: values as strings, trace_level a list."""
        with self._lock:
            self._refresh_counts()
            s = self.setting(model)
        level = (["OFF"] if s.level == OFF else
                 [name for bit, name in ((TIMESTAMPS, "TIMESTAMPS"), (TENSORS, "TENSORS"))
                  if s.level & bit])
        out: dict[str, list[str] | str] = {"trace_level": level, "trace_rate": str(s.rate),
                                           "trace_count": str(s.count)}
        if s.mode == TRITON:
            out["log_frequency"] = str(s.log_frequency)
            out["trace_file"] = s.file
        out["trace_mode"] = s.mode
        for key, value in s.options.get(s.mode, []):
            if key not in ("file", "log-frequency"):
                out[key] = value
        return out

    def update(self, model: str, changes: dict[str, list[str] | None]) -> None:
        """Apply the settings a client sent (a value list; None or [] clears the setting, so
        that it follows the fallback again), with Triton's checks and texts."""
        if "trace_file" in changes:
            raise ServerError("trace file location can not be updated through network "
                              "protocol", ErrorCode.UNSUPPORTED)
        new: dict[str, int | None] = {}  # None: clear
        if "trace_level" in changes:
            values = changes["trace_level"]
            if not values:
                new["level"] = None
            else:
                level = OFF
                for text in values:
                    if text == "OFF":
                        if len(values) != 1:
                            raise ServerError("Expect only one trace level 'OFF' is specified")
                        new["level"] = OFF
                    elif text in ("TIMESTAMPS", "TENSORS"):
                        level |= TIMESTAMPS if text == "TIMESTAMPS" else TENSORS
                        new["level"] = level
        for name, field_name in (("trace_rate", "rate"), ("trace_count", "count"),
                                 ("log_frequency", "log_frequency")):
            if name not in changes:
                continue
            values = changes[name]
            if not values:
                new[field_name] = None
            elif len(values) != 1:
                raise ServerError(f"expect only 1 value for '{name}'")
            else:
                new[field_name] = _setting_value(name, values[0])
        with self._lock:
            self._refresh_counts()
            self._update(model, new)
            if not model:  # models that follow the global setting in part follow it anew
                for name in list(self._fallback_models):
                    self._update(name, {})

    def _update(self, model: str, new: dict[str, int | None]) -> None:
        current = self._models.get(model) if model else self._global
        fallback = self._global if model else self._default
        values = {f: getattr(fallback, f) for f in _FIELDS}
        specified = set()
        for f in _FIELDS:
            if f in new and new[f] is None:
                continue
            if f in new or (current is not None and f in current.specified):
                specified.add(f)
                values[f] = new[f] if f in new else getattr(current, f)
        file = fallback.file
        if current is not None and "file" in current.specified:
            specified.add("file")
            file = current.file
        if model:
            if specified >= {*_FIELDS, "file"}:
                self._fallback_models.discard(model)
            elif not specified:
                if model in self._models:
                    del self._models[model]
                    _core.trace_forget(model)
                self._fallback_models.discard(model)
                return
            else:
                self._fallback_models.add(model)
        setting = Setting(**values, file=file, mode=fallback.mode, options=fallback.options,
                           specified=frozenset(specified))
        reason = setting.invalid_reason()
        if setting.level != OFF and (reason or setting.count == 0):  # Triton's Valid()
            raise ServerError(f"Attempting to set invalid trace setting :{reason}")
        if model:
            self._models[model] = self._install(model, setting)
        else:
            self._global = self._install("", setting)

    def close(self) -> None:
        self.writer.close()


def _setting_value(name: str, text: str) -> int:
    """A number as Triton's std::stoi reads it (a leading integer), with its texts."""
    match = re.match(r"\s*[+-]?\d+", text)
    low = MIN_TRACE_COUNT if name == "trace_count" else 0
    high = _INT32[1] if name == "trace_count" else _UINT32_MAX
    if match is None:
        raise ServerError(f"Unable to parse '{name}', got: {text}")
    value = int(match.group())
    if not _INT32[0] <= value <= _INT32[1]:
        raise ServerError(f"Unable to parse '{name}', value is out of range [ {low}, {high} ], "
                          f"got: {text}")
    if name == "trace_count" and value < MIN_TRACE_COUNT:
        raise ServerError(f"Unable to parse '{name}'. Expecting value >= {MIN_TRACE_COUNT}, "
                          f"got: {text}")
    return value & _UINT32_MAX if name != "trace_count" else value
