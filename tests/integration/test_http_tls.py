"""HTTPS as pyserve offers it in the shape of tritonserver's gRPC flags (--http-use-ssl,
--http-use-ssl-mutual, --http-server-cert/-key, --http-root-cert), on both frontends, with
tritonclient.http's SSL options; the metrics endpoint follows the HTTP service. Certificates
made here."""

from __future__ import annotations

import http.client
import socket
import ssl
import urllib.request

import gevent.ssl
import numpy as np
import pytest
import tritonclient.http as httpclient

from certificates import write_pem
from conftest import EXAMPLES, FRONTENDS, native_frontends_built, start_server


@pytest.fixture(scope="module")
def pems(tmp_path_factory):
    directory = tmp_path_factory.mktemp("pki")
    return {"server": write_pem(directory, "server"), "client": write_pem(directory, "client")}


def serve(tmp_path, frontend, *tls):
    if frontend == "native" and not native_frontends_built():
        pytest.skip("pyserve was built without the native frontends")
    return start_server([EXAMPLES], tmp_path / "server.log", "--model-control-mode", "explicit",
                        "--load-model", "simple", "--http-frontend", frontend, *tls)


def infer(url: str, **ssl_args) -> np.ndarray:
    with httpclient.InferenceServerClient(url, ssl=True, **ssl_args) as client:
        inputs = [httpclient.InferInput(name, [1, 16], "INT32") for name in ("INPUT0", "INPUT1")]
        for tensor in inputs:
            tensor.set_data_from_numpy(np.arange(16, dtype=np.int32).reshape(1, 16))
        return client.infer("simple", inputs).as_numpy("OUTPUT0")


def assert_sums(answer: np.ndarray) -> None:
    np.testing.assert_array_equal(answer, 2 * np.arange(16).reshape(1, 16))


def plaintext_refused(port: int) -> None:
    """A plain HTTP request gets no HTTP answer: the connection ends in the handshake."""
    with socket.create_connection(("127.0.0.1", port), timeout=10) as s:
        s.sendall(b"GET /v2/health/live HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n")
        received = b""
        try:
            while chunk := s.recv(4096):
                received += chunk
        except ConnectionResetError:
            pass
    assert not received.startswith(b"HTTP/"), received


def refused(url: str, **ssl_args) -> None:
    """The handshake fails, or (TLS 1.3: the server checks the client's certificate after the
    client has finished) the connection closes with no answer."""
    with pytest.raises((ssl.SSLError, OSError, http.client.HTTPException)):
        with httpclient.InferenceServerClient(url, ssl=True, network_timeout=10,
                                              **ssl_args) as client:
            client.is_server_live()


@pytest.mark.parametrize("frontend", FRONTENDS)
def test_https(frontend, pems, tmp_path):
    (cert, key), (client_cert, _) = pems["server"], pems["client"]
    process = serve(tmp_path, frontend, "--http-use-ssl", "true", "--http-server-cert",
                    str(cert), "--http-server-key", str(key))
    try:
        assert_sums(infer(process.http_url, ssl_options={"ca_certs": str(cert)}))
        # insecure, with a context that verifies nothing (as `curl -k`)
        assert_sums(infer(process.http_url, insecure=True,
                          ssl_context_factory=gevent.ssl._create_unverified_context))
        # keep-alive: several requests on one connection
        with httpclient.InferenceServerClient(process.http_url, ssl=True,
                                              ssl_options={"ca_certs": str(cert)}) as client:
            for _ in range(3):
                assert client.is_server_ready() and client.is_model_ready("simple")
            assert client.get_model_metadata("simple")["name"] == "simple"  # relayed
        plaintext_refused(process.http_port)
        refused(process.http_url, ssl_options={"ca_certs": str(client_cert)})  # untrusted
        context = ssl.create_default_context(cafile=str(cert))
        with urllib.request.urlopen(f"https://127.0.0.1:{process.metrics_port}/metrics",
                                    context=context, timeout=10) as answer:
            assert b"nv_inference_request_success" in answer.read()
        plaintext_refused(process.metrics_port)
    finally:
        assert process.stop() == 0


@pytest.mark.parametrize("frontend", FRONTENDS)
def test_mutual_https(frontend, pems, tmp_path):
    (cert, key), (client_cert, client_key) = pems["server"], pems["client"]
    process = serve(tmp_path, frontend, "--http-use-ssl-mutual", "true",
                    "--http-server-cert", str(cert), "--http-server-key", str(key),
                    "--http-root-cert", str(client_cert))
    try:
        assert_sums(infer(process.http_url, ssl_options={
            "ca_certs": str(cert), "certfile": str(client_cert), "keyfile": str(client_key)}))
        refused(process.http_url, ssl_options={"ca_certs": str(cert)})  # no client certificate
        # a certificate the root does not sign
        refused(process.http_url, ssl_options={"ca_certs": str(cert), "certfile": str(cert),
                                               "keyfile": str(key)})
    finally:
        assert process.stop() == 0


@pytest.mark.parametrize("flags, message", [
    (["--http-use-ssl", "true"], "--http-use-ssl needs --http-server-cert and --http-server-key"),
    (["--http-use-ssl-mutual", "true", "--http-server-cert", "c", "--http-server-key", "k"],
     "--http-use-ssl-mutual needs --http-root-cert"),
])
def test_https_flags_need_their_files(flags, message):
    from pyserve import cli

    with pytest.raises(SystemExit) as refused:
        cli.main(["serve", "--model-repository", str(EXAMPLES), *flags])
    assert message in str(refused.value)


@pytest.mark.parametrize("frontend", FRONTENDS)
def test_https_key_that_does_not_match(frontend, pems, tmp_path):
    """A key that is not the certificate's stops start-up, saying so."""
    (cert, _), (_, client_key) = pems["server"], pems["client"]
    with pytest.raises(RuntimeError, match="did not start") as failed:
        serve(tmp_path, frontend, "--http-use-ssl", "true", "--http-server-cert", str(cert),
              "--http-server-key", str(client_key))
    assert "failed to start HTTP service: TLS" in str(failed.value)
