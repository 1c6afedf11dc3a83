"""The native gRPC frontend hands the RPCs it does not serve itself to the Python shell on a
thread of its own: a dispatch that fails answers that RPC INTERNAL, and the thread goes on."""

from __future__ import annotations

import grpc
import pytest

from pyserve import _core

_grpc_server = pytest.importorskip("pyserve._grpc_server")

SERVER_METADATA = "/inference.GRPCInferenceService/ServerMetadata"


def test_a_failing_dispatch_fails_its_call_and_the_next_is_answered():
    def dispatch(method, request, reply):
        calls.append(method)
        if len(calls) == 1:
            raise RuntimeError("the shell broke")
        if len(calls) == 2:
            reply(0, "", 12345)  # not bytes: pybind11 refuses the reply itself
        reply(0, "", b"\x08\x01")  # any bytes: the shell answers

    calls: list[str] = []
    server = _grpc_server.Server(_core.ModelTable(), "127.0.0.1:0", dispatch)
    try:
        with grpc.insecure_channel(f"127.0.0.1:{server.port}") as channel:
            metadata = channel.unary_unary(SERVER_METADATA)
            for expected in ("RuntimeError: the shell broke", "incompatible function arguments"):
                with pytest.raises(grpc.RpcError) as failed:
                    metadata(b"", timeout=10)
                assert failed.value.code() == grpc.StatusCode.INTERNAL
                assert failed.value.details().startswith("pyserve: ")
                assert expected in failed.value.details(), failed.value.details()
            assert metadata(b"", timeout=10) == b"\x08\x01"
    finally:
        server.stop()
    assert calls == [SERVER_METADATA] * 3
