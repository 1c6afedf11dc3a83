"""The trace flags of `pyserve serve` as tritonserver 2.51 parses them: `--trace-config
[<mode>,]<setting>=<value>` and the deprecated `--trace-file/-level/-rate/-count/
-log-frequency`, with tritonserver's precedence and texts."""

from __future__ import annotations

import argparse
import os
import re
from dataclasses import dataclass, field

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
