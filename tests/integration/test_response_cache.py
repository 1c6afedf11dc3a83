"""The response cache with a real server and tritonclient, on both frontends: a repeated
request is answered without running the model (a Python model that reports how often it
ran), what the key covers (shape, bytes, the outputs asked for) and leaves out (parameters),
least recently used eviction within --cache-config's size, the statistics and metrics, the
flags' forms, and the models that cannot be cached."""

from __future__ import annotations

import json
import queue
import subprocess
import urllib.request

import numpy as np
import pytest
import tritonclient.grpc as grpcclient
import tritonclient.http as httpclient
from prometheus_client.parser import text_string_to_metric_families

from conftest import FRONTENDS, OUTSIDE, PYSERVE, start_server, write_python_model

# OUTPUT0 = 2 * INPUT0, and RUNS: how many times execute has run so far in this process, so
# a response from the cache carries the count of the run that computed it.
COUNTED = """
import numpy as np
import triton_python_backend_utils as pb_utils

class TritonPythonModel:
    runs = 0

    def execute(self, requests):
        responses = []
        for request in requests:
            TritonPythonModel.runs += 1
            x = pb_utils.get_input_tensor_by_name(request, "INPUT0").as_numpy()
            responses.append(pb_utils.InferenceResponse([
                pb_utils.Tensor("OUTPUT0", x * 2),
                pb_utils.Tensor("RUNS", np.array([TritonPythonModel.runs], dtype=np.int64))]))
        return responses
"""
TENSORS = """
input [ { name: "INPUT0" data_type: TYPE_FP32 dims: [ -1, -1 ] } ]
output [ { name: "OUTPUT0" data_type: TYPE_FP32 dims: [ -1, -1 ] },
         { name: "RUNS" data_type: TYPE_INT64 dims: [ 1 ] } ]
"""
CACHED = 'response_cache { enable: true }\n'
ELEMENTS = 1000  # the eviction test's inputs: 4000 bytes, about 8 KB an entry
CACHE_BYTES = 20000  # two such entries, not three


@pytest.fixture(scope="module")
def repository(tmp_path_factory):
    repo = tmp_path_factory.mktemp("cache_repo")
    write_python_model(repo, "counted", TENSORS + CACHED, COUNTED)
    write_python_model(repo, "uncached", TENSORS, COUNTED)
    return repo


@pytest.fixture(scope="module", params=FRONTENDS)
def server(request, repository, tmp_path_factory):
    process = start_server([repository], tmp_path_factory.mktemp("cache") / "server.log",
                           "--grpc-frontend", request.param, "--http-frontend", request.param,
                           "--cache-config", f"local,size={CACHE_BYTES}")
    yield process
    assert process.stop() == 0


def infer(client, model: str, x: np.ndarray, outputs=("OUTPUT0", "RUNS"), **kwargs):
    """(OUTPUT0 or None, RUNS or None) of one inference through `client`'s module."""
    module = grpcclient if isinstance(client, grpcclient.InferenceServerClient) else httpclient
    tensor = module.InferInput("INPUT0", list(x.shape), "FP32")
    tensor.set_data_from_numpy(x)
    asked = [module.InferRequestedOutput(name) for name in outputs]
    result = client.infer(model, [tensor], outputs=asked, **kwargs)
    return result.as_numpy("OUTPUT0"), result.as_numpy("RUNS")


def runs(client, model: str, x: np.ndarray) -> int:
    out, count = infer(client, model, x)
    np.testing.assert_array_equal(out, x * 2)
    return int(count[0])


def cache_stats(client, model: str) -> tuple[int, int, int]:
    """(cache hits, cache misses, executions) from the model's statistics, over gRPC."""
    stats = client.get_inference_statistics(model).model_stats[0]
    return (stats.inference_stats.cache_hit.count, stats.inference_stats.cache_miss.count,
            stats.execution_count)


@pytest.fixture(params=["grpc", "http"])
def client(request, server):
    if request.param == "grpc":
        with grpcclient.InferenceServerClient(server.grpc_url) as c:
            yield c
    else:
        with httpclient.InferenceServerClient(server.http_url) as c:
            yield c


def offset(client) -> int:
    """Keeps the two clients' inputs apart (the module's server and cache are shared)."""
    return 0 if isinstance(client, grpcclient.InferenceServerClient) else 500


def unique(seed: float, shape=(1, 4)) -> np.ndarray:
    """Inputs no other test sends."""
    return np.full(shape, seed, dtype=np.float32) + np.arange(np.prod(shape), dtype=np.float32).reshape(shape)


def test_a_repeated_request_is_answered_without_running_the_model(server, client):
    seed = 1000 + offset(client)
    with grpcclient.InferenceServerClient(server.grpc_url) as stats_client:
        hits, misses, executions = cache_stats(stats_client, "counted")
        x = unique(seed)
        first = runs(client, "counted", x)
        assert runs(client, "counted", x) == first  # the response of the first run
        assert runs(client, "counted", x) == first
        assert cache_stats(stats_client, "counted") == (hits + 2, misses + 1, executions + 1)
        stats = stats_client.get_inference_statistics("counted").model_stats[0]
        assert stats.inference_stats.cache_hit.ns > 0
        assert stats.inference_stats.success.count >= stats.execution_count + 2
        # A model without response_cache runs every time.
        assert runs(client, "uncached", x) < runs(client, "uncached", x)
        assert cache_stats(stats_client, "uncached")[:2] == (0, 0)


def test_the_key_covers_shape_bytes_and_outputs_not_parameters(server, client):
    x = unique(2000 + offset(client), (2, 2))
    first = runs(client, "counted", x)
    assert runs(client, "counted", x.reshape(1, 4)) > first  # same bytes, another shape
    changed = x.copy()
    changed[1, 1] += 1
    assert runs(client, "counted", changed) > first  # one element differs
    # Request parameters are not part of the key.
    assert int(infer(client, "counted", x, parameters={"p": 1})[1][0]) == first
    # A response holds only the outputs asked for: asking for another set runs the model.
    out, count = infer(client, "counted", x, outputs=("OUTPUT0",))
    np.testing.assert_array_equal(out, x * 2)
    assert count is None
    out, count = infer(client, "counted", x, outputs=("OUTPUT0",))
    np.testing.assert_array_equal(out, x * 2)


def test_least_recently_used_entries_are_evicted_within_the_size(server, client):
    base = 3000 + offset(client)
    a, b, c = (unique(base + i, (1, ELEMENTS)) for i in range(3))
    ran_a, ran_b = runs(client, "counted", a), runs(client, "counted", b)
    assert runs(client, "counted", a) == ran_a  # a hit: b is now the least recently used
    ran_c = runs(client, "counted", c)          # evicts b
    assert runs(client, "counted", a) == ran_a
    assert runs(client, "counted", c) == ran_c
    assert runs(client, "counted", b) > ran_c   # b ran again (and evicted a)
    assert runs(client, "counted", c) == ran_c
    assert runs(client, "counted", a) > ran_c


def metrics(server) -> dict:
    text = urllib.request.urlopen(f"http://127.0.0.1:{server.metrics_port}/metrics",
                                  timeout=10).read().decode()
    return {family.name: family for family in text_string_to_metric_families(text)}


def sample(family, **labels) -> float:
    return next(s.value for s in family.samples if labels.items() <= s.labels.items())


def test_cache_metrics_have_tritons_names_and_types(server):
    with grpcclient.InferenceServerClient(server.grpc_url) as c:
        x = unique(4000)
        runs(c, "counted", x)
        runs(c, "counted", x)
        hits, misses, _ = cache_stats(c, "counted")
    families = metrics(server)
    per_model = {"model": "counted", "version": "1"}
    for name in ("nv_cache_num_hits_per_model", "nv_cache_hit_duration_per_model",
                 "nv_cache_num_misses_per_model", "nv_cache_miss_duration_per_model"):
        assert families[name].type == "counter", name
    assert sample(families["nv_cache_num_hits_per_model"], **per_model) == hits
    assert sample(families["nv_cache_num_misses_per_model"], **per_model) == misses
    assert sample(families["nv_cache_hit_duration_per_model"], **per_model) > 0
    assert not any(s.labels.get("model") == "uncached"
                   for s in families["nv_cache_num_hits_per_model"].samples)
    for name in ("nv_cache_util", "nv_cache_num_entries", "nv_cache_num_hits",
                 "nv_cache_num_misses", "nv_cache_num_lookups", "nv_cache_num_evictions",
                 "nv_cache_lookup_duration", "nv_cache_insertion_duration"):
        assert families[name].type == "gauge", name
    assert sample(families["nv_cache_num_lookups"]) == (sample(families["nv_cache_num_hits"])
                                                         + sample(families["nv_cache_num_misses"]))
    assert 0 < sample(families["nv_cache_util"]) <= 1
    assert sample(families["nv_cache_num_entries"]) >= 1


def serve(*args: str) -> subprocess.CompletedProcess:
    """`pyserve serve` expected to stop at once (a bad flag)."""
    return subprocess.run([*PYSERVE, "serve", "--model-repository", str(OUTSIDE), *args],
                          capture_output=True, text=True, timeout=60, cwd=OUTSIDE)


@pytest.mark.parametrize("args, text", [
    (("--cache-config", "local,size=1", "--response-cache-byte-size", "1"),
     "Incompatible flags --response-cache-byte-size and --cache-config both provided"),
    (("--cache-config", "redis,host=localhost"), "the 'redis' cache is not supported"),
    (("--cache-config", "size=10"), "No cache specified. --cache-config option format is"),
    (("--cache-config", "local,size"), "--cache-config option format is '<cache name>,"),
    (("--cache-config", "local,size=lots"), "the local cache takes one setting, size=BYTES"),
])
def test_cache_flags_are_refused_with_tritons_texts(args, text):
    result = serve(*args)
    assert result.returncode != 0
    assert text in result.stderr


def test_the_deprecated_byte_size_flag_serves_the_cache(repository, tmp_path):
    server = start_server([repository], tmp_path / "server.log",
                          "--response-cache-byte-size", "100000",
                          "--cache-directory", "/opt/tritonserver/caches")
    try:
        with httpclient.InferenceServerClient(server.http_url) as c:
            x = unique(5000)
            assert runs(c, "counted", x) == runs(c, "counted", x)
        assert "'--response-cache-byte-size' has been deprecated" in server.log()
    finally:
        assert server.stop() == 0


def test_without_a_server_cache_every_request_runs(repository, tmp_path):
    server = start_server([repository], tmp_path / "server.log")
    try:
        with grpcclient.InferenceServerClient(server.grpc_url) as c:
            x = unique(6000)
            assert runs(c, "counted", x) < runs(c, "counted", x)
            assert cache_stats(c, "counted")[:2] == (0, 0)
    finally:
        assert server.stop() == 0


@pytest.mark.parametrize("extra, text", [
    ('model_transaction_policy { decoupled: true }\n',
     "Response Cache does not currently support model bad with 'decoupled' transaction "
     "policy. Please disable the response cache."),
    ('sequence_batching { }\n',
     "Response Cache does not currently support model bad with sequence batching scheduler. "
     "Please disable the response cache."),
])
def test_decoupled_and_sequence_models_cannot_be_cached(tmp_path, extra, text):
    write_python_model(tmp_path, "bad", TENSORS + CACHED + extra, COUNTED, max_batch_size=1)
    server = start_server([tmp_path], tmp_path / "server.log", "--cache-config",
                          "local,size=100000", "--exit-on-error", "false",
                          "--strict-readiness", "false")
    try:
        with httpclient.InferenceServerClient(server.http_url) as c:
            assert not c.is_model_ready("bad")
        assert text in server.log()
    finally:
        assert server.stop() == 0


def test_a_reloaded_version_does_not_answer_with_its_predecessors_responses(repository,
                                                                            tmp_path):
    server = start_server([repository], tmp_path / "server.log", "--model-control-mode",
                          "explicit", "--load-model", "counted", "--cache-config",
                          "local,size=100000")
    try:
        with grpcclient.InferenceServerClient(server.grpc_url) as c:
            x = unique(7000)
            before = runs(c, "counted", x)
            assert runs(c, "counted", x) == before
            config = c.get_model_config("counted", as_json=True)["config"]
            config["parameters"] = {"reloaded": {"string_value": "yes"}}
            c.load_model("counted", config=json.dumps(config))
            assert cache_stats(c, "counted") == (0, 0, 0)  # the new load's statistics
            after = runs(c, "counted", x)
            assert cache_stats(c, "counted") == (0, 1, 1)  # it ran the request again
            assert runs(c, "counted", x) == after
            assert cache_stats(c, "counted") == (1, 1, 1)
    finally:
        assert server.stop() == 0


def test_stream_messages_are_answered_from_the_cache(server):
    x = unique(8000)
    answers = queue.Queue()
    with grpcclient.InferenceServerClient(server.grpc_url) as c:
        first = runs(c, "counted", x)
        tensor = grpcclient.InferInput("INPUT0", list(x.shape), "FP32")
        tensor.set_data_from_numpy(x)
        c.start_stream(callback=lambda result, error: answers.put((result, error)))
        asked = [grpcclient.InferRequestedOutput(name) for name in ("OUTPUT0", "RUNS")]
        for i in range(3):  # the same outputs asked for as by runs(): the same key
            c.async_stream_infer("counted", [tensor], outputs=asked, request_id=str(i))
        got = [answers.get(timeout=30) for _ in range(3)]
        c.stop_stream()
    for result, error in got:
        assert error is None
        assert int(result.as_numpy("RUNS")[0]) == first
        np.testing.assert_array_equal(result.as_numpy("OUTPUT0"), x * 2)
    assert sorted(r.get_response().id for r, _ in got) == ["0", "1", "2"]
