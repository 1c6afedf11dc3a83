"""Type stubs for pyserve._grpc_server, the native gRPC frontend (optional; private)."""

from typing import Callable

from pyserve._core import ModelTable, SharedMemoryRegistry

class Server:
    def __init__(self, table: ModelTable, address: str,
                 dispatch: Callable[[str, bytes, Callable[[int, str, bytes], None]], None],
                 threads: int = 2, max_message_bytes: int = ...,
                 shared_memory: SharedMemoryRegistry | None = None) -> None: ...
    @property
    def port(self) -> int: ...
    def stop(self, grace_seconds: float = 0.0) -> None: ...
