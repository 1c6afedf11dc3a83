"""Local object-storage servers for the tests: moto's standalone S3 server,
gcp-storage-emulator and Azurite's blob service, each a real HTTP server on 127.0.0.1, started
and stopped by PID."""

from __future__ import annotations

import importlib.util
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import pytest

# Credentials moto accepts; the server under test gets them through its environment.
S3_ENVIRONMENT = {"AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing",
                  "AWS_DEFAULT_REGION": "us-east-1"}

# Where the clouds' libraries look for credentials on a cloud machine (instance and container
# metadata, GCE's metadata server, Azure's managed identity endpoints), for the server under
# test: turned off, or a closed port on 127.0.0.1, so that no test reaches a metadata address.
# (boto3's container credentials are looked for only where AWS_CONTAINER_CREDENTIALS_* are
# set at all, even empty: they are left unset.)
CLOSED = "127.0.0.1:9"  # discard: nothing listens there
NO_METADATA = {
    "AWS_EC2_METADATA_DISABLED": "true",
    "AWS_EC2_METADATA_SERVICE_ENDPOINT": f"http://{CLOSED}/",
    "GCE_METADATA_HOST": CLOSED, "GCE_METADATA_IP": CLOSED,
    "IDENTITY_ENDPOINT": f"http://{CLOSED}/msi/token", "IDENTITY_HEADER": "none",
    "AZURE_POD_IDENTITY_AUTHORITY_HOST": f"http://{CLOSED}",
}


def no_credentials(tmp_path: Path) -> dict[str, str]:
    """An environment in which the S3 and GCS clients find no credentials at all."""
    missing = str(tmp_path / "no-such-file")
    return {**NO_METADATA, "AWS_ACCESS_KEY_ID": "", "AWS_SECRET_ACCESS_KEY": "",
            "AWS_SESSION_TOKEN": "", "AWS_ROLE_ARN": "", "AWS_WEB_IDENTITY_TOKEN_FILE": "",
            "AWS_CONFIG_FILE": missing, "AWS_SHARED_CREDENTIALS_FILE": missing,
            "AWS_DEFAULT_REGION": "us-east-1", "TRITON_CLOUD_CREDENTIAL_PATH": "",
            "GOOGLE_APPLICATION_CREDENTIALS": "", "CLOUDSDK_CONFIG": missing}


@dataclass
class EmulatorProcess:
    process: subprocess.Popen
    port: int
    scheme: str = "http"

    @property
    def endpoint(self) -> str:
        return f"{self.scheme}://127.0.0.1:{self.port}"

    def stop(self) -> None:
        if self.process.poll() is None:
            os.kill(self.process.pid, signal.SIGTERM)
            try:
                self.process.wait(10)
            except subprocess.TimeoutExpired:
                os.kill(self.process.pid, signal.SIGKILL)
                self.process.wait()


def _start(command: list[str], log_path: Path, port_pattern: str,
           env: dict[str, str] | None = None, timeout: float = 30) -> EmulatorProcess:
    log = open(log_path, "w")
    process = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT,
                               env={**os.environ, **(env or {})})
    log.close()
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        match = re.search(port_pattern, log_path.read_text())
        if match:
            return EmulatorProcess(process, int(match[1]) if match[1] else 0)
        if process.poll() is not None:
            break
        time.sleep(0.05)
    if process.poll() is None:
        os.kill(process.pid, signal.SIGKILL)
        process.wait()
    raise RuntimeError(f"{command[0]} did not start:\n{log_path.read_text()}")


def start_moto(log_path: Path) -> EmulatorProcess:
    """moto's standalone S3 (and more) server on a free port."""
    for module in ("moto", "flask", "flask_cors", "boto3"):
        if importlib.util.find_spec(module) is None:
            pytest.skip(f"moto's server needs {module}: pip install 'pyserve[test-deploy]'")
    return _start([sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", "0"],
                  log_path, r"Running on http://127\.0\.0\.1:(\d+)")


def s3_client(endpoint: str):
    import boto3

    return boto3.client("s3", endpoint_url=endpoint, region_name="us-east-1",
                        aws_access_key_id="testing", aws_secret_access_key="testing")


def upload_tree(client, bucket: str, prefix: str, folder: Path) -> list[str]:
    """Every file under `folder` as an object under `prefix` (which ends with '/')."""
    keys = []
    for path in sorted(folder.rglob("*")):
        if path.is_file() and "__pycache__" not in path.parts:
            key = prefix + path.relative_to(folder).as_posix()
            client.put_object(Bucket=bucket, Key=key, Body=path.read_bytes())
            keys.append(key)
    return keys


def start_gcs_emulator(log_path: Path) -> EmulatorProcess:
    """gcp-storage-emulator, in memory, on a free port; clients find it through
    STORAGE_EMULATOR_HOST (google-cloud-storage reads it)."""
    for module in ("gcp_storage_emulator", "google.cloud.storage"):
        try:
            missing = importlib.util.find_spec(module) is None
        except ModuleNotFoundError:
            missing = True
        if missing:
            pytest.skip(f"the GCS tests need {module}: pip install 'pyserve[test-deploy]'")
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    server = _start([sys.executable, "-m", "gcp_storage_emulator", "start", "-H", "127.0.0.1",
                     "--port", str(port), "--in-memory"], log_path, r"()All services started")
    server.port = port
    return server


def gcs_bucket(name: str):
    """A new bucket on the emulator that STORAGE_EMULATOR_HOST names."""
    from google.auth.credentials import AnonymousCredentials
    from google.cloud import storage

    client = storage.Client(project="pyserve-tests", credentials=AnonymousCredentials())
    return client.create_bucket(name)


# Azurite's one account and its published key (Azurite's documentation lists both).
AZURITE_ACCOUNT = "devstoreaccount1"
AZURITE_KEY = ("Eby8vdM02xNOcqFlqUwJPLlmEtlCDXJ1OUzFT50uSRZ6IFsuFq2UVErCz4I6tq/"
               "K1SZFPTOtr/KBHBeksoGMGw==")


def start_azurite(log_path: Path, *, tls: tuple[Path, Path] | None = None) -> EmulatorProcess:
    """Azurite's blob service (npm `azurite`, found on PATH: .ci/run installs it), in memory, on
    a free port. Clients reach it at `endpoint/devstoreaccount1`. With `tls` (certificate,
    key) it speaks HTTPS and accepts OAuth bearer tokens too (`--oauth basic`: their claims
    are checked, not their signature)."""
    azurite = shutil.which("azurite-blob")
    if azurite is None:
        pytest.skip("the Azure tests need Azurite's azurite-blob on PATH: npm install azurite")
    try:
        missing = importlib.util.find_spec("azure.storage.blob") is None
    except ModuleNotFoundError:
        missing = True
    if missing:
        pytest.skip("the Azure tests need azure-storage-blob: pip install 'pyserve[test-deploy]'")
    # --skipApiVersionCheck: the Python SDK may speak a newer API version than Azurite knows.
    options = [] if tls is None else ["--cert", str(tls[0]), "--key", str(tls[1]),
                                      "--oauth", "basic"]
    server = _start([azurite, "--blobHost", "127.0.0.1", "--blobPort", "0",
                     "--inMemoryPersistence", "--skipApiVersionCheck", "--disableTelemetry",
                     "--silent", *options], log_path, r"listens on https?://127\.0\.0\.1:(\d+)")
    server.scheme = "http" if tls is None else "https"
    return server


def azurite_connection_string(endpoint: str, with_key: bool = True) -> str:
    """A connection string for Azurite at `endpoint`; without the key it names only the
    endpoint, and the credential comes from elsewhere."""
    blob_endpoint = f"BlobEndpoint={endpoint}/{AZURITE_ACCOUNT};"
    if not with_key:
        return blob_endpoint
    return (f"DefaultEndpointsProtocol={endpoint.split(':')[0]};AccountName={AZURITE_ACCOUNT};"
            f"AccountKey={AZURITE_KEY};{blob_endpoint}")


class _Serving:
    """An http.server `handler` on 127.0.0.1 (over TLS with `context`), served on a thread."""

    def __init__(self, handler, context=None) -> None:
        import http.server
        import threading

        self._server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
        if context is not None:
            self._server.socket = context.wrap_socket(self._server.socket, server_side=True)
        self.port = self._server.server_address[1]
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._server.shutdown()
        self._server.server_close()
        self._thread.join()


class TokenEndpoint:
    """Microsoft Entra ID's token endpoint, as workload identity uses it, on 127.0.0.1 over
    HTTPS: `POST /{tenant}/oauth2/v2.0/token` with the federated token as client_assertion
    answers an access token for Azure Storage (a JWT whose claims Azurite's `--oauth basic`
    accepts). The forms it received are kept in `requests`."""

    def __init__(self, tls: tuple[Path, Path]) -> None:
        import http.server
        import ssl
        import urllib.parse

        endpoint = self
        self.requests: list[dict[str, str]] = []

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_POST(self):  # noqa: N802 (http.server's name)
                length = int(self.headers.get("Content-Length", 0))
                form = dict(urllib.parse.parse_qsl(self.rfile.read(length).decode()))
                tenant = self.path.split("/")[1]
                endpoint.requests.append({**form, "tenant": tenant, "path": self.path})
                body = json.dumps({"token_type": "Bearer", "expires_in": 3600,
                                   "ext_expires_in": 3600,
                                   "access_token": storage_token(tenant)}).encode()
                self.send_response(200)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, *args):
                pass

        context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        context.load_cert_chain(str(tls[0]), str(tls[1]))
        self._server = _Serving(Handler, context)
        self.authority = f"https://127.0.0.1:{self._server.port}"

    def stop(self) -> None:
        self._server.stop()


def storage_token(tenant: str) -> str:
    """An unsigned-looking JWT with the claims Azurite checks (issuer, audience, times)."""
    import base64

    def part(value) -> str:
        return base64.urlsafe_b64encode(json.dumps(value).encode()).rstrip(b"=").decode()

    now = int(time.time())
    claims = {"aud": "https://storage.azure.com", "iss": f"https://sts.windows.net/{tenant}/",
              "iat": now - 60, "nbf": now - 60, "exp": now + 3600, "oid": "pyserve-tests",
              "tid": tenant}
    return f"{part({'alg': 'HS256', 'typ': 'JWT'})}.{part(claims)}.c2lnbmF0dXJl"


class RecordingProxy:
    """A plain HTTP proxy on 127.0.0.1 in front of `target` (an emulator): forwards every
    request as it came, headers included, and keeps (method, path, headers, body, status,
    response body) of each in `exchanges`, so a test sees how a client signed its requests."""

    def __init__(self, target: str) -> None:
        import http.client
        import http.server
        import urllib.parse

        proxy = self
        self.exchanges: list[dict] = []
        host, port = urllib.parse.urlsplit(target).netloc.split(":")

        class Handler(http.server.BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def forward(self):
                body = self.rfile.read(int(self.headers.get("Content-Length", 0) or 0))
                connection = http.client.HTTPConnection(host, int(port), timeout=30)
                connection.request(self.command, self.path, body=body,
                                   headers=dict(self.headers.items()))
                response = connection.getresponse()
                answer = response.read()
                proxy.exchanges.append({"method": self.command, "path": self.path,
                                        "headers": dict(self.headers.items()), "body": body,
                                        "status": response.status, "response": answer})
                self.send_response(response.status)
                for name, value in response.getheaders():
                    if name.lower() not in ("transfer-encoding", "connection",
                                            "content-length"):
                        self.send_header(name, value)
                self.send_header("Content-Length", str(len(answer)))
                self.end_headers()
                if self.command != "HEAD":
                    self.wfile.write(answer)
                connection.close()

            do_GET = do_PUT = do_POST = do_HEAD = do_DELETE = forward

            def log_message(self, *args):
                pass

        self._server = _Serving(Handler)
        self.endpoint = f"http://127.0.0.1:{self._server.port}"

    def stop(self) -> None:
        self._server.stop()
