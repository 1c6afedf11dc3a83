"""A model repository in S3, end to end: pyserve serving `s3://http://127.0.0.1:PORT/bucket/path`
from moto's standalone server, with tritonclient. Poll mode notices changed, added and removed
objects; explicit mode loads and unloads through the repository API; credentials come from the
environment or from Triton's TRITON_CLOUD_CREDENTIAL_PATH file."""

from __future__ import annotations

import json

import numpy as np
import pytest
import tritonclient.grpc as grpcclient
import tritonclient.http as httpclient
from tritonclient.utils import InferenceServerException

from conftest import EXAMPLES, start_server
from object_storage import S3_ENVIRONMENT, s3_client, start_moto, upload_tree

SIMPLE = EXAMPLES / "simple"
SIMPLE_CONFIG = (SIMPLE / "config.pbtxt").read_text()


@pytest.fixture(scope="module")
def moto(tmp_path_factory):
    server = start_moto(tmp_path_factory.mktemp("moto") / "moto.log")
    yield server
    server.stop()


@pytest.fixture
def bucket(moto, request):
    """A fresh bucket holding `simple` under models/."""
    client = s3_client(moto.endpoint)
    name = request.node.name.replace("_", "-")[:50].lower()
    client.create_bucket(Bucket=name)
    upload_tree(client, name, "models/simple/", SIMPLE)
    return client, name


@pytest.fixture
def servers(tmp_path):
    started = []

    def start(*args, env=None):
        server = start_server([], tmp_path / f"server{len(started)}.log", *args, env=env)
        started.append(server)
        return server

    yield start
    for server in started:
        server.stop()


def infer(client, model: str = "simple") -> np.ndarray:
    a = np.arange(16, dtype=np.int32).reshape(1, 16)
    inputs = [grpcclient.InferInput(n, a.shape, "INT32") for n in ("INPUT0", "INPUT1")]
    for tensor in inputs:
        tensor.set_data_from_numpy(a)
    out = client.infer(model, inputs).as_numpy("OUTPUT0")
    np.testing.assert_array_equal(out, a * 2)
    return out


def index(client) -> dict[tuple[str, str], str]:
    return {(m.name, m.version): m.state for m in client.get_model_repository_index().models}


def wait_for(predicate, timeout: float = 30.0) -> None:
    import time

    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, "condition not met in time"
        time.sleep(0.1)


def test_serves_and_polls_an_s3_repository(moto, bucket, servers, tmp_path):
    client, name = bucket
    cache = tmp_path / "cache"
    server = servers("--model-repository", f"s3://{moto.endpoint}/{name}/models",
                     "--repository-cache-dir", str(cache),
                     "--model-control-mode", "poll", "--repository-poll-secs", "0.5",
                     env=S3_ENVIRONMENT)
    with grpcclient.InferenceServerClient(server.grpc_url) as c:
        assert c.is_server_ready() and c.is_model_ready("simple")
        infer(c)
        mirrored = list(cache.glob("*/simple/1/model.onnx"))
        assert len(mirrored) == 1  # served from the cache directory asked for

        # A changed object: the config now serves versions 1 and 2, and version 2 appears.
        client.put_object(Bucket=name, Key="models/simple/2/model.onnx",
                          Body=(SIMPLE / "1" / "model.onnx").read_bytes())
        client.put_object(Bucket=name, Key="models/simple/config.pbtxt",
                          Body=SIMPLE_CONFIG + "\nversion_policy: { all { } }\n")
        wait_for(lambda: index(c).get(("simple", "2")) == "READY")
        assert index(c)[("simple", "1")] == "READY"
        infer(c)

        # An added model.
        upload_tree(client, name, "models/simple_copy/", SIMPLE)
        client.put_object(Bucket=name, Key="models/simple_copy/config.pbtxt",
                          Body=SIMPLE_CONFIG.replace('name: "simple"', 'name: "simple_copy"'))
        wait_for(lambda: c.is_model_ready("simple_copy"))
        infer(c, "simple_copy")

        # Removed objects: the model is unloaded.
        for item in client.list_objects_v2(Bucket=name, Prefix="models/simple_copy/")["Contents"]:
            client.delete_object(Bucket=name, Key=item["Key"])
        wait_for(lambda: not c.is_model_ready("simple_copy"))
        assert c.is_model_ready("simple")
    assert server.stop() == 0
    assert "successfully unloaded 'simple_copy'" in server.log()


def test_explicit_load_and_unload_with_the_credential_file(moto, bucket, servers, tmp_path):
    client, name = bucket
    credentials = tmp_path / "cloud_credential.json"
    credentials.write_text(json.dumps({"s3": {
        "": {"key_id": "wrong", "secret_key": "wrong", "region": "", "session_token": "",
             "profile": "no-such-profile"},
        f"s3://{moto.endpoint}/{name}": {"key_id": "testing", "secret_key": "testing",
                                         "region": "us-east-1", "session_token": "",
                                         "profile": ""}}}))
    # No credential in the environment: only the file's longest matching entry can work.
    env = {"TRITON_CLOUD_CREDENTIAL_PATH": str(credentials), "AWS_ACCESS_KEY_ID": "",
           "AWS_SECRET_ACCESS_KEY": "", "AWS_SHARED_CREDENTIALS_FILE": str(tmp_path / "none"),
           "AWS_CONFIG_FILE": str(tmp_path / "none")}
    server = servers("--model-repository", f"s3://{moto.endpoint}/{name}/models",
                     "--model-control-mode", "explicit", env=env)
    with httpclient.InferenceServerClient(server.http_url) as c:
        assert not c.is_model_ready("simple")
        assert ("simple", "") in {(m["name"], m["version"]) for m in c.get_model_repository_index()}
        c.load_model("simple")
        assert c.is_model_ready("simple")

        # A load after the objects changed serves what the store holds now.
        client.put_object(Bucket=name, Key="models/simple/3/model.onnx",
                          Body=(SIMPLE / "1" / "model.onnx").read_bytes())
        c.load_model("simple")
        assert c.is_model_ready("simple", "3") and not c.is_model_ready("simple", "1")

        c.unload_model("simple")
        wait_for(lambda: not c.is_model_ready("simple"))
        with pytest.raises(InferenceServerException, match="failed to load 'absent'"):
            c.load_model("absent")
    assert server.stop() == 0


def test_explicit_index_lists_models_added_to_the_bucket(moto, bucket, servers):
    client, name = bucket
    server = servers("--model-repository", f"s3://{moto.endpoint}/{name}/models",
                     "--model-control-mode", "explicit", "--load-model", "simple",
                     env=S3_ENVIRONMENT)
    with grpcclient.InferenceServerClient(server.grpc_url) as c:
        assert index(c) == {("simple", "1"): "READY"}
        upload_tree(client, name, "models/added/", SIMPLE)
        client.put_object(Bucket=name, Key="models/added/config.pbtxt",
                          Body=SIMPLE_CONFIG.replace('name: "simple"', 'name: "added"'))
        # Listed as soon as it is in the bucket, not loaded, and nothing fetched yet.
        wait_for(lambda: ("added", "") in index(c))
        assert index(c)[("added", "")] == ""
        assert not c.is_model_ready("added")
        c.load_model("added")
        assert index(c)[("added", "1")] == "READY"
        infer(c, "added")

        c.unload_model("added")
        wait_for(lambda: index(c)[("added", "1")] == "UNAVAILABLE")
    assert server.stop() == 0


def test_unreachable_store_stops_startup(servers, tmp_path):
    from conftest import start_server as start

    with pytest.raises(RuntimeError, match="failed to poll from model repository"):
        start([], tmp_path / "down.log", "--model-repository",
              "s3://http://127.0.0.1:9/bucket/models", env={
                  **S3_ENVIRONMENT, "AWS_MAX_ATTEMPTS": "1"}, timeout=60)


# --- credentials as clouds give them: none (a public bucket), KServe's switch, IRSA ----------

@pytest.fixture
def proxy(moto):
    """The requests pyserve sends to moto, as sent."""
    from object_storage import RecordingProxy

    recorder = RecordingProxy(moto.endpoint)
    yield recorder
    recorder.stop()


def s3_requests(proxy, bucket: str) -> list[dict]:
    requests = [e for e in proxy.exchanges if e["path"].startswith(f"/{bucket}")]
    assert requests and all(e["status"] in (200, 206) for e in requests)
    return requests


def make_public(client, name: str) -> None:
    """A public bucket: a policy that lets anyone list it, and public-read objects (moto
    checks a HEAD against an "s3:HeadObject" action that no policy names, but honours ACLs)."""
    client.put_bucket_policy(Bucket=name, Policy=json.dumps({
        "Version": "2012-10-17", "Statement": [{
            "Effect": "Allow", "Principal": "*", "Action": ["s3:ListBucket", "s3:GetObject"],
            "Resource": [f"arn:aws:s3:::{name}", f"arn:aws:s3:::{name}/*"]}]}))
    for item in client.list_objects_v2(Bucket=name)["Contents"]:
        client.put_object_acl(Bucket=name, Key=item["Key"], ACL="public-read")


def test_no_credentials_reads_anonymously(moto, bucket, proxy, servers, tmp_path):
    """No AWS credentials anywhere (the instance metadata off): boto3 could not sign, and
    pyserve sends unsigned requests, as for a public bucket, instead of failing."""
    from object_storage import no_credentials

    client, name = bucket
    make_public(client, name)
    server = servers("--model-repository", f"s3://{proxy.endpoint}/{name}/models",
                     env=no_credentials(tmp_path))
    with grpcclient.InferenceServerClient(server.grpc_url) as c:
        infer(c)
    assert "no AWS credentials found, reading it anonymously" in server.log()
    assert server.stop() == 0
    assert not any("Authorization" in r["headers"] for r in s3_requests(proxy, name))


def test_kserves_anonymous_switch_never_signs(moto, bucket, proxy, servers, tmp_path):
    """awsAnonymousCredential=true (KServe's S3 secret annotation
    serving.kserve.io/s3-useanoncredential): the requests are unsigned even where a profile is
    configured, here one whose credential_process fails, so that signing could not work."""
    from object_storage import no_credentials

    client, name = bucket
    make_public(client, name)
    config = tmp_path / "aws_config"
    config.write_text("[default]\ncredential_process = /bin/false\n")
    env = {**no_credentials(tmp_path), "AWS_CONFIG_FILE": str(config)}
    with pytest.raises(RuntimeError, match="cannot get AWS credentials"):
        servers("--model-repository", f"s3://{moto.endpoint}/{name}/models", env=env)
    server = servers("--model-repository", f"s3://{proxy.endpoint}/{name}/models",
                     env={**env, "awsAnonymousCredential": "true"})
    with grpcclient.InferenceServerClient(server.grpc_url) as c:
        infer(c)
    assert server.stop() == 0
    assert not any("Authorization" in r["headers"] for r in s3_requests(proxy, name))


def test_irsa_web_identity_through_sts(moto, bucket, proxy, servers, tmp_path):
    """EKS's IAM roles for service accounts: the webhook's AWS_ROLE_ARN and
    AWS_WEB_IDENTITY_TOKEN_FILE, exchanged at STS (moto's, through AWS_ENDPOINT_URL_STS) for
    the role's temporary credentials, which sign every request."""
    import boto3
    import re as regex

    from object_storage import no_credentials

    _, name = bucket
    iam = boto3.client("iam", endpoint_url=moto.endpoint, region_name="us-east-1",
                       aws_access_key_id="testing", aws_secret_access_key="testing")
    iam.create_role(RoleName="pyserve-models", AssumeRolePolicyDocument=json.dumps({
        "Version": "2012-10-17", "Statement": [{
            "Effect": "Allow", "Action": "sts:AssumeRoleWithWebIdentity",
            "Principal": {"Federated": "arn:aws:iam::123456789012:oidc-provider/eks"}}]}))
    token = tmp_path / "token"  # what EKS's webhook mounts
    token.write_text("eyJhbGciOiJSUzI1NiJ9.eyJzdWIiOiJzeXN0ZW06c2VydmljZWFjY291bnQ6cHlzZXJ2"
                     "ZTpweXNlcnZlIn0.c2lnbmF0dXJl")
    server = servers("--model-repository", f"s3://{proxy.endpoint}/{name}/models",
                     env={**no_credentials(tmp_path),
                          "AWS_ROLE_ARN": "arn:aws:iam::123456789012:role/pyserve-models",
                          "AWS_WEB_IDENTITY_TOKEN_FILE": str(token),
                          "AWS_ENDPOINT_URL_STS": proxy.endpoint})
    with grpcclient.InferenceServerClient(server.grpc_url) as c:
        infer(c)
    assert server.stop() == 0
    (exchange,) = [e for e in proxy.exchanges if b"AssumeRoleWithWebIdentity" in e["body"]]
    assert token.read_text().encode() in exchange["body"] and exchange["status"] == 200
    key = regex.search(rb"<AccessKeyId>(\w+)</AccessKeyId>", exchange["response"])[1].decode()
    assert key.startswith("ASIA")  # temporary credentials
    for request in s3_requests(proxy, name):
        assert f"Credential={key}/" in request["headers"]["Authorization"]
        assert request["headers"]["X-Amz-Security-Token"]


