"""pyserve.client over TLS (grpcs://, https://), sync and asyncio, against real TLS endpoints on
127.0.0.1 with a certificate made here: a grpcio server and an HTTPS server answering the
health calls (pyserve serve's own gRPC TLS is tested in test_grpc_tls.py)."""

from __future__ import annotations

import asyncio
import http.server
import ssl
import threading
from concurrent.futures import ThreadPoolExecutor

import grpc
import pytest
from certificates import write_pem
from pyserve.client import AsyncClient, Client, InferenceServerError
from pyserve.protocol import pb


@pytest.fixture(scope="module")
def certificate(tmp_path_factory):
    """A self-signed certificate for 127.0.0.1: (cert path, key path, cert PEM, key PEM)."""
    cert_path, key_path = write_pem(tmp_path_factory.mktemp("tls"), "cert")
    return cert_path, key_path, cert_path.read_bytes(), key_path.read_bytes()


@pytest.fixture(scope="module")
def grpc_tls_url(certificate):
    _, _, cert_pem, key_pem = certificate
    server = grpc.server(ThreadPoolExecutor(max_workers=2))
    server.add_generic_rpc_handlers([grpc.method_handlers_generic_handler(
        "inference.GRPCInferenceService",
        {"ServerLive": grpc.unary_unary_rpc_method_handler(
            lambda request, context: pb.ServerLiveResponse(live=True),
            request_deserializer=pb.ServerLiveRequest.FromString,
            response_serializer=pb.ServerLiveResponse.SerializeToString)})])
    port = server.add_secure_port("127.0.0.1:0", grpc.ssl_server_credentials([(key_pem, cert_pem)]))
    server.start()
    yield f"grpcs://127.0.0.1:{port}"
    server.stop(None)


class _Health(http.server.BaseHTTPRequestHandler):
    def do_GET(self):
        self.send_response(200 if self.path == "/v2/health/live" else 404)
        self.send_header("Content-Length", "0")
        self.end_headers()

    def log_message(self, *args):
        pass


@pytest.fixture(scope="module")
def https_url(certificate):
    cert_path, key_path, _, _ = certificate
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Health)
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.load_cert_chain(cert_path, key_path)
    server.socket = context.wrap_socket(server.socket, server_side=True)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"https://127.0.0.1:{server.server_address[1]}"
    server.shutdown()
    server.server_close()


@pytest.fixture(params=["grpc", "http"])
def tls_url(request, grpc_tls_url, https_url):
    return grpc_tls_url if request.param == "grpc" else https_url


def test_sync_client_over_tls(tls_url, certificate):
    cert_path, _, cert_pem, _ = certificate
    with Client(tls_url, ssl_root_certificates=str(cert_path), client_timeout=10) as client:
        assert client.is_server_live()
    with Client(tls_url, ssl_root_certificates=cert_pem, client_timeout=10) as client:
        assert client.is_server_live()


def test_async_client_over_tls(tls_url, certificate):
    cert_path, _, cert_pem, _ = certificate

    async def live(root) -> bool:
        async with AsyncClient(tls_url, ssl_root_certificates=root, client_timeout=10) as client:
            return await client.is_server_live()

    assert asyncio.run(live(str(cert_path)))
    assert asyncio.run(live(cert_pem))


def test_untrusted_certificate_is_refused(tls_url):
    with Client(tls_url, client_timeout=5) as client:
        with pytest.raises(InferenceServerError) as info:
            client.is_server_live()
    assert info.value.status == "UNAVAILABLE"
