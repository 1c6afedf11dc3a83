"""Triton's host policies: `--host-policy=NAME,SETTING=VALUE` names settings, and each
instance runs under the policy its instance group names (`host_policy`), by default "cpu" for
CPU instances and "gpu_<device>" for GPU ones. `cpu-cores` (e.g. "0-3,8") pins the instance's
threads, `numa-node` binds their memory; both apply to the thread that loads the instance and
to its worker thread, as Triton's SetNumaConfigOnThread does. Other settings are kept for the
backends, which read none of them."""

from __future__ import annotations

import contextlib
import os
from typing import Iterator

from pyserve import _core
from pyserve.errors import ServerError


def parse_flag(text: str) -> tuple[str, str, str]:
    """--host-policy's NAME,SETTING=VALUE (Triton's text when it is not that)."""
    name, comma, setting = text.partition(",")
    key, equals, value = setting.partition("=")
    if not (comma and equals and name and key):
        raise ValueError("--host-policy option format is '<policy name>,<setting>=<value>'. "
                         f"Got {text}")
    return name, key, value


def default_name(kind: str, device: int) -> str:
    return "cpu" if kind == "CPU" else f"gpu_{device}"


def resolve(settings: dict[str, str]) -> _core.HostPolicy:
    """The core's policy from a policy's settings; Triton's texts when a value does not parse."""
    cpus: list[int] = []
    if "cpu-cores" in settings:
        for part in settings["cpu-cores"].split(","):
            lower, _, upper = part.partition("-")
            first = _integer("cpu-cores", lower)
            cpus.extend(range(first, _integer("cpu-cores", upper) + 1 if upper else first + 1))
        available = os.sched_getaffinity(0) | set(range(os.cpu_count() or 0))
        if not set(cpus) <= available:
            raise ServerError(f"Unable to set NUMA thread affinity: no CPU "
                              f"{min(set(cpus) - available)} on this host")
    node = _integer("numa-node", settings["numa-node"]) if "numa-node" in settings else -1
    if node >= 0 and not os.path.isdir(f"/sys/devices/system/node/node{node}"):
        raise ServerError(f"Unable to set NUMA memory policy: no NUMA node {node} on this host")
    return _core.HostPolicy(cpus, node)


def _integer(setting: str, text: str) -> int:
    try:
        return int(text)
    except ValueError:
        raise ServerError(f"Parsing '{setting}' value: Can't parse '{text}' to integer") from None


@contextlib.contextmanager
def applied(policy: _core.HostPolicy) -> Iterator[None]:
    """The policy on the calling thread while an instance loads; the thread's own after."""
    if not policy.cpus and policy.numa_node < 0:
        yield
        return
    affinity = os.sched_getaffinity(0)
    _core.apply_host_policy(policy)
    try:
        yield
    finally:
        os.sched_setaffinity(0, affinity)
        if policy.numa_node >= 0:
            _core.reset_numa_memory_policy()
