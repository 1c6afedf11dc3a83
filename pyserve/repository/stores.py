"""Object stores that hold model repositories: S3 (and S3-compatible servers), Google Cloud
Storage and Azure Blob Storage, with Triton's URL forms and credential sources.

Each store lists the objects under a prefix with a stamp that changes when an object changes
(its ETag or generation, and size), lists the folders one level under a prefix, and downloads
one object to a file. The clients are the clouds' own libraries (boto3, google-cloud-storage,
azure-storage-blob), imported only when a repository of their kind is named.

URL forms, as tritonserver spells them:
  s3://bucket/path                      AWS S3; region and credentials from the environment
                                        (unsigned requests where none are found)
  s3://[http://|https://]host:port/bucket/path   an S3-compatible server (http by default)
  gs://bucket/path                      Google Cloud Storage (anonymous where no credentials)
  as://account/container/path           Azure Blob Storage (shared key, Entra ID tokens, or
                                        anonymous)
"""

from __future__ import annotations

import json
import logging
import os
import re
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

from pyserve.errors import ServerError

log = logging.getLogger("pyserve")

SCHEMES = ("s3", "gs", "as")
# Triton's S3 endpoint form: the port is what tells a host from a bucket.
_S3_ENDPOINT = re.compile(r"^s3://(?:(https?)://)?([0-9A-Za-z.\-]+):([0-9]+)/([^/]+)(?:/(.*))?$")
_S3 = re.compile(r"^s3://([^/:]+)(?:/(.*))?$")
_GS = re.compile(r"^gs://([^/]+)(?:/(.*))?$")
_AS = re.compile(r"^as://([^/]+)/([^/?]+)(?:/([^?]*))?$")
_AZURE_HOST_SUFFIX = ".blob.core.windows.net"


def is_remote(location: str | os.PathLike) -> bool:
    return isinstance(location, str) and location.split("://", 1)[0] in SCHEMES \
        and "://" in location


@dataclass(frozen=True)
class Location:
    """A parsed repository URL: which store, which bucket (or container), which prefix."""
    url: str
    scheme: str
    bucket: str
    prefix: str  # "" or "a/b/" (always ending with "/")
    endpoint: str = ""  # S3-compatible server, e.g. http://127.0.0.1:9000
    account: str = ""  # Azure storage account

    @property
    def credential_key(self) -> str:
        """The path Triton matches credential-file keys against (longest prefix wins)."""
        return self.url


def parse(url: str) -> Location:
    def prefix(path: str | None) -> str:
        path = (path or "").strip("/")
        return f"{path}/" if path else ""

    if url.startswith("s3://"):
        match = _S3_ENDPOINT.match(url)
        if match:
            scheme, host, port, bucket, path = match.groups()
            return Location(url, "s3", bucket, prefix(path),
                            endpoint=f"{scheme or 'http'}://{host}:{port}")
        match = _S3.match(url)
        if match:
            return Location(url, "s3", match[1], prefix(match[2]))
    elif url.startswith("gs://"):
        match = _GS.match(url)
        if match:
            return Location(url, "gs", match[1], prefix(match[2]))
    elif url.startswith("as://"):
        match = _AS.match(url)
        if match:
            account = match[1].removesuffix(_AZURE_HOST_SUFFIX)  # Triton takes both forms
            return Location(url, "as", match[2], prefix(match[3]), account=account)
    raise ServerError(f"invalid model repository path '{url}': expected s3://bucket/path, "
                      "s3://[http://|https://]host:port/bucket/path, gs://bucket/path or "
                      "as://account/container/path")


def credential_for(location: Location, environ: dict[str, str] | None = None):
    """The entry of Triton's TRITON_CLOUD_CREDENTIAL_PATH file for this location: the entry
    under its scheme whose key is the longest prefix of the URL ("" matches every URL).
    None when there is no file or no matching entry: the client's own defaults apply then
    (AWS_* variables and profiles, GOOGLE_APPLICATION_CREDENTIALS, AZURE_STORAGE_*)."""
    environ = os.environ if environ is None else environ
    path = environ.get("TRITON_CLOUD_CREDENTIAL_PATH")
    if not path:
        return None
    try:
        document = json.loads(Path(path).read_text())
    except (OSError, ValueError) as e:
        raise ServerError(f"failed to read the cloud credential file '{path}' "
                          f"(TRITON_CLOUD_CREDENTIAL_PATH): {e}") from None
    entries = document.get(location.scheme) or {}
    if not isinstance(entries, dict):
        raise ServerError(f"cloud credential file '{path}': '{location.scheme}' must be an object")
    matching = [key for key in entries if location.credential_key.startswith(key)]
    if not matching:
        return None
    return entries[max(matching, key=len)]


class Store(Protocol):
    def list(self, prefix: str) -> dict[str, str]:
        """Object key -> a stamp that changes when the object changes, for keys under prefix."""

    def folders(self, prefix: str) -> set[str]:
        """The names of the folders one level under prefix (which ends with "/" or is "")."""

    def download(self, key: str, target: Path) -> None:
        """Write the object's bytes to target."""


def _missing(library: str, extra: str, scheme: str) -> ServerError:
    return ServerError(f"{scheme}:// model repositories need {library}: "
                       f"pip install 'pyserve[{extra}]'")


class S3Store:
    """Requests are signed with the credentials boto3 finds (the credential file's entry, the
    environment, profiles, web identity as IRSA gives it, container and instance roles), and
    unsigned, as for a public bucket, where it finds none or where KServe's
    awsAnonymousCredential=true (its S3 secret's `serving.kserve.io/s3-useanoncredential`)
    asks for it."""

    def __init__(self, location: Location, credential: dict | None,
                 environ: Mapping[str, str] | None = None) -> None:
        try:
            import boto3
            from botocore import UNSIGNED
            from botocore.config import Config
        except ImportError:
            raise _missing("boto3", "s3", "s3") from None
        environ = os.environ if environ is None else environ
        credential = credential or {}
        session = boto3.session.Session(
            aws_access_key_id=credential.get("key_id") or None,
            aws_secret_access_key=credential.get("secret_key") or None,
            aws_session_token=credential.get("session_token") or None,
            region_name=credential.get("region") or None,
            profile_name=credential.get("profile") or None)
        config = Config(retries={"max_attempts": 3, "mode": "standard"},
                        s3={"addressing_style": "path"} if location.endpoint else None)
        if environ.get("awsAnonymousCredential", "").lower() == "true":
            config = config.merge(Config(signature_version=UNSIGNED))
        elif _aws_credentials(session, location) is None:
            log.info("%s: no AWS credentials found, reading it anonymously (unsigned "
                     "requests)", location.url)
            config = config.merge(Config(signature_version=UNSIGNED))
        self._client = session.client("s3", endpoint_url=location.endpoint or None,
                                      config=config)
        self._bucket = location.bucket

    def list(self, prefix: str) -> dict[str, str]:
        found = {}
        for page in self._client.get_paginator("list_objects_v2").paginate(
                Bucket=self._bucket, Prefix=prefix):
            for item in page.get("Contents", []):
                found[item["Key"]] = f"{item.get('ETag', '')}:{item['Size']}"
        return found

    def folders(self, prefix: str) -> set[str]:
        found = set()
        for page in self._client.get_paginator("list_objects_v2").paginate(
                Bucket=self._bucket, Prefix=prefix, Delimiter="/"):
            found.update(_folder_name(entry["Prefix"], prefix)
                         for entry in page.get("CommonPrefixes", []))
        return found

    def download(self, key: str, target: Path) -> None:
        self._client.download_file(self._bucket, key, str(target))


def _aws_credentials(session, location: Location):
    """The credentials boto3's chain finds, None if none (a web identity is exchanged at STS
    only when first used)."""
    from botocore.exceptions import BotoCoreError

    try:
        return session.get_credentials()
    except BotoCoreError as e:  # a profile's credential_process failed, ...
        raise ServerError(f"{location.url}: cannot get AWS credentials: {e}") from None


class GCSStore:
    """The credential file's key, else Application Default Credentials
    (GOOGLE_APPLICATION_CREDENTIALS, gcloud's, the metadata server: GKE workload identity);
    without any, anonymous access (public buckets), as Triton and KServe fall back to."""

    def __init__(self, location: Location, credential: str | None) -> None:
        try:
            from google.auth.exceptions import DefaultCredentialsError
            from google.cloud import storage
        except ImportError:
            raise _missing("google-cloud-storage", "gcs", "gs") from None
        if credential:
            client = storage.Client.from_service_account_json(credential)
        elif os.environ.get("STORAGE_EMULATOR_HOST") and not os.environ.get(
                "GOOGLE_APPLICATION_CREDENTIALS"):
            client = storage.Client.create_anonymous_client()  # no credentials to look for
        else:
            try:
                client = storage.Client()
            except DefaultCredentialsError:
                log.info("%s: no Google credentials found, reading it anonymously",
                         location.url)
                client = storage.Client.create_anonymous_client()
        self._bucket = client.bucket(location.bucket)

    def list(self, prefix: str) -> dict[str, str]:
        return {blob.name: f"{blob.generation}:{blob.size}"
                for blob in self._bucket.list_blobs(prefix=prefix)}

    def folders(self, prefix: str) -> set[str]:
        blobs = self._bucket.list_blobs(prefix=prefix, delimiter="/")
        for _ in blobs:  # the folders are known once every page has been read
            pass
        return {_folder_name(folder, prefix) for folder in blobs.prefixes}

    def download(self, key: str, target: Path) -> None:
        self._bucket.blob(key).download_to_filename(str(target))


class AzureStore:
    """Credentials as Triton reads them: the credential file's entry, else AZURE_STORAGE_ACCOUNT,
    AZURE_STORAGE_KEY and AZURE_STORAGE_AUTH_TYPE; the account is the credential's
    `account_str`, else the URL's. A key signs with it (shared key). Without one, a Microsoft
    Entra ID token: from DefaultAzureCredential (auth_type `default`, or where the environment
    names an identity: AKS workload identity's AZURE_FEDERATED_TOKEN_FILE, AZURE_CLIENT_ID) or
    from the managed identity (auth_type `managed_identity`); else anonymous reads (a public
    container). The endpoint is the account's public one, or the BlobEndpoint of
    AZURE_STORAGE_CONNECTION_STRING (an emulator such as Azurite, another cloud, a private
    endpoint), whose own key is used when no other is given."""

    def __init__(self, location: Location, credential: dict | None,
                 environ: Mapping[str, str] | None = None) -> None:
        try:
            from azure.storage.blob import BlobServiceClient
        except ImportError:
            raise _missing("azure-storage-blob", "azure", "as") from None
        environ = os.environ if environ is None else environ
        if credential is None:
            credential = {"account_str": environ.get("AZURE_STORAGE_ACCOUNT", ""),
                          "account_key": environ.get("AZURE_STORAGE_KEY", ""),
                          "auth_type": environ.get("AZURE_STORAGE_AUTH_TYPE", "")}
        account = credential.get("account_str") or location.account
        key = credential.get("account_key")
        signer = _azure_credential(credential.get("auth_type") or "", key, account, environ)
        connection = environ.get("AZURE_STORAGE_CONNECTION_STRING")
        if connection:
            service = BlobServiceClient.from_connection_string(connection, credential=signer)
        else:
            service = BlobServiceClient(f"https://{account}{_AZURE_HOST_SUFFIX}",
                                        credential=signer)
        self._container = service.get_container_client(location.bucket)

    def list(self, prefix: str) -> dict[str, str]:
        return {blob.name: f"{blob.etag}:{blob.size}"
                for blob in self._container.list_blobs(name_starts_with=prefix)}

    def folders(self, prefix: str) -> set[str]:
        from azure.storage.blob import BlobPrefix

        return {_folder_name(item.name, prefix)
                for item in self._container.walk_blobs(name_starts_with=prefix, delimiter="/")
                if isinstance(item, BlobPrefix)}

    def download(self, key: str, target: Path) -> None:
        with open(target, "wb") as out:
            self._container.download_blob(key).readinto(out)


# Variables that name an Entra ID identity for DefaultAzureCredential: AKS workload identity
# (its webhook sets all but the secret) and a service principal.
_AZURE_IDENTITY_VARIABLES = ("AZURE_FEDERATED_TOKEN_FILE", "AZURE_CLIENT_ID",
                             "AZURE_CLIENT_SECRET")


def _azure_credential(auth_type: str, key: str | None, account: str,
                      environ: Mapping[str, str]):
    """What signs the requests: a shared key, a token credential, or None (anonymous)."""
    auth_type = auth_type.lower()
    if auth_type not in ("", "key", "default", "managed_identity"):
        raise ServerError(f"as:// model repositories: unknown auth_type '{auth_type}' "
                          "(key, default or managed_identity)")
    if key and auth_type in ("", "key"):
        return {"account_name": account, "account_key": key}
    if auth_type == "key" or (auth_type == "" and not any(
            environ.get(name) for name in _AZURE_IDENTITY_VARIABLES)):
        return None
    try:
        from azure.identity import DefaultAzureCredential, ManagedIdentityCredential
    except ImportError:
        raise _missing("azure-identity", "azure", "as") from None
    if auth_type == "managed_identity":
        return ManagedIdentityCredential(client_id=environ.get("AZURE_CLIENT_ID") or None)
    # Variables the credential reads from the process environment: only os.environ's.
    return DefaultAzureCredential()


def _folder_name(folder: str, prefix: str) -> str:
    """"a/b/model/" under "a/b/" -> "model"."""
    return folder[len(prefix):].rstrip("/")


def open_store(location: Location) -> Store:
    credential = credential_for(location)
    if location.scheme == "s3":
        return S3Store(location, credential)
    if location.scheme == "gs":
        return GCSStore(location, credential)
    return AzureStore(location, credential)
