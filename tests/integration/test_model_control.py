"""Model control with a real server and tritonclient: the three control modes, version
policies, the repository API (config override, file upload), failed reloads, and a reload
under continuous load that loses no request."""

from __future__ import annotations

import json
import shutil
import tempfile
import threading
import time
import urllib.error
import urllib.request
from pathlib import Path

import numpy as np
import pytest
import tritonclient.grpc as grpcclient
import tritonclient.http as httpclient
from tritonclient.utils import InferenceServerException

from conftest import EXAMPLES, start_server, write_python_model
from pyserve import devices

SIMPLE_ONNX = EXAMPLES / "simple" / "1" / "model.onnx"
SIMPLE_CONFIG = (EXAMPLES / "simple" / "config.pbtxt").read_text()


def make_repository(root: Path, models: dict[str, list[int]], config_extra: str = "") -> Path:
    """Copies of `simple` under the given names, with the given version directories."""
    for name, versions in models.items():
        for version in versions:
            (root / name / str(version)).mkdir(parents=True)
            shutil.copy(SIMPLE_ONNX, root / name / str(version) / "model.onnx")
        (root / name / "config.pbtxt").write_text(
            SIMPLE_CONFIG.replace('name: "simple"', f'name: "{name}"') + config_extra)
    return root


def infer(client, model: str, batch: int = 1, version: str = "") -> np.ndarray:
    module = grpcclient if isinstance(client, grpcclient.InferenceServerClient) else httpclient
    a = np.arange(16 * batch, dtype=np.int32).reshape(batch, 16)
    inputs = [module.InferInput(n, a.shape, "INT32") for n in ("INPUT0", "INPUT1")]
    for tensor in inputs:
        tensor.set_data_from_numpy(a)
    result = client.infer(model, inputs, model_version=version).as_numpy("OUTPUT0")
    np.testing.assert_array_equal(result, a * 2)
    return result


def index(client) -> dict[tuple[str, str], tuple[str, str]]:
    return {(m.name, m.version): (m.state, m.reason)
            for m in client.get_model_repository_index().models}


def ready_index(server) -> list[dict]:
    """RepositoryIndex with the `ready` filter, which tritonclient does not expose."""
    request = urllib.request.Request(f"http://{server.http_url}/v2/repository/index",
                                     data=json.dumps({"ready": True}).encode(), method="POST")
    return json.loads(urllib.request.urlopen(request, timeout=30).read())


def wait_for(predicate, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, "condition not met in time"
        time.sleep(0.1)


@pytest.fixture
def server_factory(tmp_path):
    started = []

    def start(repositories, *args, env=None):
        server = start_server(repositories, tmp_path / f"server{len(started)}.log", *args, env=env)
        started.append(server)
        return server

    yield start
    for server in started:
        server.stop()


def test_none_mode_refuses_the_load_api(server_factory):
    server = server_factory([EXAMPLES])
    with grpcclient.InferenceServerClient(server.grpc_url) as client:
        with pytest.raises(InferenceServerException) as error:
            client.load_model("simple")
        assert error.value.status() == "StatusCode.UNAVAILABLE"
        assert "explicit model load / unload is not allowed if polling is enabled" in str(error.value)
        infer(client, "simple")
    with httpclient.InferenceServerClient(server.http_url) as client:
        with pytest.raises(InferenceServerException) as error:
            client.unload_model("simple")
        assert error.value.status() == "503"


def test_explicit_mode_loads_and_unloads_on_request(server_factory):
    server = server_factory([EXAMPLES], "--model-control-mode", "explicit", "--load-model", "simple")
    with grpcclient.InferenceServerClient(server.grpc_url) as client:
        entries = index(client)
        assert entries[("mnist_cnn", "")] == ("", "") and entries[("simple", "1")] == ("READY", "")
        assert client.is_server_ready() and not client.is_model_ready("mnist_cnn")
        client.load_model("mnist_cnn")
        assert client.is_model_ready("mnist_cnn")
        client.unload_model("simple")
        assert not client.is_model_ready("simple")
        assert index(client)[("simple", "1")] == ("UNAVAILABLE", "unloaded")
        assert [m["name"] for m in ready_index(server)] == ["mnist_cnn"]
        with pytest.raises(InferenceServerException, match="failed to load 'nope'"):
            client.load_model("nope")
    with httpclient.InferenceServerClient(server.http_url) as client:
        client.load_model("simple")
        infer(client, "simple")
        states = {m["name"]: m["state"] for m in client.get_model_repository_index()}
        assert states["mnist_cnn"] == states["simple"] == "READY"


def test_explicit_mode_wildcard_loads_everything(server_factory):
    server = server_factory([EXAMPLES], "--model-control-mode", "explicit", "--load-model", "*")
    with grpcclient.InferenceServerClient(server.grpc_url) as client:
        assert client.is_model_ready("simple") and client.is_model_ready("mnist_cnn")


@pytest.mark.parametrize("policy, ready, not_ready", [
    ("", ["3"], ["1", "2"]),
    ("version_policy: { latest: { num_versions: 2 } }", ["2", "3"], ["1"]),
    ("version_policy: { all: { } }", ["1", "2", "3"], []),
    ("version_policy: { specific: { versions: [ 1, 3 ] } }", ["1", "3"], ["2"]),
])
def test_version_policies(tmp_path, server_factory, policy, ready, not_ready):
    repository = make_repository(tmp_path / "repo", {"multi": [1, 2, 3]}, policy)
    (repository / "multi" / "not_a_version").mkdir()
    (repository / "multi" / "07").mkdir()  # a leading zero is not a version either
    server = server_factory([repository])
    with grpcclient.InferenceServerClient(server.grpc_url) as client:
        for version in ready:
            assert client.is_model_ready("multi", version)
            infer(client, "multi", version=version)
        for version in not_ready:
            assert not client.is_model_ready("multi", version)
        assert list(client.get_model_metadata("multi").versions) == ready
        infer(client, "multi")  # no version: the latest ready one


def test_config_override_on_load(server_factory):
    server = server_factory([EXAMPLES], "--model-control-mode", "explicit")
    override = json.dumps({"backend": "onnxruntime", "max_batch_size": "4",
                           "input": [{"name": "INPUT0", "data_type": "type_int32", "dims": [16]},
                                     {"name": "INPUT1", "data_type": "TYPE_INT32", "dims": [16]}],
                           "output": [{"name": "OUTPUT0", "data_type": "TYPE_INT32", "dims": [16]},
                                      {"name": "OUTPUT1", "data_type": "TYPE_INT32", "dims": [16]}]})
    with grpcclient.InferenceServerClient(server.grpc_url) as client:
        client.load_model("simple", config=override)
        assert client.get_model_config("simple").config.max_batch_size == 4
        infer(client, "simple", batch=4)
        with pytest.raises(InferenceServerException, match="batch-size must be <= 4"):
            infer(client, "simple", batch=5)
        # Worded as Triton words it (NVIDIA's simple_grpc_model_control.py looks for "failed
        # to load"); why is in the log.
        with pytest.raises(InferenceServerException) as refused:
            client.load_model("simple", config='{"max_batch_size": "x", "bogus_field": 1}')
        assert (refused.value.status(), refused.value.message()) == (
            "StatusCode.INTERNAL", "failed to load 'simple', failed to poll from model repository")
        assert "Poll failed for model directory 'simple': Invalid config override" in server.log()
        infer(client, "simple", batch=4)  # the bad override changed nothing
    with httpclient.InferenceServerClient(server.http_url) as client:
        with pytest.raises(InferenceServerException) as refused:
            client.load_model("simple", config="not json")
        assert (refused.value.status(), refused.value.message()) == (
            "500", "failed to load 'simple', failed to poll from model repository")
    request = urllib.request.Request(
        f"http://{server.http_url}/v2/repository/models/simple/load", method="POST",
        data=json.dumps({"parameters": {"colour": "red"}}).encode())
    with pytest.raises(urllib.error.HTTPError) as error:
        urllib.request.urlopen(request, timeout=30)
    assert error.value.code == 400
    assert json.loads(error.value.read()) == {"error": "Unrecognized load parameter 'colour'."}


def test_file_upload_on_load_and_path_escapes(tmp_path, server_factory):
    repository = make_repository(tmp_path / "repo", {"simple": [1]})
    server = server_factory([repository], "--model-control-mode", "explicit")
    config = json.dumps({"name": "uploaded", "backend": "onnxruntime", "max_batch_size": 8})
    files = {"file:1/model.onnx": SIMPLE_ONNX.read_bytes()}
    before = {p for p in tmp_path.rglob("*")}
    with grpcclient.InferenceServerClient(server.grpc_url) as client:
        client.load_model("uploaded", config=config, files=files)
        infer(client, "uploaded")
        for escape in ("file:../../escaped.onnx", "file:1/../../../escaped.onnx", "file:/tmp/x"):
            with pytest.raises(InferenceServerException, match="invalid file path") as error:
                client.load_model("evil", config=config, files={escape: b"x"})
            assert error.value.status() == "StatusCode.INVALID_ARGUMENT"
        infer(client, "uploaded")
    with httpclient.InferenceServerClient(server.http_url) as client:
        with pytest.raises(InferenceServerException, match="invalid file path"):
            client.load_model("evil", config=config, files={"file:../x/model.onnx": b"x"})
        infer(client, "uploaded")
    assert {p for p in tmp_path.rglob("*")} == before  # the repository is untouched
    temp = Path(tempfile.gettempdir())
    assert not list(temp.glob("escaped.onnx")) and not list(temp.glob("*/escaped.onnx"))


def test_failed_reload_keeps_the_old_version_serving(tmp_path, server_factory):
    repository = make_repository(tmp_path / "repo", {"simple": [1]})
    server = server_factory([repository], "--model-control-mode", "explicit", "--load-model", "simple")
    with grpcclient.InferenceServerClient(server.grpc_url) as client:
        (repository / "simple" / "config.pbtxt").write_text(SIMPLE_CONFIG + "\nmax_batch_size: -1\n")
        with pytest.raises(InferenceServerException, match="failed to load"):
            client.load_model("simple")
        infer(client, "simple", batch=8)
        state, reason = index(client)[("simple", "1")]
        assert state == "READY" and "reload failed" in reason
        # A broken model file: the config is fine, the new session fails, the old one serves.
        (repository / "simple" / "config.pbtxt").write_text(SIMPLE_CONFIG)
        (repository / "simple" / "1" / "model.onnx").write_bytes(b"not an onnx model")
        with pytest.raises(InferenceServerException, match="failed to load"):
            client.load_model("simple")
        infer(client, "simple")


def test_poll_mode_follows_the_repository(tmp_path, server_factory):
    repository = make_repository(tmp_path / "repo", {"simple": [1]})
    server = server_factory([repository], "--model-control-mode", "poll",
                            "--repository-poll-secs", "0.5")
    with grpcclient.InferenceServerClient(server.grpc_url) as client:
        make_repository(repository, {"added": [1]})
        wait_for(lambda: client.is_model_ready("added"))
        infer(client, "added")

        shutil.copytree(repository / "simple" / "1", repository / "simple" / "2")
        wait_for(lambda: client.is_model_ready("simple", "2"))
        wait_for(lambda: not client.is_model_ready("simple", "1"))  # latest 1: v1 retired

        config = repository / "simple" / "config.pbtxt"
        config.write_text(SIMPLE_CONFIG.replace("max_batch_size: 8", "max_batch_size: 4"))
        wait_for(lambda: client.get_model_config("simple").config.max_batch_size == 4)

        config.write_text("this is not a config")
        time.sleep(1.5)  # three polls: the broken config is seen and refused
        infer(client, "simple", batch=4)
        assert "reload failed" in index(client)[("simple", "2")][1]

        shutil.rmtree(repository / "added")
        wait_for(lambda: not client.is_model_ready("added"))
        with pytest.raises(InferenceServerException, match="not allowed"):
            client.load_model("simple")


def test_reload_under_continuous_load_loses_no_request(tmp_path, server_factory):
    repository = make_repository(tmp_path / "repo", {"simple": [1]},
                                 "dynamic_batching { max_queue_delay_microseconds: 2000 }")
    server = server_factory([repository], "--model-control-mode", "explicit", "--load-model", "simple")
    sent, answered, errors = [0], [0], []
    stop = threading.Event()

    def load_loop():
        with grpcclient.InferenceServerClient(server.grpc_url) as client:
            while not stop.is_set():
                sent[0] += 1
                try:
                    infer(client, "simple", batch=2)
                    answered[0] += 1
                except Exception as e:  # noqa: BLE001 - every failure is counted and shown
                    errors.append(repr(e))

    threads = [threading.Thread(target=load_loop) for _ in range(4)]
    for thread in threads:
        thread.start()
    try:
        with grpcclient.InferenceServerClient(server.grpc_url) as client:
            for _ in range(5):
                time.sleep(0.3)
                client.load_model("simple")  # a full reload: new sessions, swap, drain the old
    finally:
        stop.set()
        for thread in threads:
            thread.join()
    assert errors == []
    assert answered[0] == sent[0] and sent[0] > 50
    assert server.log().count("successfully loaded 'simple' version 1") == 6


def test_exit_on_error_and_strict_readiness(tmp_path, server_factory):
    repository = make_repository(tmp_path / "repo", {"simple": [1]})
    (repository / "broken" / "1").mkdir(parents=True)
    (repository / "broken" / "config.pbtxt").write_text('platform: "onnxruntime_onnx"\n')
    with pytest.raises(RuntimeError, match="did not start"):
        server_factory([repository])  # --exit-on-error defaults to true, as in Triton
    server = server_factory([repository], "--exit-on-error", "false")
    with httpclient.InferenceServerClient(server.http_url) as client:
        assert client.is_model_ready("simple") and not client.is_server_ready()
    lenient = server_factory([repository], "--exit-on-error", "false", "--strict-readiness", "false")
    with httpclient.InferenceServerClient(lenient.http_url) as client:
        assert client.is_server_ready()


def test_model_warmup_runs_before_ready(tmp_path, server_factory):
    warmup = ('model_warmup [ { name: "zeros" batch_size: 8 count: 2 inputs [ '
              '{ key: "INPUT0" value: { data_type: TYPE_INT32 dims: [ 16 ] zero_data: true } }, '
              '{ key: "INPUT1" value: { data_type: TYPE_INT32 dims: [ 16 ] random_data: true } } ] } ]')
    repository = make_repository(tmp_path / "repo", {"warm": [1]}, warmup)
    server = server_factory([repository])
    with grpcclient.InferenceServerClient(server.grpc_url) as client:
        stats = client.get_inference_statistics("warm").model_stats[0]
        assert stats.inference_count == 16 and stats.execution_count == 2


def test_a_name_in_two_repositories_is_unavailable(tmp_path, server_factory):
    first = make_repository(tmp_path / "first", {"twice": [1], "only_first": [1]})
    second = make_repository(tmp_path / "second", {"twice": [1]})
    server = server_factory([first, second], "--exit-on-error", "false")
    with grpcclient.InferenceServerClient(server.grpc_url) as client:
        assert client.is_model_ready("only_first") and not client.is_model_ready("twice")
        assert index(client)[("twice", "")] == (
            "UNAVAILABLE", "model appears in two or more repositories")


def test_reloads_free_what_they_replace(tmp_path):
    """200 reloads through the load API: the server's memory and threads stay flat (each
    replaced version's scheduler, threads and instances are freed)."""
    repository = make_repository(tmp_path / "models", {"reloaded": [1]})
    server = start_server([repository], tmp_path / "server.log", "--model-control-mode",
                          "explicit", "--load-model", "reloaded")
    try:
        client = httpclient.InferenceServerClient(server.http_url)

        def rss_and_threads() -> tuple[int, int]:
            fields = dict(line.split(":", 1) for line in open(f"/proc/{server.process.pid}/status"))
            return int(fields["VmRSS"].split()[0]) << 10, int(fields["Threads"])

        for i in range(200):
            client.load_model("reloaded")
            infer(client, "reloaded")
            if i == 19:
                settled = rss_and_threads()
        # A leak would leave one or more threads per reload (180 here). A few come and go on
        # their own: a replaced version's teardown finishing, the HTTP server's thread for a
        # new connection of the client.
        deadline = time.monotonic() + 10
        while (threads := rss_and_threads()[1]) > settled[1] and time.monotonic() < deadline:
            time.sleep(0.1)
        rss = rss_and_threads()[0]
        assert threads <= settled[1] + 4, (threads, settled[1])
        assert rss - settled[0] < 0.05 * settled[0] + (4 << 20), (rss >> 20, settled[0] >> 20)
    finally:
        server.stop()


_FAILS_FIRST = '''
from pathlib import Path

import triton_python_backend_utils as pb_utils


class TritonPythonModel:
    def initialize(self, args):
        attempts = Path(args["model_repository"]) / "attempts"
        count = int(attempts.read_text()) if attempts.exists() else 0
        attempts.write_text(str(count + 1))
        if count < 2:
            raise RuntimeError(f"attempt {count + 1} fails")

    def execute(self, requests):
        return [pb_utils.InferenceResponse([pb_utils.get_input_tensor_by_name(r, "X")])
                for r in requests]
'''


@pytest.mark.parametrize("retries, loads", [(1, False), (2, True)])
def test_model_load_retry_count(server_factory, tmp_path, retries, loads):
    """A version whose load fails is loaded again --model-load-retry-count times (this model
    fails its first two loads)."""
    repository = tmp_path / "repository"
    write_python_model(repository, "flaky", 'input [ { name: "X" data_type: TYPE_INT32 '
                       'dims: [ 1 ] } ]\noutput [ { name: "X" data_type: TYPE_INT32 '
                       'dims: [ 1 ] } ]\n', _FAILS_FIRST)
    server = server_factory([repository], "--model-control-mode", "explicit",
                            "--model-load-retry-count", str(retries))
    client = grpcclient.InferenceServerClient(server.grpc_url)
    if loads:
        client.load_model("flaky")
        assert client.is_model_ready("flaky")
    else:
        with pytest.raises(InferenceServerException, match="attempt 2 fails"):
            client.load_model("flaky")
    assert (repository / "flaky" / "attempts").read_text() == str(retries + 1)


_IDENTITY = _FAILS_FIRST.replace("if count < 2:", "if False:")


def _gpu_model(repository: Path) -> None:
    write_python_model(repository, "on_gpu", 'input [ { name: "X" data_type: TYPE_INT32 '
                       'dims: [ 1 ] } ]\noutput [ { name: "X" data_type: TYPE_INT32 '
                       'dims: [ 1 ] } ]\ninstance_group [ { kind: KIND_GPU gpus: [ 0 ] } ]\n',
                       _IDENTITY)


def test_model_load_gpu_limit_leaves_cpu_instances_alone(server_factory, tmp_path):
    make_repository(tmp_path / "repository", {"simple": [1]})
    server = server_factory([tmp_path / "repository"], "--model-control-mode", "explicit",
                            "--model-load-gpu-limit", "0:0.0")
    client = grpcclient.InferenceServerClient(server.grpc_url)
    client.load_model("simple")
    infer(client, "simple")


@pytest.mark.skipif(not devices.gpu_count(), reason="needs a GPU")
def test_model_load_gpu_limit_refuses_instances_past_it(server_factory, tmp_path):
    _gpu_model(tmp_path / "repository")
    server = server_factory([tmp_path / "repository"], "--model-control-mode", "explicit",
                            "--model-load-gpu-limit", "0:0.0")
    client = grpcclient.InferenceServerClient(server.grpc_url)
    with pytest.raises(InferenceServerException,
                       match="can not create model 'on_gpu_0_0': memory limit set for "
                             "KIND_GPU 0 has exceeded, model loading is rejected."):
        client.load_model("on_gpu")
    client.unload_model("on_gpu")
    server2 = server_factory([tmp_path / "repository"], "--model-control-mode", "explicit",
                             "--model-load-gpu-limit", "0:1.0")
    client2 = grpcclient.InferenceServerClient(server2.grpc_url)
    client2.load_model("on_gpu")
    assert client2.is_model_ready("on_gpu")
