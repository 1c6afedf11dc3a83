"""gRPC over TLS as tritonserver's flags ask (--grpc-use-ssl, --grpc-use-ssl-mutual,
--grpc-server-cert/-key, --grpc-root-cert), on both frontends, with tritonclient's SSL
options; certificates made here."""

from __future__ import annotations

import numpy as np
import pytest
import tritonclient.grpc as grpcclient
from tritonclient.utils import InferenceServerException

from certificates import write_pem
from conftest import EXAMPLES, FRONTENDS, start_server


@pytest.fixture(scope="module")
def pems(tmp_path_factory):
    directory = tmp_path_factory.mktemp("pki")
    return {"server": write_pem(directory, "server"), "client": write_pem(directory, "client")}


def serve(tmp_path, frontend, *tls):
    return start_server([EXAMPLES], tmp_path / "server.log", "--model-control-mode", "explicit",
                        "--load-model", "simple", "--grpc-frontend", frontend, *tls)


def infer(url: str, **ssl) -> np.ndarray:
    with grpcclient.InferenceServerClient(url, **ssl) as client:
        inputs = [grpcclient.InferInput(name, [1, 16], "INT32") for name in ("INPUT0", "INPUT1")]
        for tensor in inputs:
            tensor.set_data_from_numpy(np.arange(16, dtype=np.int32).reshape(1, 16))
        return client.infer("simple", inputs).as_numpy("OUTPUT0")


def refused(url: str, **ssl) -> None:
    with pytest.raises(InferenceServerException) as failed:
        with grpcclient.InferenceServerClient(url, **ssl) as client:
            client.is_server_live(client_timeout=5)
    assert failed.value.status() in ("StatusCode.UNAVAILABLE", "StatusCode.DEADLINE_EXCEEDED")


@pytest.mark.parametrize("frontend", FRONTENDS)
def test_tls(frontend, pems, tmp_path):
    (cert, key), (client_cert, _) = pems["server"], pems["client"]
    process = serve(tmp_path, frontend, "--grpc-use-ssl", "true", "--grpc-server-cert", str(cert),
                    "--grpc-server-key", str(key))
    try:
        answer = infer(process.grpc_url, ssl=True, root_certificates=str(cert))
        np.testing.assert_array_equal(answer, 2 * np.arange(16).reshape(1, 16))
        refused(process.grpc_url)  # plaintext
        refused(process.grpc_url, ssl=True, root_certificates=str(client_cert))  # untrusted
    finally:
        assert process.stop() == 0


@pytest.mark.parametrize("frontend", FRONTENDS)
def test_mutual_tls(frontend, pems, tmp_path):
    (cert, key), (client_cert, client_key) = pems["server"], pems["client"]
    process = serve(tmp_path, frontend, "--grpc-use-ssl-mutual", "true",
                    "--grpc-server-cert", str(cert), "--grpc-server-key", str(key),
                    "--grpc-root-cert", str(client_cert))
    try:
        answer = infer(process.grpc_url, ssl=True, root_certificates=str(cert),
                       private_key=str(client_key), certificate_chain=str(client_cert))
        np.testing.assert_array_equal(answer, 2 * np.arange(16).reshape(1, 16))
        refused(process.grpc_url, ssl=True, root_certificates=str(cert))  # no client certificate
    finally:
        assert process.stop() == 0


@pytest.mark.parametrize("flags, message", [
    (["--grpc-use-ssl", "true"], "--grpc-use-ssl needs --grpc-server-cert and --grpc-server-key"),
    (["--grpc-use-ssl-mutual", "true", "--grpc-server-cert", "c", "--grpc-server-key", "k"],
     "--grpc-use-ssl-mutual needs --grpc-root-cert"),
])
def test_tls_flags_need_their_files(flags, message):
    from pyserve import cli

    with pytest.raises(SystemExit) as refused:
        cli.main(["serve", "--model-repository", str(EXAMPLES), *flags])
    assert str(refused.value) == f"pyserve: {message}"
