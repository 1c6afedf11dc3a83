"""Local object-storage servers for the tests: moto's standalone S3 server,
gcp-storage-emulator and Azurite's blob service, each a real HTTP server on 127.0.0.1, started
and stopped by PID."""

from __future__ import annotations

import importlib.util
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


@dataclass
class EmulatorProcess:
    process: subprocess.Popen
    port: int

    @property
    def endpoint(self) -> str:
        return f"http://127.0.0.1:{self.port}"

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


def start_azurite(log_path: Path) -> EmulatorProcess:
    """Azurite's blob service (npm `azurite`, found on PATH: .ci/run installs it), in memory, on
    a free port. Clients reach it at `endpoint/devstoreaccount1`."""
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
    return _start([azurite, "--blobHost", "127.0.0.1", "--blobPort", "0", "--inMemoryPersistence",
                   "--skipApiVersionCheck", "--disableTelemetry", "--silent"], log_path,
                  r"listens on http://127\.0\.0\.1:(\d+)")


def azurite_connection_string(endpoint: str, with_key: bool = True) -> str:
    """A connection string for Azurite at `endpoint`; without the key it names only the
    endpoint, and the credential comes from elsewhere."""
    blob_endpoint = f"BlobEndpoint={endpoint}/{AZURITE_ACCOUNT};"
    if not with_key:
        return blob_endpoint
    return (f"DefaultEndpointsProtocol=http;AccountName={AZURITE_ACCOUNT};"
            f"AccountKey={AZURITE_KEY};{blob_endpoint}")
