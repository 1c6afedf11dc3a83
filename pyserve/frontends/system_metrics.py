"""The host's and the GPUs' figures for Triton's metrics, sampled every --metrics-interval-ms
on a thread of their own (as Triton polls them), read at scrape time.

CPU: /proc/stat (utilization over the last interval, all cores) and /proc/meminfo (used =
MemTotal - MemAvailable), as Triton reads them. GPUs: NVML through nvidia-ml-py (Triton uses
DCGM), only where the library loads and finds a device."""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path

from pyserve.periodic import Periodic

log = logging.getLogger("pyserve")


@dataclass
class Gpu:
    uuid: str
    utilization: float = 0.0  # [0, 1]
    memory_total: int = 0
    memory_used: int = 0
    power_usage: float = 0.0  # W
    power_limit: float = 0.0  # W
    energy: float = 0.0  # J since the server started


@dataclass
class Sample:
    cpu_utilization: float = 0.0
    memory_total: int = 0
    memory_used: int = 0
    gpus: list[Gpu] = field(default_factory=list)


def _cpu_times() -> tuple[int, int]:
    """(busy, total) jiffies over every core."""
    fields = [int(x) for x in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]]
    idle = fields[3] + (fields[4] if len(fields) > 4 else 0)  # idle + iowait
    total = sum(fields[:8])  # guest time is already counted in user and nice
    return total - idle, total


def _memory() -> tuple[int, int]:
    """(total, used) bytes."""
    values = {}
    for line in Path("/proc/meminfo").read_text().splitlines():
        key, _, rest = line.partition(":")
        values[key] = int(rest.split()[0]) * 1024
    return values["MemTotal"], values["MemTotal"] - values["MemAvailable"]


class _Nvml:
    """The GPUs NVML sees; None from open() where there are none or no library."""

    def __init__(self, pynvml, handles) -> None:
        self._nvml = pynvml
        self._handles = handles
        self._energy_start = [self._energy(h) for h in handles]

    @classmethod
    def open(cls) -> _Nvml | None:
        try:
            import pynvml
        except ImportError:
            log.info("GPU metrics need nvidia-ml-py (pip install nvidia-ml-py); not collected")
            return None
        try:
            pynvml.nvmlInit()
            handles = [pynvml.nvmlDeviceGetHandleByIndex(i)
                       for i in range(pynvml.nvmlDeviceGetCount())]
        except pynvml.NVMLError as e:
            log.info("GPU metrics not collected: NVML: %s", e)
            return None
        if not handles:
            pynvml.nvmlShutdown()
            return None
        log.info("Collecting metrics for GPU(s): %d", len(handles))
        return cls(pynvml, handles)

    def _energy(self, handle) -> float:
        try:
            return self._nvml.nvmlDeviceGetTotalEnergyConsumption(handle) / 1000  # mJ -> J
        except self._nvml.NVMLError:  # not supported by every GPU
            return 0.0

    def sample(self) -> list[Gpu]:
        nvml, gpus = self._nvml, []
        for handle, start in zip(self._handles, self._energy_start):
            uuid = nvml.nvmlDeviceGetUUID(handle)
            gpu = Gpu(uuid.decode() if isinstance(uuid, bytes) else uuid)
            memory = nvml.nvmlDeviceGetMemoryInfo(handle)
            gpu.memory_total, gpu.memory_used = int(memory.total), int(memory.used)
            gpu.utilization = nvml.nvmlDeviceGetUtilizationRates(handle).gpu / 100
            try:
                gpu.power_usage = nvml.nvmlDeviceGetPowerUsage(handle) / 1000  # mW -> W
                gpu.power_limit = nvml.nvmlDeviceGetEnforcedPowerLimit(handle) / 1000
            except nvml.NVMLError:
                pass
            gpu.energy = self._energy(handle) - start
            gpus.append(gpu)
        return gpus

    def close(self) -> None:
        self._nvml.nvmlShutdown()


class SystemSampler(Periodic):
    """Samples what is allowed every `interval_ms`; `latest` is what the scrape reports."""

    def __init__(self, interval_ms: float, cpu: bool = True, gpu: bool = True) -> None:
        super().__init__(self._sample, interval_ms / 1000, "ps-metrics-poll")
        self.cpu = cpu
        self._nvml = _Nvml.open() if gpu else None
        self.latest = Sample()
        self._previous_cpu: tuple[int, int] | None = None

    @property
    def gpu(self) -> bool:
        return self._nvml is not None

    def stop(self) -> None:
        super().stop()
        if self._nvml is not None:
            self._nvml.close()

    def _sample(self) -> None:
        sample = Sample()
        if self.cpu:
            busy, total = _cpu_times()
            if self._previous_cpu is not None and total > self._previous_cpu[1]:
                sample.cpu_utilization = ((busy - self._previous_cpu[0])
                                          / (total - self._previous_cpu[1]))
            self._previous_cpu = (busy, total)
            sample.memory_total, sample.memory_used = _memory()
        if self._nvml is not None:
            sample.gpus = self._nvml.sample()
        self.latest = sample
