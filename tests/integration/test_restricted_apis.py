"""Restricted APIs as Triton has them: --grpc-restricted-protocol and --http-restricted-api
answer a group's endpoints only to requests carrying the header's value (gRPC UNAVAILABLE,
HTTP 403, Triton's texts), on both frontends."""

from __future__ import annotations

import grpc
import pytest
import requests

from conftest import EXAMPLES, FRONTENDS, start_server
from pyserve import restricted
from pyserve.protocol import pb


@pytest.fixture(scope="module", params=FRONTENDS)
def server(request, tmp_path_factory):
    process = start_server(
        [EXAMPLES], tmp_path_factory.mktemp("restricted") / "server.log",
        "--model-control-mode", "explicit", "--load-model", "simple",
        "--grpc-frontend", request.param, "--http-frontend", request.param,
        "--grpc-restricted-protocol", "health,model-config:admin-key=admin-value",
        "--grpc-restricted-protocol", "inference:infer-key=infer-value",
        "--http-restricted-api", "health,logging:admin-key=admin-value",
        "--http-restricted-api", "inference:infer-key=infer-value")
    yield process
    assert process.stop() == 0


SERVICE = "/inference.GRPCInferenceService/"
GRPC_CALLS = [
    (SERVICE + "ServerLive", b"", "admin-key"),
    (SERVICE + "ModelReady", pb.ModelReadyRequest(name="simple").SerializeToString(),
     "admin-key"),
    ("/grpc.health.v1.Health/Check", b"", "admin-key"),
    (SERVICE + "ModelConfig", pb.ModelConfigRequest(name="simple").SerializeToString(),
     "admin-key"),
    (SERVICE + "ModelInfer", pb.ModelInferRequest(model_name="simple").SerializeToString(),
     "infer-key"),
    (SERVICE + "ServerMetadata", b"", None),  # not restricted
]


@pytest.mark.parametrize("method, request_bytes, key", GRPC_CALLS,
                         ids=[m.rsplit("/", 1)[1] for m, _, _ in GRPC_CALLS])
def test_grpc_groups(server, method, request_bytes, key):
    value = key and key.replace("key", "value")
    with grpc.insecure_channel(server.grpc_url) as channel:
        call = channel.unary_unary(method)
        if key is not None:
            for metadata in (None, [(restricted.grpc_header(key), "wrong")]):
                with pytest.raises(grpc.RpcError) as refused:
                    call(request_bytes, metadata=metadata, timeout=10)
                assert (refused.value.code(), refused.value.details()) == (
                    grpc.StatusCode.UNAVAILABLE, "This protocol is restricted, expecting "
                                                 f"header 'triton-grpc-protocol-{key}'")
        metadata = [(restricted.grpc_header(key), value)] if key else None
        try:
            call(request_bytes, metadata=metadata, timeout=10)
        except grpc.RpcError as e:  # served: refused for what the request lacks, not the header
            assert "restricted" not in e.details()


def test_grpc_stream_is_restricted_as_inference(server):
    with grpc.insecure_channel(server.grpc_url) as channel:
        stream = channel.stream_stream(SERVICE + "ModelStreamInfer")
        with pytest.raises(grpc.RpcError) as refused:
            list(stream(iter([b""]), timeout=10))
    assert refused.value.code() == grpc.StatusCode.UNAVAILABLE


@pytest.mark.parametrize("method, path, restricted_group", [
    ("GET", "/v2/health/live", True), ("GET", "/v2/health/ready", True),
    ("GET", "/v2/models/simple/ready", True), ("GET", "/v2/logging", True),
    ("GET", "/v2", False), ("GET", "/v2/models/simple/config", False),
])
def test_http_groups(server, method, path, restricted_group):
    url = f"http://{server.http_url}{path}"
    if restricted_group:
        for headers in ({}, {"admin-key": "wrong"}):
            answer = requests.request(method, url, headers=headers, timeout=10)
            assert (answer.status_code, answer.json()) == (
                403, {"error": "This API is restricted, expecting header 'admin-key'"})
    answer = requests.request(method, url, headers={"admin-key": "admin-value"}, timeout=10)
    assert answer.status_code == 200


def test_http_inference_is_restricted(server):
    """The native server answers infer itself: it checks the header itself."""
    body = {"inputs": [{"name": name, "datatype": "INT32", "shape": [1, 16], "data": [1] * 16}
                       for name in ("INPUT0", "INPUT1")]}
    url = f"http://{server.http_url}/v2/models/simple/infer"
    answer = requests.post(url, json=body, timeout=10)
    assert (answer.status_code, answer.json()) == (
        403, {"error": "This API is restricted, expecting header 'infer-key'"})
    answer = requests.post(url, json=body, headers={"infer-key": "infer-value"}, timeout=10)
    assert answer.status_code == 200, answer.text


def test_restricted_flags_are_checked():
    from pyserve import cli

    for flags, message in (
            (["--http-restricted-api", "health"], "--http-restricted-api expects "
                                                  "<groups>:<key>=<value>, got 'health'"),
            (["--grpc-restricted-protocol", "nope:k=v"], "--grpc-restricted-protocol: unknown "
                                                         "group 'nope'"),
            (["--grpc-restricted-protocol", "health:a=b", "--grpc-restricted-protocol",
              "health:c=d"], "--grpc-restricted-protocol: group 'health' is restricted twice")):
        with pytest.raises(SystemExit) as refused:
            cli.main(["serve", "--model-repository", str(EXAMPLES), *flags])
        assert str(refused.value).startswith(f"pyserve: {message}")
