"""A model repository in Google Cloud Storage, end to end: pyserve serving `gs://bucket/path`
from gcp-storage-emulator on 127.0.0.1 (google-cloud-storage finds it through
STORAGE_EMULATOR_HOST), loaded, then reloaded by poll after an object changes."""

from __future__ import annotations

import time

import numpy as np
import pytest
import tritonclient.grpc as grpcclient

from conftest import EXAMPLES, start_server
from object_storage import gcs_bucket, start_gcs_emulator
from pyserve.repository.stores import GCSStore, parse

SIMPLE = EXAMPLES / "simple"


@pytest.fixture
def emulator(tmp_path, monkeypatch):
    server = start_gcs_emulator(tmp_path / "gcs.log")
    monkeypatch.setenv("STORAGE_EMULATOR_HOST", server.endpoint)
    yield server
    server.stop()


def test_serves_and_polls_a_gcs_repository(emulator, tmp_path):
    bucket = gcs_bucket("models-bucket")
    for path in sorted(SIMPLE.rglob("*")):
        if path.is_file():
            bucket.blob(f"repo/simple/{path.relative_to(SIMPLE).as_posix()}").upload_from_filename(
                str(path))
    bucket.blob("repo/README").upload_from_string("not a model")
    assert GCSStore(parse("gs://models-bucket/repo"), None).folders("repo/") == {"simple"}
    server = start_server([], tmp_path / "server.log", "--model-repository",
                          "gs://models-bucket/repo", "--model-control-mode", "poll",
                          "--repository-poll-secs", "0.5",
                          env={"STORAGE_EMULATOR_HOST": emulator.endpoint})
    try:
        with grpcclient.InferenceServerClient(server.grpc_url) as c:
            assert c.is_model_ready("simple", "1")
            a = np.ones((1, 16), np.int32)
            inputs = [grpcclient.InferInput(n, a.shape, "INT32") for n in ("INPUT0", "INPUT1")]
            for t in inputs:
                t.set_data_from_numpy(a)
            assert (c.infer("simple", inputs).as_numpy("OUTPUT0") == 2).all()

            bucket.blob("repo/simple/4/model.onnx").upload_from_filename(
                str(SIMPLE / "1" / "model.onnx"))
            deadline = time.monotonic() + 30
            while not c.is_model_ready("simple", "4"):
                assert time.monotonic() < deadline, "the new version was not loaded"
                time.sleep(0.1)
            assert (c.infer("simple", inputs).as_numpy("OUTPUT0") == 2).all()
    finally:
        assert server.stop() == 0


def test_falls_back_to_anonymous_access_without_credentials(emulator, tmp_path):
    """No key, no gcloud configuration, no metadata server (its addresses point at a closed
    port on 127.0.0.1): Application Default Credentials fail, and pyserve reads the bucket
    anonymously, as Triton and KServe do for public buckets. The emulator is reached as a
    custom endpoint (API_ENDPOINT_OVERRIDE), not as an emulator, so the path is the real one."""
    from object_storage import no_credentials

    bucket = gcs_bucket("public-bucket")
    for path in sorted(SIMPLE.rglob("*")):
        if path.is_file():
            bucket.blob(f"repo/simple/{path.relative_to(SIMPLE).as_posix()}").upload_from_filename(
                str(path))
    server = start_server([], tmp_path / "server.log", "--model-repository",
                          "gs://public-bucket/repo", env={
                              **no_credentials(tmp_path), "STORAGE_EMULATOR_HOST": "",
                              "API_ENDPOINT_OVERRIDE": emulator.endpoint})
    try:
        with grpcclient.InferenceServerClient(server.grpc_url) as c:
            assert c.is_model_ready("simple", "1")
        assert "no Google credentials found, reading it anonymously" in server.log()
    finally:
        assert server.stop() == 0
