"""--grpc-infer-response-compression-level: inference responses compressed on the wire (a
proxy between tritonclient and the server counts the bytes the server sends), unary and
streamed, on both frontends; other RPCs as before."""

from __future__ import annotations

import queue
import socket
import threading

import numpy as np
import pytest
import tritonclient.grpc as grpcclient

from conftest import FRONTENDS, start_server, write_python_model

ECHO = '''
import triton_python_backend_utils as pb_utils


class TritonPythonModel:
    def execute(self, requests):
        return [pb_utils.InferenceResponse(
                    [pb_utils.Tensor("Y", pb_utils.get_input_tensor_by_name(r, "X").as_numpy())])
                for r in requests]
'''
ZEROS = np.zeros(256 * 1024, dtype=np.float32)  # 1 MiB, which compresses to almost nothing


class CountingProxy:
    """Forwards 127.0.0.1 connections to `port` and counts the bytes coming back."""

    def __init__(self, port: int) -> None:
        self._target = port
        self._listener = socket.create_server(("127.0.0.1", 0))
        self.port = self._listener.getsockname()[1]
        self._lock = threading.Lock()
        self._downstream = 0
        threading.Thread(target=self._accept, daemon=True).start()

    @property
    def downstream(self) -> int:
        with self._lock:
            return self._downstream

    def _accept(self) -> None:
        while True:
            try:
                client, _ = self._listener.accept()
            except OSError:
                return  # closed
            server = socket.create_connection(("127.0.0.1", self._target))
            threading.Thread(target=self._pipe, args=(client, server, False), daemon=True).start()
            threading.Thread(target=self._pipe, args=(server, client, True), daemon=True).start()

    def _pipe(self, source: socket.socket, sink: socket.socket, counted: bool) -> None:
        try:
            while data := source.recv(65536):
                if counted:
                    with self._lock:
                        self._downstream += len(data)
                sink.sendall(data)
        except OSError:
            pass
        finally:
            for s in (source, sink):
                try:
                    s.shutdown(socket.SHUT_RDWR)
                except OSError:
                    pass

    def close(self) -> None:
        self._listener.close()


@pytest.fixture(scope="module", params=[(f, level) for f in FRONTENDS
                                        for level in ("none", "high")],
                ids=lambda p: f"{p[0]}-{p[1]}")
def proxied(request, tmp_path_factory):
    frontend, level = request.param
    root = tmp_path_factory.mktemp("compression")
    write_python_model(root / "repository", "echo",
                       'input [ { name: "X" data_type: TYPE_FP32 dims: [ -1 ] } ]\n'
                       'output [ { name: "Y" data_type: TYPE_FP32 dims: [ -1 ] } ]\n', ECHO)
    server = start_server([root / "repository"], root / "server.log",
                          "--grpc-frontend", frontend, "--http-frontend", frontend,
                          "--grpc-infer-response-compression-level", level)
    proxy = CountingProxy(server.grpc_port)
    yield level, proxy
    proxy.close()
    server.stop()


def _zeros_input() -> grpcclient.InferInput:
    tensor = grpcclient.InferInput("X", list(ZEROS.shape), "FP32")
    tensor.set_data_from_numpy(ZEROS)
    return tensor


def test_model_infer_responses_are_compressed_as_asked(proxied):
    level, proxy = proxied
    client = grpcclient.InferenceServerClient(f"127.0.0.1:{proxy.port}")
    assert client.get_server_metadata().name  # a control RPC, never compressed
    before = proxy.downstream
    result = client.infer("echo", [_zeros_input()])
    np.testing.assert_array_equal(result.as_numpy("Y"), ZEROS)
    sent = proxy.downstream - before
    if level == "none":
        assert sent > ZEROS.nbytes
    else:
        assert sent < ZEROS.nbytes // 20
    client.close()


def test_streamed_responses_are_compressed_as_asked(proxied):
    level, proxy = proxied
    client = grpcclient.InferenceServerClient(f"127.0.0.1:{proxy.port}")
    results: queue.Queue = queue.Queue()
    client.start_stream(callback=lambda result, error: results.put((result, error)))
    before = proxy.downstream
    for _ in range(3):
        client.async_stream_infer("echo", [_zeros_input()])
    for _ in range(3):
        result, error = results.get(timeout=60)
        assert error is None
        np.testing.assert_array_equal(result.as_numpy("Y"), ZEROS)
    sent = proxy.downstream - before
    client.stop_stream()
    client.close()
    if level == "none":
        assert sent > 3 * ZEROS.nbytes
    else:
        assert sent < 3 * ZEROS.nbytes // 20
