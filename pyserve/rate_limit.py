"""Triton's rate limiter, the shell's part: --rate-limit and --rate-limit-resource as
tritonserver parses them, and what each instance of a config asks of the core's limiter
(its instance group's `rate_limiter`). The limiter itself is native (csrc/core/rate_limiter.h)."""

from __future__ import annotations

from typing import TYPE_CHECKING, Sequence

from pyserve import _core

if TYPE_CHECKING:
    from pyserve.backends import InstanceSpec
    from pyserve.protocol import pb

MODES = ("off", "execution_count")


def parse_mode(text: str) -> str:
    """--rate-limit, case-insensitive as in Triton."""
    mode = text.lower()
    if mode not in MODES:
        raise ValueError("invalid argument for --rate-limit")  # Triton's text
    return mode


def parse_resource(text: str) -> tuple[str, int, int]:
    """--rate-limit-resource=NAME:COUNT[:DEVICE] as (name, count, device; -1 = every device).
    Triton's texts; a count or device that is negative or has trailing characters is refused
    too (Triton reads "4x" as 4 and a negative count as a huge one)."""
    parts = text.split(":")
    if len(parts) not in (2, 3):
        raise ValueError("--rate-limit-resource option format is "
                         "'<resource_name>:<count>:<device>' or '<resource_name>:<count>'. "
                         f"Got {text}")
    count = _non_negative_int(parts[1])
    device = _non_negative_int(parts[2]) if len(parts) == 3 else -1
    return parts[0], count, device


def _non_negative_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise ValueError(f"Invalid option value. Got {text}") from None
    if value >= 2**31:
        raise ValueError(f"Provided option value is out of bound. Got {text}")
    if value < 0:
        raise ValueError(f"Invalid option value. Got {text}")
    return value


def instance_limits(config: pb.ModelConfig,
                    specs: Sequence[InstanceSpec]) -> list[_core.InstanceRateLimit]:
    """Per instance, what it asks of the limiter: its group's rate_limiter (resources and
    priority), on its device (the GPU; 0 for a CPU instance, as in Triton). Empty when no
    group has a rate_limiter; a group with only a priority asks for nothing, but its
    instances still take a model's work by priority."""
    groups = config.instance_group
    if not any(group.HasField("rate_limiter") for group in groups):
        return []
    return [_core.InstanceRateLimit(
                [(r.name, getattr(r, "global"), r.count)
                 for r in groups[spec.group].rate_limiter.resources],
                groups[spec.group].rate_limiter.priority, spec.device_id)
            for spec in specs]
