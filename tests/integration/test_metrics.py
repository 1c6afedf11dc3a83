"""Triton's metrics with a real server and tritonclient, on both frontends, read by
prometheus_client's own text parser with their types: request counters, latency counters or
summaries (--metrics-config), CPU and memory gauges sampled every --metrics-interval-ms,
pinned memory, GPU gauges through NVML where a GPU exists, and counters that go on across a
model's reload."""

from __future__ import annotations

import json
import subprocess
import time
import urllib.request

import numpy as np
import pytest
import tritonclient.grpc as grpcclient
import tritonclient.http as httpclient
from prometheus_client.parser import text_string_to_metric_families

from conftest import FRONTENDS, OUTSIDE, PYSERVE, start_server, write_double_model

MODEL = {"model": "double", "version": "1"}
PER_MODEL_COUNTERS = ("nv_inference_request_success", "nv_inference_request_failure",
                      "nv_inference_count", "nv_inference_exec_count")
LATENCY_COUNTERS = ("nv_inference_request_duration_us", "nv_inference_queue_duration_us",
                    "nv_inference_compute_input_duration_us",
                    "nv_inference_compute_infer_duration_us",
                    "nv_inference_compute_output_duration_us")
SUMMARIES = ("nv_inference_request_summary_us", "nv_inference_queue_summary_us",
             "nv_inference_compute_input_summary_us", "nv_inference_compute_infer_summary_us",
             "nv_inference_compute_output_summary_us")


@pytest.fixture(scope="module")
def repository(tmp_path_factory):
    repo = tmp_path_factory.mktemp("metrics_repo")
    write_double_model(repo)
    return repo


def scrape(server) -> tuple[str, dict]:
    text = urllib.request.urlopen(f"http://127.0.0.1:{server.metrics_port}/metrics",
                                  timeout=10).read().decode()
    return text, {family.name: family for family in text_string_to_metric_families(text)}


def value(family, **labels) -> float:
    """The value of the family's sample with `labels` (a counter's, the parser names
    NAME_total; a summary's quantiles, NAME)."""
    return next(s.value for s in family.samples
                if s.name in (family.name, family.name + "_total")
                and labels.items() <= s.labels.items())


def infer(server, protocol: str, n: int = 1) -> None:
    x = np.arange(4, dtype=np.float32)
    module = grpcclient if protocol == "grpc" else httpclient
    url = server.grpc_url if protocol == "grpc" else server.http_url
    with module.InferenceServerClient(url) as client:
        tensor = module.InferInput("INPUT0", [4], "FP32")
        tensor.set_data_from_numpy(x)
        for _ in range(n):
            np.testing.assert_array_equal(client.infer("double", [tensor]).as_numpy("OUTPUT0"),
                                          x * 2)


def wait_for(server, ready, timeout: float = 30) -> dict:
    """Scrapes until `ready(families)` (sampled figures arrive after an interval)."""
    deadline = time.monotonic() + timeout
    while True:
        _, families = scrape(server)
        if ready(families) or time.monotonic() > deadline:
            return families
        time.sleep(0.05)


@pytest.fixture(scope="module", params=FRONTENDS)
def server(request, repository, tmp_path_factory):
    process = start_server([repository], tmp_path_factory.mktemp("metrics") / "server.log",
                           "--grpc-frontend", request.param, "--http-frontend", request.param,
                           "--metrics-config", "summary_latencies=true",
                           "--metrics-config", "summary_quantiles=0.5:0.05,0.9:0.01",
                           "--metrics-interval-ms", "100")
    yield process
    assert process.stop() == 0


@pytest.mark.parametrize("protocol", ["grpc", "http"])
def test_the_exposition_parses_with_tritons_types(server, protocol):
    _, before = scrape(server)
    done = value(before["nv_inference_request_success"], **MODEL)
    infer(server, protocol, 3)
    text, families = scrape(server)
    for name in PER_MODEL_COUNTERS + LATENCY_COUNTERS:
        assert families[name].type == "counter", name
    for name in ("nv_inference_pending_request_count", "nv_pinned_memory_pool_total_bytes",
                 "nv_pinned_memory_pool_used_bytes"):
        assert families[name].type == "gauge", name
    assert value(families["nv_inference_request_success"], **MODEL) == done + 3
    assert value(families["nv_inference_exec_count"], **MODEL) >= 3
    assert value(families["nv_inference_request_failure"], reason="BACKEND", **MODEL) == 0
    assert value(families["nv_inference_compute_infer_duration_us"], **MODEL) > 0
    assert value(families["nv_pinned_memory_pool_total_bytes"]) == 256 * 1024 * 1024
    # Every sample is filed under a family of a known type: none is untyped.
    assert all(family.type != "unknown" for family in families.values()), text
    assert not any(name.startswith("nv_cache") for name in families)  # no cache configured


def test_summaries_have_the_quantiles_asked_for(server):
    infer(server, "grpc", 5)
    _, families = scrape(server)
    for name in SUMMARIES:
        family = families[name]
        assert family.type == "summary", name
        samples = {(s.name, s.labels.get("quantile")): s.value for s in family.samples
                   if s.labels["model"] == "double"}
        assert set(samples) == {(name + "_count", None), (name + "_sum", None),
                                (name, "0.5"), (name, "0.9")}, name
        assert samples[(name + "_count", None)] >= 5
        assert samples[(name, "0.5")] <= samples[(name, "0.9")]
    request = families["nv_inference_request_summary_us"]
    assert value(request, **MODEL, quantile="0.9") > 0


def test_cpu_and_memory_gauges_are_sampled(server):
    families = wait_for(server, lambda f: "nv_cpu_memory_total_bytes" in f
                        and value(f["nv_cpu_memory_total_bytes"]) > 0)
    for name in ("nv_cpu_utilization", "nv_cpu_memory_total_bytes", "nv_cpu_memory_used_bytes"):
        assert families[name].type == "gauge", name
    total, used = (value(families[n]) for n in ("nv_cpu_memory_total_bytes",
                                                "nv_cpu_memory_used_bytes"))
    assert 0 < used < total
    assert 0 <= value(families["nv_cpu_utilization"]) <= 1


def test_switches_leave_families_out(repository, tmp_path):
    server = start_server([repository], tmp_path / "server.log",
                          "--metrics-config", "counter_latencies=false",
                          "--allow-cpu-metrics", "false", "--allow-gpu-metrics", "false")
    try:
        infer(server, "http")
        _, families = scrape(server)
        assert value(families["nv_inference_request_success"], **MODEL) == 1
        assert not set(LATENCY_COUNTERS + SUMMARIES) & set(families)
        assert not any(name.startswith(("nv_cpu", "nv_gpu")) for name in families)
    finally:
        assert server.stop() == 0


def test_counters_go_on_across_a_reload(repository, tmp_path):
    server = start_server([repository], tmp_path / "server.log",
                          "--model-control-mode", "explicit", "--load-model", "double")
    try:
        infer(server, "grpc", 2)
        with grpcclient.InferenceServerClient(server.grpc_url) as client:
            config = client.get_model_config("double", as_json=True)["config"]
            config["parameters"] = {"reloaded": {"string_value": "yes"}}
            client.load_model("double", config=json.dumps(config))
            assert client.get_model_config("double").config.parameters["reloaded"].string_value \
                == "yes"
            # The statistics are the new load's, as in Triton; the metrics' counters go on.
            assert client.get_inference_statistics("double").model_stats[0].execution_count == 0
        infer(server, "grpc", 1)
        _, families = scrape(server)
        assert value(families["nv_inference_request_success"], **MODEL) == 3
        assert value(families["nv_inference_exec_count"], **MODEL) == 3
    finally:
        assert server.stop() == 0


def test_gpu_gauges_through_nvml(repository, tmp_path):
    pynvml = pytest.importorskip("pynvml")
    try:
        pynvml.nvmlInit()
        count = pynvml.nvmlDeviceGetCount()
        uuids = {pynvml.nvmlDeviceGetUUID(pynvml.nvmlDeviceGetHandleByIndex(i))
                 for i in range(count)}
        pynvml.nvmlShutdown()
    except pynvml.NVMLError:
        count = 0
    if count == 0:
        pytest.skip("no GPU (NVML finds none)")
    uuids = {u.decode() if isinstance(u, bytes) else u for u in uuids}
    server = start_server([repository], tmp_path / "server.log", "--metrics-interval-ms", "100")
    try:
        families = wait_for(server, lambda f: "nv_gpu_memory_total_bytes" in f)
        for name in ("nv_gpu_utilization", "nv_gpu_memory_total_bytes",
                     "nv_gpu_memory_used_bytes", "nv_gpu_power_usage", "nv_gpu_power_limit"):
            assert families[name].type == "gauge", name
            assert {s.labels["gpu_uuid"] for s in families[name].samples} == uuids, name
        assert families["nv_energy_consumption"].type == "counter"
        for uuid in uuids:
            assert value(families["nv_gpu_memory_total_bytes"], gpu_uuid=uuid) > 0
            assert 0 <= value(families["nv_gpu_utilization"], gpu_uuid=uuid) <= 1
    finally:
        assert server.stop() == 0


@pytest.mark.parametrize("args, text", [
    (("--metrics-config", "summary_latencies"),
     "--metrics-config option format is <setting>=<value>. Got summary_latencies"),
    (("--metrics-config", "histogram_latencies=true"),
     "--metrics-config: unknown setting 'histogram_latencies'"),
    (("--metrics-config", "summary_quantiles=0.5"), "summary_quantiles: expected"),
    (("--metrics-interval-ms", "0"), "--metrics-interval-ms must be positive"),
])
def test_metrics_flags_are_checked(args, text):
    result = subprocess.run([*PYSERVE, "serve", "--model-repository", str(OUTSIDE), *args],
                            capture_output=True, text=True, timeout=60, cwd=OUTSIDE)
    assert result.returncode != 0
    assert text in result.stderr
