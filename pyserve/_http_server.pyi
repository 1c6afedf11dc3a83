"""Type stubs for pyserve._http_server, the native HTTP frontend (optional; private)."""

from pyserve._core import ModelTable, SharedMemoryRegistry

class Server:
    def __init__(self, table: ModelTable, host: str, port: int, shell_port: int,
                 threads: int = 64, max_body_bytes: int = ...,
                 shared_memory: SharedMemoryRegistry | None = None) -> None: ...
    @property
    def port(self) -> int: ...
    def stop(self) -> None: ...
