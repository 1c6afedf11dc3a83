"""Remote model repositories: URL forms, Triton's credential file, and the local mirror kept in
step with moto's standalone S3 server on 127.0.0.1."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from conftest import OUTSIDE, PYSERVE
from object_storage import S3_ENVIRONMENT, s3_client, start_moto
from pyserve.errors import ServerError
from pyserve.repository.remote import RemoteRepository, open_repositories
from pyserve.repository import find_models, remote
from pyserve.repository.stores import (AzureStore, S3Store, credential_for, is_remote,
                                      parse)


@pytest.mark.parametrize("url, bucket, prefix, endpoint", [
    ("s3://bucket", "bucket", "", ""),
    ("s3://bucket/models", "bucket", "models/", ""),
    ("s3://bucket/a/b/", "bucket", "a/b/", ""),
    ("s3://127.0.0.1:9000/bucket/models", "bucket", "models/", "http://127.0.0.1:9000"),
    ("s3://http://minio.local:9000/bucket", "bucket", "", "http://minio.local:9000"),
    ("s3://https://s3.example.com:443/b/p/q", "b", "p/q/", "https://s3.example.com:443"),
])
def test_s3_urls_as_triton_spells_them(url, bucket, prefix, endpoint):
    location = parse(url)
    assert (location.scheme, location.bucket, location.prefix, location.endpoint) == (
        "s3", bucket, prefix, endpoint)


def test_gcs_and_azure_urls():
    gs = parse("gs://bucket/models/v1")
    assert (gs.scheme, gs.bucket, gs.prefix) == ("gs", "bucket", "models/v1/")
    azure = parse("as://account/container/models")
    assert (azure.scheme, azure.account, azure.bucket, azure.prefix) == (
        "as", "account", "container", "models/")
    assert parse("as://account.blob.core.windows.net/container").account == "account"


@pytest.mark.parametrize("auth_type, key, environ, signer", [
    ("", "k", {}, "shared key"),
    ("key", "k", {"AZURE_CLIENT_ID": "id"}, "shared key"),  # a key wins over an identity
    ("", "", {}, "anonymous"),
    ("key", "", {"AZURE_FEDERATED_TOKEN_FILE": "/t"}, "anonymous"),
    ("", "", {"AZURE_FEDERATED_TOKEN_FILE": "/t"}, "DefaultAzureCredential"),  # AKS
    ("", "", {"AZURE_CLIENT_ID": "id"}, "DefaultAzureCredential"),  # as KServe decides
    ("default", "k", {}, "DefaultAzureCredential"),
    ("managed_identity", "", {}, "ManagedIdentityCredential"),
])
def test_azure_signs_with_a_key_a_token_or_nothing(auth_type, key, environ, signer):
    pytest.importorskip("azure.identity")
    from pyserve.repository.stores import _azure_credential

    made = _azure_credential(auth_type, key, "acct", environ)
    name = ("anonymous" if made is None else "shared key" if isinstance(made, dict)
            else type(made).__name__)
    assert name == signer


def test_azure_unknown_auth_type_is_refused():
    pytest.importorskip("azure.storage.blob")
    with pytest.raises(ServerError, match="unknown auth_type 'certificate'"):
        AzureStore(parse("as://a/c/m"), {"account_str": "a", "auth_type": "certificate"}, {})


@pytest.mark.parametrize("url", ["s3://", "s3://http://host/bucket", "gs://", "as://account",
                                 "as://account/"])
def test_bad_urls_are_refused(url):
    with pytest.raises(ServerError, match="invalid model repository path"):
        parse(url)


def test_only_the_three_schemes_are_remote():
    assert is_remote("s3://b") and is_remote("gs://b") and is_remote("as://a/c")
    assert not is_remote("models") and not is_remote("/srv/s3://x") and not is_remote("http://x")


def test_bad_url_is_a_usage_error():
    result = subprocess.run([*PYSERVE, "serve", "--model-repository", "s3://http://host/bucket"],
                            capture_output=True, text=True, cwd=OUTSIDE)
    assert result.returncode == 2 and "invalid model repository path" in result.stderr


def test_credential_file_longest_prefix_wins(tmp_path):
    path = tmp_path / "cloud_credential.json"
    path.write_text(json.dumps({
        "s3": {"": {"key_id": "default"}, "s3://bucket-2": {"key_id": "two"},
               "s3://bucket-2/models": {"key_id": "two-models"}},
        "gs": {"": "/keys/default.json", "gs://special": "/keys/special.json"},
        "as": {"as://acct/container": {"account_str": "acct", "account_key": "k"}},
    }))
    env = {"TRITON_CLOUD_CREDENTIAL_PATH": str(path)}
    assert credential_for(parse("s3://bucket-1/m"), env) == {"key_id": "default"}
    assert credential_for(parse("s3://bucket-2/other"), env) == {"key_id": "two"}
    assert credential_for(parse("s3://bucket-2/models/x"), env) == {"key_id": "two-models"}
    assert credential_for(parse("gs://special/x"), env) == "/keys/special.json"
    assert credential_for(parse("gs://plain"), env) == "/keys/default.json"
    assert credential_for(parse("as://acct/container/m"), env)["account_key"] == "k"
    assert credential_for(parse("as://other/container"), env) is None
    assert credential_for(parse("s3://b"), {}) is None


def test_unreadable_credential_file_is_an_error(tmp_path):
    (tmp_path / "bad.json").write_text("{not json")
    with pytest.raises(ServerError, match="cloud credential file"):
        credential_for(parse("s3://b"), {"TRITON_CLOUD_CREDENTIAL_PATH": str(tmp_path / "bad.json")})


# --- the mirror against moto's server -----------------------------------------------------

@pytest.fixture(scope="module")
def moto(tmp_path_factory):
    server = start_moto(tmp_path_factory.mktemp("moto") / "moto.log")
    yield server
    server.stop()


@pytest.fixture
def bucket(moto, request):
    client = s3_client(moto.endpoint)
    name = f"unit-{request.node.name.replace('_', '-')[:40].lower()}"
    client.create_bucket(Bucket=name)
    return client, name


def repository(moto, bucket_name: str, cache_dir, prefix: str = "models") -> RemoteRepository:
    location = parse(f"s3://{moto.endpoint}/{bucket_name}/{prefix}")
    store = S3Store(location, {"key_id": "testing", "secret_key": "testing",
                               "region": "us-east-1"})
    return RemoteRepository(location, store, cache_dir)


def test_sync_mirrors_changes_and_deletions(moto, bucket, tmp_path):
    client, name = bucket
    client.put_object(Bucket=name, Key="models/a/config.pbtxt", Body=b"one")
    client.put_object(Bucket=name, Key="models/a/1/model.onnx", Body=b"weights")
    client.put_object(Bucket=name, Key="models/a/1/", Body=b"")  # a console's folder marker
    client.put_object(Bucket=name, Key="elsewhere/x", Body=b"not ours")
    mirror = repository(moto, name, tmp_path)
    assert sorted(mirror.sync()) == ["a/1/model.onnx", "a/config.pbtxt"]
    root = mirror.local_dir
    assert (root / "a" / "config.pbtxt").read_bytes() == b"one"
    assert (root / "a" / "1" / "model.onnx").read_bytes() == b"weights"
    assert not (root / "elsewhere").exists()
    assert mirror.sync() == []  # nothing changed: nothing downloaded

    client.put_object(Bucket=name, Key="models/a/config.pbtxt", Body=b"two")  # same size
    assert mirror.sync() == ["a/config.pbtxt"]
    assert (root / "a" / "config.pbtxt").read_bytes() == b"two"

    client.delete_object(Bucket=name, Key="models/a/1/model.onnx")
    assert mirror.sync() == ["a/1/model.onnx"]
    assert not (root / "a" / "1").exists()  # emptied folders go too
    assert not list(root.rglob(".partial-*"))


def test_sync_of_one_model_leaves_the_others(moto, bucket, tmp_path):
    client, name = bucket
    for model in ("a", "b"):
        client.put_object(Bucket=name, Key=f"models/{model}/config.pbtxt", Body=b"1")
    mirror = repository(moto, name, tmp_path)
    mirror.sync()
    for model in ("a", "b"):
        client.put_object(Bucket=name, Key=f"models/{model}/config.pbtxt", Body=b"2")
    assert mirror.sync("a") == ["a/config.pbtxt"]
    assert (mirror.local_dir / "b" / "config.pbtxt").read_bytes() == b"1"
    client.delete_object(Bucket=name, Key="models/b/config.pbtxt")
    assert mirror.sync("a") == []  # b's deletion is outside the scope
    assert mirror.sync("b") == ["b/config.pbtxt"]


def test_cache_dir_survives_a_restart(moto, bucket, tmp_path):
    client, name = bucket
    client.put_object(Bucket=name, Key="models/a/config.pbtxt", Body=b"1")
    first = repository(moto, name, tmp_path)
    first.sync()
    first.close()  # a cache dir is kept
    second = repository(moto, name, tmp_path)
    assert second.local_dir == first.local_dir
    assert second.sync() == []  # nothing downloaded again


def test_temporary_mirror_is_removed_on_close(moto, bucket):
    client, name = bucket
    client.put_object(Bucket=name, Key="models/a/config.pbtxt", Body=b"1")
    mirror = repository(moto, name, None)
    mirror.sync()
    assert (mirror.local_dir / "a" / "config.pbtxt").is_file()
    mirror.close()
    assert not mirror.local_dir.exists()


def test_keys_escaping_the_mirror_are_skipped(moto, bucket, tmp_path):
    client, name = bucket
    client.put_object(Bucket=name, Key="models/../evil", Body=b"x")
    client.put_object(Bucket=name, Key="models/ok/config.pbtxt", Body=b"x")
    mirror = repository(moto, name, tmp_path / "cache")
    assert mirror.sync() == ["ok/config.pbtxt"]
    assert not (tmp_path / "cache" / "evil").exists()


def test_model_names_are_the_stores_folders(moto, bucket, tmp_path, monkeypatch):
    client, name = bucket
    client.put_object(Bucket=name, Key="models/a/config.pbtxt", Body=b"1")
    client.put_object(Bucket=name, Key="models/README", Body=b"not a model")
    mirror = repository(moto, name, tmp_path)
    mirror.sync()
    assert mirror.model_names() == {"a"}
    client.put_object(Bucket=name, Key="models/b/1/model.onnx", Body=b"1")
    client.put_object(Bucket=name, Key="models/.hidden/x", Body=b"1")
    assert mirror.model_names() == {"a"}  # listed at most once a second: the sync's names
    monkeypatch.setattr(remote, "_NAMES_FRESH_SECS", 0.0)
    assert mirror.model_names() == {"a", "b"}
    # find_models lists them for the mirror's folder; only `a` has been fetched.
    assert find_models([mirror.local_dir]) == {
        "a": [mirror.local_dir / "a"], "b": [mirror.local_dir / "b"]}
    mirror.close()
    assert find_models([mirror.local_dir]) == {"a": [mirror.local_dir / "a"]}


def test_model_names_of_a_store_that_fails_are_the_last_known(moto, bucket, tmp_path,
                                                              monkeypatch):
    client, name = bucket
    client.put_object(Bucket=name, Key="models/a/config.pbtxt", Body=b"1")
    mirror = repository(moto, name, tmp_path)
    mirror.sync()
    client.delete_object(Bucket=name, Key="models/a/config.pbtxt")
    client.delete_bucket(Bucket=name)
    monkeypatch.setattr(remote, "_NAMES_FRESH_SECS", 0.0)
    assert mirror.model_names() == {"a"}
    mirror.close()


def test_missing_bucket_is_a_server_error(moto, tmp_path):
    mirror = repository(moto, "no-such-bucket", tmp_path)
    with pytest.raises(ServerError, match="failed to poll from model repository"):
        mirror.sync()


def test_open_repositories_keeps_order_and_uses_the_mount_variable(moto, bucket, tmp_path,
                                                                  monkeypatch):
    client, name = bucket
    for key, value in S3_ENVIRONMENT.items():
        monkeypatch.setenv(key, value)
    url = f"s3://{moto.endpoint}/{name}/models"
    remotes, folders = open_repositories(
        [tmp_path / "local", url], None,
        {"TRITON_AWS_MOUNT_DIRECTORY": str(tmp_path / "mount")})
    assert folders[0] == tmp_path / "local"
    assert folders[1] == remotes[0].local_dir and folders[1].parent == tmp_path / "mount"


def test_missing_client_library_says_which_extra(monkeypatch):
    monkeypatch.setitem(sys.modules, "boto3", None)  # import boto3 -> ImportError
    with pytest.raises(ServerError, match=r"pyserve\[s3\]"):
        S3Store(parse("s3://b"), None)
