"""pyserve's client: one numpy-first API over gRPC and HTTP, sync and asyncio.

    from pyserve.client import Client

    with Client("127.0.0.1:8001") as client:            # "http://127.0.0.1:8000" for HTTP
        out = client.infer("simple", {"INPUT0": a, "INPUT1": b})
        out["OUTPUT0"]                                   # a numpy array

Works against pyserve and Triton alike. Every failure raises InferenceServerError with the
server's status (a gRPC code name) and text. `Client` is thread-safe; `AsyncClient` belongs
to one event loop.
"""

from pyserve.client._client import AsyncClient, Client, parse_url
from pyserve.client._shm import SharedMemoryRegion
from pyserve.client._tensors import BF16_DTYPE
from pyserve.client._types import (BatchStats, Duration, IndexEntry, InferResult, InferStats,
                                   ModelMetadata, ModelStatistics, RegionStatus, Request,
                                   ServerMetadata, TensorMetadata)
from pyserve.client.errors import InferenceServerError
from pyserve.client.routing import SEQUENCE_ID_HEADER, sequence_headers

__all__ = ["Client", "AsyncClient", "InferenceServerError", "InferResult", "Request",
           "SharedMemoryRegion", "ServerMetadata", "ModelMetadata", "TensorMetadata",
           "IndexEntry", "RegionStatus", "ModelStatistics", "InferStats", "BatchStats",
           "Duration", "BF16_DTYPE", "parse_url", "SEQUENCE_ID_HEADER", "sequence_headers"]
