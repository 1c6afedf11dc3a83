"""Typed results of the client's calls, the same whichever protocol carried them."""

from __future__ import annotations

from dataclasses import dataclass, field, fields
from typing import Any, Mapping

import numpy as np


@dataclass(frozen=True)
class ServerMetadata:
    name: str
    version: str
    extensions: list[str]


@dataclass(frozen=True)
class TensorMetadata:
    name: str
    datatype: str
    shape: list[int]


@dataclass(frozen=True)
class ModelMetadata:
    name: str
    versions: list[str]
    platform: str
    inputs: list[TensorMetadata]
    outputs: list[TensorMetadata]


@dataclass(frozen=True)
class IndexEntry:
    """One model version of RepositoryIndex: state is READY, UNAVAILABLE, LOADING, ..."""
    name: str
    version: str = ""
    state: str = ""
    reason: str = ""


@dataclass(frozen=True)
class RegionStatus:
    """A registered system shared memory region."""
    name: str
    key: str
    offset: int
    byte_size: int


@dataclass(frozen=True)
class Duration:
    """A cumulative statistic: how many times, and nanoseconds in total."""
    count: int = 0
    ns: int = 0

    @property
    def mean_us(self) -> float:
        return self.ns / self.count / 1e3 if self.count else 0.0

    def __sub__(self, other: "Duration") -> "Duration":
        return Duration(self.count - other.count, self.ns - other.ns)


def _duration(entry: Mapping | None) -> Duration:
    entry = entry or {}
    return Duration(int(entry.get("count", 0)), int(entry.get("ns", 0)))


@dataclass(frozen=True)
class InferStats:
    success: Duration = Duration()
    fail: Duration = Duration()
    queue: Duration = Duration()
    compute_input: Duration = Duration()
    compute_infer: Duration = Duration()
    compute_output: Duration = Duration()
    cache_hit: Duration = Duration()
    cache_miss: Duration = Duration()

    def __sub__(self, other: "InferStats") -> "InferStats":
        return InferStats(**{f.name: getattr(self, f.name) - getattr(other, f.name)
                             for f in fields(self)})


@dataclass(frozen=True)
class BatchStats:
    batch_size: int
    compute_input: Duration = Duration()
    compute_infer: Duration = Duration()
    compute_output: Duration = Duration()


@dataclass(frozen=True)
class ModelStatistics:
    """One model version's cumulative statistics; `a - b` gives what happened between."""
    name: str
    version: str
    last_inference: int = 0
    inference_count: int = 0
    execution_count: int = 0
    inference_stats: InferStats = InferStats()
    batch_stats: list[BatchStats] = field(default_factory=list)

    @classmethod
    def from_json(cls, entry: Mapping[str, Any]) -> "ModelStatistics":
        """From Triton's JSON form (HTTP, or the gRPC message through MessageToDict)."""
        stats = entry.get("inference_stats", {})
        return cls(
            name=entry.get("name", ""), version=str(entry.get("version", "")),
            last_inference=int(entry.get("last_inference", 0)),
            inference_count=int(entry.get("inference_count", 0)),
            execution_count=int(entry.get("execution_count", 0)),
            inference_stats=InferStats(**{f.name: _duration(stats.get(f.name))
                                          for f in fields(InferStats)}),
            batch_stats=[BatchStats(int(b.get("batch_size", 0)), _duration(b.get("compute_input")),
                                    _duration(b.get("compute_infer")),
                                    _duration(b.get("compute_output")))
                         for b in entry.get("batch_stats", [])])

    def __sub__(self, other: "ModelStatistics") -> "ModelStatistics":
        before = {b.batch_size: b for b in other.batch_stats}
        batches = []
        for b in self.batch_stats:
            old = before.get(b.batch_size, BatchStats(b.batch_size))
            batches.append(BatchStats(b.batch_size, b.compute_input - old.compute_input,
                                      b.compute_infer - old.compute_infer,
                                      b.compute_output - old.compute_output))
        return ModelStatistics(self.name, self.version, self.last_inference,
                               self.inference_count - other.inference_count,
                               self.execution_count - other.execution_count,
                               self.inference_stats - other.inference_stats, batches)


class InferResult(dict):
    """An inference response: a dict of output name -> numpy array, plus the response's
    model name and version, request id, parameters and (for streams) the final-response flag."""

    __slots__ = ("model_name", "model_version", "id", "parameters", "final")

    def __init__(self, outputs=(), *, model_name: str = "", model_version: str = "",
                 id: str = "", parameters: dict | None = None, final: bool = True) -> None:
        super().__init__(outputs)
        self.model_name = model_name
        self.model_version = model_version
        self.id = id
        self.parameters = parameters or {}
        self.final = final


@dataclass
class Request:
    """One request of a stream (plain dicts of inputs are accepted as well)."""
    inputs: Mapping[str, Any]
    outputs: Any = None
    request_id: str = ""
    sequence_id: int | str = 0
    sequence_start: bool = False
    sequence_end: bool = False
    priority: int = 0
    timeout: int = 0
    parameters: Mapping[str, Any] | None = None


__all__ = ["ServerMetadata", "TensorMetadata", "ModelMetadata", "IndexEntry", "RegionStatus",
           "Duration", "InferStats", "BatchStats", "ModelStatistics", "InferResult", "Request"]
