"""A model repository in Azure Blob Storage, end to end: pyserve serving
`as://devstoreaccount1/container/path` from Azurite on 127.0.0.1, with Triton's credential
sources (AZURE_STORAGE_ACCOUNT / AZURE_STORAGE_KEY, and the `as` section of the
TRITON_CLOUD_CREDENTIAL_PATH file) and the endpoint from AZURE_STORAGE_CONNECTION_STRING.
Azurite's containers are private: a request that is not signed with the key is refused."""

from __future__ import annotations

import json

import numpy as np
import pytest
import tritonclient.grpc as grpcclient
import tritonclient.http as httpclient

from conftest import EXAMPLES, start_server
from object_storage import (AZURITE_ACCOUNT, AZURITE_KEY, azurite_connection_string,
                            start_azurite)

SIMPLE = EXAMPLES / "simple"
SIMPLE_CONFIG = (SIMPLE / "config.pbtxt").read_text()


@pytest.fixture(scope="module")
def azurite(tmp_path_factory):
    server = start_azurite(tmp_path_factory.mktemp("azurite") / "azurite.log")
    yield server
    server.stop()


@pytest.fixture
def container(azurite, request):
    """A fresh private container holding `simple` under repo/."""
    from azure.storage.blob import BlobServiceClient

    service = BlobServiceClient.from_connection_string(azurite_connection_string(azurite.endpoint))
    client = service.create_container(request.node.name.replace("_", "-")[:60].lower())
    upload(client, "repo/simple/", SIMPLE)
    return client


def upload(container, prefix: str, folder) -> None:
    for path in sorted(folder.rglob("*")):
        if path.is_file() and "__pycache__" not in path.parts:
            container.upload_blob(prefix + path.relative_to(folder).as_posix(),
                                  path.read_bytes(), overwrite=True)


@pytest.fixture
def servers(tmp_path):
    started = []

    def start(*args, env):
        server = start_server([], tmp_path / f"server{len(started)}.log", *args, env=env)
        started.append(server)
        return server

    yield start
    for server in started:
        server.stop()


def infer(client, model: str = "simple") -> None:
    a = np.arange(16, dtype=np.int32).reshape(1, 16)
    inputs = [grpcclient.InferInput(n, a.shape, "INT32") for n in ("INPUT0", "INPUT1")]
    for tensor in inputs:
        tensor.set_data_from_numpy(a)
    np.testing.assert_array_equal(client.infer(model, inputs).as_numpy("OUTPUT0"), a * 2)


def wait_for(predicate, timeout: float = 30.0) -> None:
    import time

    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, "condition not met in time"
        time.sleep(0.1)


def test_polls_an_azure_repository_with_the_environments_key(azurite, container, servers):
    env = {"AZURE_STORAGE_ACCOUNT": AZURITE_ACCOUNT, "AZURE_STORAGE_KEY": AZURITE_KEY,
           # Only the endpoint: the key must come from AZURE_STORAGE_KEY.
           "AZURE_STORAGE_CONNECTION_STRING": azurite_connection_string(azurite.endpoint,
                                                                        with_key=False),
           "TRITON_CLOUD_CREDENTIAL_PATH": ""}
    server = servers("--model-repository",
                     f"as://{AZURITE_ACCOUNT}/{container.container_name}/repo",
                     "--model-control-mode", "poll", "--repository-poll-secs", "0.5", env=env)
    with grpcclient.InferenceServerClient(server.grpc_url) as c:
        assert c.is_model_ready("simple", "1")
        infer(c)

        # Changed objects: the config serves every version, and version 2 appears.
        container.upload_blob("repo/simple/2/model.onnx",
                              (SIMPLE / "1" / "model.onnx").read_bytes())
        container.upload_blob("repo/simple/config.pbtxt",
                              SIMPLE_CONFIG + "\nversion_policy: { all { } }\n", overwrite=True)
        wait_for(lambda: c.is_model_ready("simple", "2"))
        assert c.is_model_ready("simple", "1")
        infer(c)

        # Removed objects: the model is unloaded.
        for blob in list(container.list_blobs(name_starts_with="repo/simple/")):
            container.delete_blob(blob.name)
        wait_for(lambda: not c.is_model_ready("simple"))
    assert server.stop() == 0
    assert "successfully unloaded 'simple'" in server.log()


def test_explicit_mode_with_the_credential_files_as_section(azurite, container, servers,
                                                            tmp_path):
    url = f"as://{AZURITE_ACCOUNT}/{container.container_name}/repo"
    credentials = tmp_path / "cloud_credential.json"
    credentials.write_text(json.dumps({"as": {
        "": {"account_str": AZURITE_ACCOUNT, "account_key": "d3Jvbmc="},  # a wrong key
        url: {"account_str": AZURITE_ACCOUNT, "account_key": AZURITE_KEY}}}))
    # The environment holds no key: only the file's longest matching entry can work.
    env = {"TRITON_CLOUD_CREDENTIAL_PATH": str(credentials), "AZURE_STORAGE_KEY": "",
           "AZURE_STORAGE_CONNECTION_STRING": azurite_connection_string(azurite.endpoint,
                                                                        with_key=False)}
    server = servers("--model-repository", url, "--model-control-mode", "explicit", env=env)
    with httpclient.InferenceServerClient(server.http_url) as c:
        assert not c.is_model_ready("simple")
        c.load_model("simple")
        assert c.is_model_ready("simple", "1")

        # A model uploaded after startup is in the index, and loads.
        upload(container, "repo/simple_copy/", SIMPLE)
        container.upload_blob("repo/simple_copy/config.pbtxt",
                              SIMPLE_CONFIG.replace('name: "simple"', 'name: "simple_copy"'),
                              overwrite=True)
        wait_for(lambda: "simple_copy" in {m["name"] for m in c.get_model_repository_index()})
        c.load_model("simple_copy")
        assert c.is_model_ready("simple_copy", "1")

        c.unload_model("simple")
        wait_for(lambda: not c.is_model_ready("simple"))
        assert c.is_model_ready("simple_copy")
    with grpcclient.InferenceServerClient(server.grpc_url) as c:
        infer(c, "simple_copy")
    assert server.stop() == 0


def test_a_wrong_key_stops_startup(azurite, container, tmp_path):
    with pytest.raises(RuntimeError, match="failed to poll from model repository"):
        start_server([], tmp_path / "wrong.log", "--model-repository",
                     f"as://{AZURITE_ACCOUNT}/{container.container_name}/repo", env={
                         "AZURE_STORAGE_ACCOUNT": AZURITE_ACCOUNT,
                         "AZURE_STORAGE_KEY": "d3Jvbmc=", "TRITON_CLOUD_CREDENTIAL_PATH": "",
                         "AZURE_STORAGE_CONNECTION_STRING": azurite_connection_string(
                             azurite.endpoint, with_key=False)}, timeout=60)


# --- Microsoft Entra ID: AKS workload identity through DefaultAzureCredential ---------------

@pytest.fixture(scope="module")
def tls(tmp_path_factory):
    pytest.importorskip("cryptography")
    from certificates import write_pem

    return write_pem(tmp_path_factory.mktemp("tls"), "cert")


@pytest.fixture(scope="module")
def azurite_oauth(tmp_path_factory, tls):
    """Azurite over HTTPS (bearer tokens need TLS) that also accepts OAuth tokens."""
    server = start_azurite(tmp_path_factory.mktemp("azurite-oauth") / "azurite.log", tls=tls)
    yield server
    server.stop()


@pytest.fixture
def token_endpoint(tls):
    from object_storage import TokenEndpoint

    endpoint = TokenEndpoint(tls)
    yield endpoint
    endpoint.stop()


def test_workload_identity_through_default_azure_credential(azurite_oauth, tls, token_endpoint,
                                                            servers, tmp_path):
    """What AKS's workload identity webhook gives a pod (AZURE_CLIENT_ID, AZURE_TENANT_ID,
    AZURE_FEDERATED_TOKEN_FILE, AZURE_AUTHORITY_HOST, here a token endpoint on 127.0.0.1), no
    account key: pyserve exchanges the federated token for a storage token and reads a private
    container with it. Without the identity the same container is refused."""
    pytest.importorskip("azure.identity")
    from azure.storage.blob import BlobServiceClient

    from object_storage import NO_METADATA

    service = BlobServiceClient.from_connection_string(
        azurite_connection_string(azurite_oauth.endpoint), connection_verify=str(tls[0]))
    container = service.create_container("private-identity")
    upload(container, "repo/simple/", SIMPLE)
    federated = tmp_path / "azure-identity-token"
    federated.write_text("federated-token-from-kubernetes")
    tenant = "72f988bf-86f1-41af-91ab-2d7cd011db47"
    base = {**NO_METADATA, "AZURE_STORAGE_ACCOUNT": AZURITE_ACCOUNT, "AZURE_STORAGE_KEY": "",
            "TRITON_CLOUD_CREDENTIAL_PATH": "", "REQUESTS_CA_BUNDLE": str(tls[0]),
            "AZURE_STORAGE_CONNECTION_STRING": azurite_connection_string(
                azurite_oauth.endpoint, with_key=False)}
    url = f"as://{AZURITE_ACCOUNT}/private-identity/repo"
    server = servers("--model-repository", url, env={
        **base, "AZURE_CLIENT_ID": "pyserve-client-id", "AZURE_TENANT_ID": tenant,
        "AZURE_FEDERATED_TOKEN_FILE": str(federated),
        "AZURE_AUTHORITY_HOST": token_endpoint.authority})
    with grpcclient.InferenceServerClient(server.grpc_url) as c:
        assert c.is_model_ready("simple", "1")
        infer(c)
    assert server.stop() == 0
    assert token_endpoint.requests, "no token was asked for"
    request = token_endpoint.requests[0]
    assert request["tenant"] == tenant and request["client_id"] == "pyserve-client-id"
    assert request["client_assertion"] == "federated-token-from-kubernetes"
    assert request["scope"] == "https://storage.azure.com/.default"
    with pytest.raises(RuntimeError, match="failed to poll from model repository"):
        start_server([], tmp_path / "anonymous.log", "--model-repository", url, env=base,
                     timeout=60)
