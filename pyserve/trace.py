"""Triton's trace extension: the trace flags (`--trace-config` and the deprecated `--trace-*`),
the trace settings (global and per model, merged as Triton's TraceManager merges them), and
the writer thread that turns the core's finished records into Triton's trace file or
OpenTelemetry spans.

The core samples and stamps (csrc/core/trace.h); this module tells it each setting's
sampling half and drains the finished records in batches, off the data path."""

from __future__ import annotations

import argparse
import itertools
import sys
import json
import logging
import os
import re
import threading
import time
from dataclasses import dataclass, field
from typing import Callable

from pyserve import _core
from pyserve.errors import ErrorCode, ServerError

log = logging.getLogger("pyserve")

OFF, TIMESTAMPS, TENSORS = 0, 1, 2
TRITON, OPENTELEMETRY = "triton", "opentelemetry"
_INT32 = (-2**31, 2**31 - 1)
_UINT32_MAX = 2**32 - 1
MIN_TRACE_COUNT = -1
# OpenTelemetry's batch span processor settings and their defaults (Triton reads the same
# environment variables when the flag does not set them).
_BSP = {"bsp_max_queue_size": ("OTEL_BSP_MAX_QUEUE_SIZE", "2048"),
        "bsp_schedule_delay": ("OTEL_BSP_SCHEDULE_DELAY", "5000"),
        "bsp_max_export_batch_size": ("OTEL_BSP_MAX_EXPORT_BATCH_SIZE", "512")}


class TraceFlagError(ValueError):
    """A trace flag's value that tritonserver refuses (its text)."""


@dataclass
class TraceConfig:
    """What the command line says: the global setting and each mode's own options."""
    level: int = OFF
    rate: int = 1000
    count: int = -1
    log_frequency: int = 0
    file: str = ""
    mode: str = TRITON
    options: dict[str, list[tuple[str, str]]] = field(default_factory=dict)  # mode -> pairs


def _parse_int(text: str, low: int = _INT32[0], high: int = _INT32[1]) -> int:
    if not re.fullmatch(r"[+-]?\d+", text.strip()):
        raise TraceFlagError(f"invalid argument: {text}")
    value = int(text)
    if not low <= value <= high:
        raise TraceFlagError(f"out of range: {text}")
    return value


def _parse_level(text: str) -> int:
    text = text.lower()
    if text in ("false", "off"):
        return OFF
    if text in ("true", "on", "min", "max", "timestamps"):
        return TIMESTAMPS
    if text == "tensors":
        return TENSORS
    raise TraceFlagError(f"invalid value for trace level option: {text}")


def _parse_mode(text: str) -> str:
    if text.lower() in (TRITON, OPENTELEMETRY):
        return text.lower()
    raise TraceFlagError(f"invalid value for trace mode option: {text.lower()}. Available "
                         'options are "triton" and "opentelemetry"')


def _config_entry(arg: str) -> tuple[str, str, str]:
    """--trace-config [<mode>,]<setting>=<value> as tritonserver splits it."""
    comma = arg.find(",")
    mode = ""
    if comma > 0:
        mode = _parse_mode(arg[:comma])
    elif comma == 0:
        raise TraceFlagError("No trace mode specified. --trace-config option format is "
                             f"<trace mode>,<setting>=<value> or <setting>=<value>. Got {arg}")
    equals = arg.find("=", comma + 1)
    setting, value = arg[comma + 1:equals], arg[equals + 1:]
    if equals < 0 or not setting or not value:
        raise TraceFlagError("--trace-config option format is "
                             f"'<trace mode>,<setting>=<value>'. Got {arg}")
    return mode, setting, value


def parse_flags(trace_config: list[str], file: str | None = None, levels: list[str] = (),
                rate: str | None = None, count: str | None = None,
                log_frequency: str | None = None) -> TraceConfig:
    """The trace flags into a TraceConfig, with tritonserver's precedence (--trace-config
    over the deprecated flags; an explicit OFF anywhere turns tracing off)."""
    config = TraceConfig()
    explicit_off = False
    for level in levels:
        parsed = _parse_level(level)
        explicit_off |= parsed == OFF
        config.level |= parsed
    if rate is not None:
        config.rate = _parse_int(rate)
    if count is not None:
        config.count = _parse_int(count)
    if log_frequency is not None:
        config.log_frequency = _parse_int(log_frequency)
    if file is not None:
        config.file = file
    for arg in trace_config:
        mode, setting, value = _config_entry(arg)
        config.options.setdefault(mode, []).append((setting, value))
    for setting, value in config.options.get("", []):
        try:
            if setting == "rate":
                config.rate = _parse_int(value)
            elif setting == "level":
                parsed = _parse_level(value)
                explicit_off |= parsed == OFF
                config.level |= parsed
            elif setting == "mode":
                config.mode = _parse_mode(value)
            elif setting == "count":
                config.count = _parse_int(value)
        except TraceFlagError as e:
            raise TraceFlagError(f'Bad option: "--trace-config {setting}".\n{e}') from None
    if config.mode == TRITON:
        for setting, value in config.options.get(TRITON, []):
            try:
                if setting == "file":
                    config.file = value
                elif setting == "log-frequency":
                    config.log_frequency = _parse_int(value)
            except TraceFlagError as e:
                raise TraceFlagError(
                    f'Bad option: "--trace-config triton,{setting}".\n{e}') from None
    else:
        otel = config.options.setdefault(OPENTELEMETRY, [])
        for i, (setting, value) in enumerate(otel):
            if setting in _BSP:
                try:
                    otel[i] = (setting, str(_parse_int(value, 0, _UINT32_MAX)))
                except TraceFlagError as e:
                    raise TraceFlagError(
                        f'Bad option: "--trace-config opentelemetry,{setting}".\n{e}') from None
        given = {setting for setting, _ in otel}
        for setting, (variable, default) in _BSP.items():
            if setting not in given:
                value = os.environ.get(variable, default)
                try:
                    otel.append((setting, str(_parse_int(value, 0, _UINT32_MAX))))
                except TraceFlagError as e:
                    raise TraceFlagError(f'Bad option: "{variable}".\n{e}') from None
    if explicit_off:
        config.level = OFF
    return config


_DEPRECATED = {"--trace-file": "--trace-config triton,file=<filepath>",
               "--trace-level": "--trace-config level=<OFF|TIMESTAMPS|TENSORS>",
               "--trace-rate": "--trace-config rate=<rate value>",
               "--trace-count": "--trace-config count=<count value>",
               "--trace-log-frequency": "--trace-config triton,log-frequency=<log frequency value>"}


def add_flags(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group("tracing (Triton's trace extension)")
    group.add_argument("--trace-config", action="append", default=[],
                       metavar="[MODE,]SETTING=VALUE",
                       help="level=OFF|TIMESTAMPS|TENSORS, rate=N (1 of every N requests), "
                            "count=N (-1: unlimited), mode=triton|opentelemetry; "
                            "triton,file=PATH, triton,log-frequency=N; opentelemetry,url=URL, "
                            "opentelemetry,resource=KEY=VALUE, opentelemetry,bsp_max_queue_size="
                            "N (also bsp_schedule_delay, bsp_max_export_batch_size)")
    for flag in _DEPRECATED:
        group.add_argument(flag, action="append" if flag == "--trace-level" else "store",
                           metavar="VALUE", help=f"deprecated: {_DEPRECATED[flag]}")


def configure_from_args(args: argparse.Namespace) -> TraceManager:
    """The trace flags of `pyserve serve` into the server's trace settings; a value
    tritonserver refuses stops start-up with its text."""
    for flag, instead in _DEPRECATED.items():
        if getattr(args, flag[2:].replace("-", "_")) is not None:
            print(f"Warning: '{flag}' has been deprecated and will be removed in a future "
                  f"release. Please use '{instead}' instead.", file=sys.stderr)
    try:
        config = parse_flags(args.trace_config, args.trace_file, args.trace_level or [],
                             args.trace_rate, args.trace_count, args.trace_log_frequency)
        return configure(config)
    except (TraceFlagError, ImportError) as e:
        raise SystemExit(f"pyserve: {e}") from None


@dataclass
class _Setting:
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
        self._default = _Setting(**values)
        self._global = self._install("", _Setting(**values))
        self._models: dict[str, _Setting] = {}
        self._fallback_models: set[str] = set()

    def _install(self, model: str, setting: _Setting) -> _Setting:
        setting.key = next(self._keys)
        self.writer.add(setting)
        _core.trace_configure(model, setting.key, setting.level != OFF and (
            setting.mode == OPENTELEMETRY or bool(setting.file)),
            setting.rate, setting.count, setting.mode == OPENTELEMETRY)
        return setting

    def _refresh_counts(self) -> None:
        """The core counts traces down; the settings read their count from it."""
        self._global.count = _core.trace_count("")
        for model, setting in self._models.items():
            setting.count = _core.trace_count(model)

    def setting(self, model: str) -> _Setting:
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
        setting = _Setting(**values, file=file, mode=fallback.mode, options=fallback.options,
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


def _trace_items(record: tuple) -> list[str]:
    """One trace as Triton's JSON objects: the model's, then one per timestamp."""
    trace_id, _, model, version, request_id, _, stamps = record[:7]
    head = {"id": trace_id, "model_name": model, "model_version": version}
    if request_id:
        head["request_id"] = request_id
    items = []
    for name, ns in sorted(stamps, key=lambda s: s[1]):
        if name == "REQUEST_START":
            items.append(json.dumps(head, separators=(",", ":")))
        items.append(json.dumps({"id": trace_id, "timestamps": [{"name": name, "ns": ns}]},
                                separators=(",", ":")))
    return items


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
        self._settings: dict[int, _Setting] = {}
        self._held: dict[int, bool] = {}  # setting key -> traces wait in _collected
        self._files: dict[str, _TraceFile] = {}
        self._collected: dict[int, _Collected] = {}
        self._otel = None
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def add(self, setting: _Setting) -> None:
        self._settings[setting.key] = setting
        self._held[setting.key] = setting.log_frequency != 0 or setting.count >= 0
        if setting.mode == TRITON and setting.file and setting.file not in self._files:
            self._files[setting.file] = _TraceFile(setting.file)
        if setting.mode == OPENTELEMETRY and self._otel is None and setting.level != OFF:
            from pyserve.trace_otel import OpenTelemetryExport
            self._otel = OpenTelemetryExport(setting.options.get(OPENTELEMETRY, []))
        if self._thread is None and setting.level != OFF:
            self._thread = threading.Thread(target=self._run, name="pyserve-trace", daemon=True)
            self._thread.start()

    def _run(self) -> None:
        while not self._stop.is_set():
            self._write(_core.trace_drain(200))
        self._write(_core.trace_drain(0))

    def _write(self, records: list[tuple]) -> None:
        for record in records:
            setting = self._settings.get(record[1])
            if setting is None:
                continue
            try:
                if setting.mode == OPENTELEMETRY:
                    self._otel.export(record)
                else:
                    self._write_triton(setting, record)
            except Exception:  # a trace that cannot be written must not stop the writer
                log.exception("failed to write trace %d", record[0])

    def _write_triton(self, setting: _Setting, record: tuple) -> None:
        items = _trace_items(record)
        trace_file = self._files[setting.file]
        if not self._held[setting.key]:
            trace_file.append(items)
            return
        sample, last = record[7], record[8]
        state = self._collected.setdefault(setting.key, _Collected())
        state.items.extend(items)
        state.in_stream += 1
        state.collected += 1
        if last:
            state.last_sample = sample
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


def handle_settings(model: str, changes: dict[str, list[str] | None],
                    is_ready: Callable[[str], bool]) -> dict[str, list[str] | str]:
    """One TraceSetting request of either protocol: the changes it asks for (none: a read),
    then the model's (or the global) settings."""
    if model and not is_ready(model):
        raise ServerError(f"Request for unknown model : {model}")
    if changes:
        manager().update(model, changes)
    return manager().settings(model)


_manager: TraceManager | None = None


def configure(config: TraceConfig) -> TraceManager:
    global _manager
    _manager = TraceManager(config)
    return _manager


def manager() -> TraceManager:
    global _manager
    if _manager is None:  # a server started without the command line: tracing off
        _manager = TraceManager(TraceConfig())
    return _manager


def close() -> None:
    if _manager is not None:
        _manager.close()


# The steady clock's epoch: the core stamps with it (CLOCK_MONOTONIC, as time.monotonic_ns).
def wall_offset_ns() -> int:
    return time.time_ns() - time.monotonic_ns()
