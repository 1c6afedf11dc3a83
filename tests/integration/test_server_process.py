"""The `pyserve` command as a process: help, startup logs, bad models, signals."""

from __future__ import annotations

import shutil
import signal
import subprocess

import numpy as np
import pytest
import tritonclient.http as httpclient

from conftest import EXAMPLES, OUTSIDE, PYSERVE, start_server


def test_help_reads_well():
    top = subprocess.run([*PYSERVE, "--help"], capture_output=True, text=True, check=True,
                         cwd=OUTSIDE)
    assert "serve" in top.stdout
    serve = subprocess.run([*PYSERVE, "serve", "--help"], capture_output=True, text=True,
                           check=True, cwd=OUTSIDE)
    for flag in ("--model-repository", "--grpc-port", "--http-port", "--metrics-port", "--host"):
        assert flag in serve.stdout
    assert "8001" in serve.stdout and "8000" in serve.stdout and "8002" in serve.stdout


def test_missing_repository_flag_is_a_usage_error():
    result = subprocess.run([*PYSERVE, "serve"], capture_output=True, text=True, cwd=OUTSIDE)
    assert result.returncode == 2 and "--model-repository" in result.stderr


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM])
def test_signal_shuts_down_cleanly(tmp_path, sig):
    server = start_server([EXAMPLES], tmp_path / "server.log")
    try:
        with httpclient.InferenceServerClient(server.http_url) as client:
            assert client.is_server_ready()
    finally:
        code = server.stop(sig)
    log = server.log()
    assert code == 0, log
    assert "successfully loaded 'simple' version 1" in log
    assert "successfully loaded 'mnist_cnn' version 1" in log
    assert "successfully loaded 'add_sub_python' version 1" in log
    assert "pyserve stopped" in log


def test_broken_model_does_not_stop_the_others(tmp_path):
    repository = tmp_path / "repo"
    shutil.copytree(EXAMPLES / "simple", repository / "simple")
    broken = repository / "broken"
    (broken / "1").mkdir(parents=True)
    (broken / "config.pbtxt").write_text('platform: "onnxruntime_onnx"\nmax_batch_size: -3\n')
    (repository / "no_model_file" / "1").mkdir(parents=True)
    (repository / "no_model_file" / "config.pbtxt").write_text(
        (EXAMPLES / "simple" / "config.pbtxt").read_text().replace('"simple"', '"no_model_file"'))
    server = start_server([repository], tmp_path / "server.log", "--exit-on-error", "false")
    try:
        with httpclient.InferenceServerClient(server.http_url) as client:
            assert client.is_model_ready("simple")
            assert not client.is_model_ready("broken")
            assert not client.is_model_ready("no_model_file")
            assert not client.is_server_ready()  # strict readiness: not every model is ready
            a = np.ones((1, 16), np.int32)
            inputs = [httpclient.InferInput(n, a.shape, "INT32") for n in ("INPUT0", "INPUT1")]
            for tensor in inputs:
                tensor.set_data_from_numpy(a)
            assert (client.infer("simple", inputs).as_numpy("OUTPUT0") == 2).all()
    finally:
        server.stop()
    log = server.log()
    assert "failed to load 'broken'" in log and "must be non-negative" in log
    assert "failed to load 'no_model_file' version 1" in log
