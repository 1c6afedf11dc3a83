"""`pyserve torchserve` over HTTPS from TorchServe's settings: PEM files, PKCS12 and JKS
keystores, on the inference, management and metrics addresses, with a key like TorchServe's
sample one (1024-bit RSA, which OpenSSL 3 refuses by default and TorchServe serves). The client
trusts only the test's certificate (and lowers its own security level to accept its key)."""

from __future__ import annotations

import json
import ssl
import sys
import urllib.request
from pathlib import Path

import pytest

cryptography = pytest.importorskip("cryptography")
from cryptography import x509  # noqa: E402
from cryptography.hazmat.primitives import serialization  # noqa: E402
from cryptography.hazmat.primitives.asymmetric import rsa  # noqa: E402
from cryptography.hazmat.primitives.serialization import pkcs12  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
sys.path.insert(0, str(Path(__file__).resolve().parent))
from certificates import self_signed  # noqa: E402
from torchserve_archives import make_mar  # noqa: E402
from test_torchserve_server import ECHO, TorchServeProcess, _native_available  # noqa: E402

PASSWORD = "changeit"  # TorchServe's default keystore_pass


def _key_and_certificate(directory: Path) -> tuple[rsa.RSAPrivateKey, x509.Certificate]:
    """A 1024-bit RSA key, as in TorchServe's test/resources/key.pem, and a certificate for
    127.0.0.1 (TorchServe's names mms.amazonaws.com)."""
    key, certificate = self_signed(rsa.generate_private_key(public_exponent=65537,
                                                            key_size=1024))
    (directory / "certs.pem").write_bytes(certificate.public_bytes(serialization.Encoding.PEM))
    return key, certificate


def _settings(kind: str, directory: Path) -> str:
    key, certificate = _key_and_certificate(directory)
    if kind == "pem":  # TorchServe's test/resources/config.properties
        (directory / "key.pem").write_bytes(key.private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.TraditionalOpenSSL,
            serialization.NoEncryption()))
        return "private_key_file=key.pem\ncertificate_file=certs.pem\n"
    if kind == "pkcs12":
        (directory / "keystore.p12").write_bytes(pkcs12.serialize_key_and_certificates(
            b"torchserve", key, certificate, None,
            serialization.BestAvailableEncryption(PASSWORD.encode())))
        return f"keystore=keystore.p12\nkeystore_pass={PASSWORD}\nkeystore_type=PKCS12\n"
    jks = pytest.importorskip("jks", reason="a JKS keystore needs pyjks")
    entry = jks.PrivateKeyEntry.new(
        "torchserve", [certificate.public_bytes(serialization.Encoding.DER)],
        key.private_bytes(serialization.Encoding.DER, serialization.PrivateFormat.PKCS8,
                          serialization.NoEncryption()), "pkcs8")
    jks.KeyStore.new("jks", [entry]).save(str(directory / "keystore.jks"), PASSWORD)
    return f"keystore=keystore.jks\nkeystore_pass={PASSWORD}\nkeystore_type=JKS\n"


def _client(directory: Path) -> ssl.SSLContext:
    """Trusts the test's certificate only; accepts its 1024-bit key (security level 1)."""
    context = ssl.create_default_context(cafile=str(directory / "certs.pem"))
    context.set_ciphers("DEFAULT:@SECLEVEL=1")
    return context


def _get(url: str, context: ssl.SSLContext, data: bytes | None = None) -> tuple[int, bytes]:
    request = urllib.request.Request(url, data=data,
                                     headers={"Content-Type": "application/octet-stream"})
    with urllib.request.urlopen(request, context=context, timeout=30) as reply:
        return reply.status, reply.read()


@pytest.mark.parametrize("frontend", ["native", "python"])
@pytest.mark.parametrize("kind", ["pem", "pkcs12", "jks"])
def test_torchserve_https(tmp_path, kind, frontend):
    if frontend == "native" and not _native_available():
        pytest.skip("pyserve was built without the native HTTP frontend")
    settings = _settings(kind, tmp_path)
    make_mar(tmp_path / "store", "echo", {"echo.py": ECHO}, handler="echo.py",
             work=tmp_path / "src")
    properties = ("inference_address=https://127.0.0.1:0\n"
                  "management_address=https://127.0.0.1:0\n"
                  "metrics_address=https://127.0.0.1:0\n"
                  "model_store=store\nload_models=echo.mar\ndefault_workers_per_model=1\n"
                  "metrics_mode=prometheus\n" + settings)
    process = TorchServeProcess(tmp_path, properties, "--disable-token-auth",
                                "--http-frontend", frontend, scheme="https")
    try:
        log = process.log_path.read_text()
        assert "1024-bit RSA key" in log  # the warning names the key size
        assert ("native predictions" in log) == (frontend == "native")
        context = _client(tmp_path)
        status, body = _get(process.url("inference", "/ping"), context)
        assert (status, json.loads(body)) == (200, {"status": "Healthy"})
        for _ in range(2):  # the second on a new connection: each does its handshake
            status, body = _get(process.url("inference", "/predictions/echo"), context,
                                b"secret")
            assert status == 200 and json.loads(body)["echo"] == "secret"
        status, body = _get(process.url("management", "/models"), context)
        assert status == 200 and json.loads(body)["models"][0]["modelName"] == "echo"
        status, body = _get(process.url("metrics", "/metrics"), context)
        assert status == 200 and b"ts_inference_requests_total" in body
        # a client that does not trust the certificate is refused
        with pytest.raises(urllib.error.URLError):
            _get(process.url("inference", "/ping"), ssl.create_default_context())
    finally:
        process.stop()
        print(process.log_path.read_text()[-4000:])


def test_torchserve_https_self_signed_without_certificate(tmp_path):
    """An https address with neither keystore nor certificate_file: TorchServe makes a
    self-signed certificate; so does pyserve."""
    make_mar(tmp_path / "store", "echo", {"echo.py": ECHO}, handler="echo.py",
             work=tmp_path / "src")
    process = TorchServeProcess(
        tmp_path, "inference_address=https://127.0.0.1:0\n"
        "management_address=http://127.0.0.1:0\nmetrics_address=http://127.0.0.1:0\n"
        "model_store=store\nload_models=echo.mar\ndefault_workers_per_model=1\n",
        "--disable-token-auth", scheme="https")
    try:
        insecure = ssl.create_default_context()
        insecure.check_hostname = False
        insecure.verify_mode = ssl.CERT_NONE  # as `curl -k` and newman --insecure
        status, body = _get(process.url("inference", "/ping"), insecure)
        assert status == 200 and "self-signed" in process.log_path.read_text()
    finally:
        process.stop()
