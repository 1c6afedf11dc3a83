"""NVIDIA's own clients against a real pyserve process: the foundation's promise."""

from __future__ import annotations

import queue

import numpy as np
import pytest
import tritonclient.grpc as grpcclient
import tritonclient.http as httpclient

CLIENTS = {"grpc": grpcclient, "http": httpclient}


@pytest.fixture(params=["grpc", "http"])
def client(request, example_server):
    module = CLIENTS[request.param]
    url = example_server.grpc_url if request.param == "grpc" else example_server.http_url
    with module.InferenceServerClient(url) as client:
        yield module, client


def _simple_inputs(module, batch: int):
    a = np.arange(16 * batch, dtype=np.int32).reshape(batch, 16)
    b = np.full((batch, 16), 3, dtype=np.int32)
    inputs = [module.InferInput("INPUT0", a.shape, "INT32"), module.InferInput("INPUT1", b.shape, "INT32")]
    inputs[0].set_data_from_numpy(a)
    inputs[1].set_data_from_numpy(b)
    return a, b, inputs


@pytest.mark.parametrize("batch", [1, 3, 8])
def test_simple_sums_and_differences(client, batch):
    module, c = client
    a, b, inputs = _simple_inputs(module, batch)
    result = c.infer("simple", inputs)
    np.testing.assert_array_equal(result.as_numpy("OUTPUT0"), a + b)
    np.testing.assert_array_equal(result.as_numpy("OUTPUT1"), a - b)
    assert result.as_numpy("OUTPUT0").dtype == np.int32


def test_example_python_model(client):
    module, c = client
    a = np.arange(12, dtype=np.float32).reshape(3, 4)
    b = np.full((3, 4), 0.5, dtype=np.float32)
    inputs = [module.InferInput("INPUT0", a.shape, "FP32"), module.InferInput("INPUT1", b.shape, "FP32")]
    inputs[0].set_data_from_numpy(a)
    inputs[1].set_data_from_numpy(b)
    result = c.infer("add_sub_python", inputs)
    np.testing.assert_array_equal(result.as_numpy("OUTPUT0"), a + b)
    np.testing.assert_array_equal(result.as_numpy("OUTPUT1"), a - b)


def test_requested_output_subset_and_request_id(client):
    module, c = client
    a, b, inputs = _simple_inputs(module, 2)
    result = c.infer("simple", inputs, model_version="1", request_id="abc-1",
                     outputs=[module.InferRequestedOutput("OUTPUT1")])
    np.testing.assert_array_equal(result.as_numpy("OUTPUT1"), a - b)
    assert result.as_numpy("OUTPUT0") is None
    response = result.get_response()
    rid = response.id if module is grpcclient else response["id"]
    assert rid == "abc-1"


def test_health_and_metadata(client):
    module, c = client
    assert c.is_server_live() and c.is_server_ready()
    assert c.is_model_ready("simple") and c.is_model_ready("simple", "1")
    assert not c.is_model_ready("simple", "2") and not c.is_model_ready("nope")
    server = c.get_server_metadata()
    metadata = c.get_model_metadata("simple")
    if module is grpcclient:
        assert server.name == "triton"
        assert metadata.platform == "onnxruntime_onnx" and list(metadata.versions) == ["1"]
        assert [(t.name, t.datatype, list(t.shape)) for t in metadata.inputs] == [
            ("INPUT0", "INT32", [-1, 16]), ("INPUT1", "INT32", [-1, 16])]
    else:
        assert server["name"] == "triton"
        assert metadata["platform"] == "onnxruntime_onnx" and metadata["versions"] == ["1"]
        assert [(t["name"], t["datatype"], t["shape"]) for t in metadata["outputs"]] == [
            ("OUTPUT0", "INT32", [-1, 16]), ("OUTPUT1", "INT32", [-1, 16])]


def test_model_config(client):
    module, c = client
    if module is grpcclient:
        config = c.get_model_config("mnist_cnn").config
        assert config.max_batch_size == 32 and config.backend == "onnxruntime"
        assert list(config.input[0].dims) == [1, 28, 28]
        assert config.dynamic_batching.max_queue_delay_microseconds == 500
        assert config.instance_group[0].count == 1
    else:
        config = c.get_model_config("mnist_cnn")
        assert config["max_batch_size"] == 32 and config["backend"] == "onnxruntime"
        assert config["input"][0]["dims"] == [1, 28, 28]  # numbers, as Triton prints them
        assert config["dynamic_batching"]["max_queue_delay_microseconds"] == 500


def test_float_model_matches_onnxruntime(client):
    import onnxruntime as ort

    from conftest import EXAMPLES

    module, c = client
    images = np.random.default_rng(0).standard_normal((4, 1, 28, 28)).astype(np.float32)
    session = ort.InferenceSession(str(EXAMPLES / "mnist_cnn" / "1" / "model.onnx"))
    (expected,) = session.run(["logits"], {"image": images})
    tensor = module.InferInput("image", images.shape, "FP32")
    tensor.set_data_from_numpy(images)
    result = c.infer("mnist_cnn", [tensor])
    np.testing.assert_allclose(result.as_numpy("logits"), expected, rtol=1e-5, atol=1e-5)


def test_grpc_async_and_stream_infer(example_server):
    with grpcclient.InferenceServerClient(example_server.grpc_url) as c:
        results: queue.Queue = queue.Queue()
        batches = [_simple_inputs(grpcclient, n) for n in (1, 2, 4)]
        for _, _, inputs in batches:
            c.async_infer("simple", inputs, lambda result, error: results.put((result, error)))
        sums = sorted(results.get(timeout=10)[0].as_numpy("OUTPUT0").shape[0] for _ in batches)
        assert sums == [1, 2, 4]

        c.start_stream(callback=lambda result, error: results.put((result, error)))
        for i, (a, b, inputs) in enumerate(batches):
            c.async_stream_infer("simple", inputs, request_id=str(i))
        got = {}
        for _ in batches:
            result, error = results.get(timeout=10)
            assert error is None
            got[result.get_response().id] = result.as_numpy("OUTPUT1")
        c.stop_stream()
        for i, (a, b, _) in enumerate(batches):
            np.testing.assert_array_equal(got[str(i)], a - b)


def test_stream_reports_per_request_errors(example_server):
    with grpcclient.InferenceServerClient(example_server.grpc_url) as c:
        results: queue.Queue = queue.Queue()
        c.start_stream(callback=lambda result, error: results.put((result, error)))
        _, _, inputs = _simple_inputs(grpcclient, 9)  # above max_batch_size
        c.async_stream_infer("simple", inputs)
        result, error = results.get(timeout=10)
        assert result is None and "batch-size must be <= 8" in str(error)
        a, b, inputs = _simple_inputs(grpcclient, 1)
        c.async_stream_infer("simple", inputs)  # the stream keeps working
        result, error = results.get(timeout=10)
        c.stop_stream()
        np.testing.assert_array_equal(result.as_numpy("OUTPUT0"), a + b)


def test_health_service_and_metrics(example_server):
    import urllib.request

    import grpc

    from pyserve.protocol import health

    with grpc.insecure_channel(example_server.grpc_url) as channel:
        check = channel.unary_unary("/grpc.health.v1.Health/Check",
                                    request_serializer=health.HealthCheckRequest.SerializeToString,
                                    response_deserializer=health.HealthCheckResponse.FromString)
        response = check(health.HealthCheckRequest(), timeout=10)
    assert response.status == health.HealthCheckResponse.ServingStatus.Value("SERVING")

    with grpcclient.InferenceServerClient(example_server.grpc_url) as c:
        _, _, inputs = _simple_inputs(grpcclient, 1)
        c.infer("simple", inputs)
    url = f"http://127.0.0.1:{example_server.metrics_port}/metrics"
    text = urllib.request.urlopen(url, timeout=10).read().decode()
    def value(metric: str) -> float:
        line = next(l for l in text.splitlines()
                    if l.startswith(metric + '{model="simple",version="1"}'))
        return float(line.split()[-1])

    assert value("nv_inference_request_success") >= 1
    assert value("nv_inference_count") >= value("nv_inference_exec_count") >= 1
    assert value("nv_inference_compute_infer_duration_us") > 0
    assert value("nv_inference_pending_request_count") == 0  # nothing is queued now

    # Prometheus' own parser reads each family with its type, the samples inside it.
    from prometheus_client.parser import text_string_to_metric_families

    families = {f.name: f for f in text_string_to_metric_families(text)}
    for name in ("nv_inference_request_success", "nv_inference_request_failure",
                 "nv_inference_count", "nv_inference_exec_count",
                 "nv_inference_queue_duration_us"):
        assert families[name].type == "counter", name
        assert families[name].samples, name
    assert families["nv_inference_pending_request_count"].type == "gauge"
    assert not [f.name for f in families.values() if f.type == "unknown"]


def test_classification_extension_with_labels(client):
    import onnxruntime as ort

    from conftest import EXAMPLES

    module, c = client
    images = np.random.default_rng(3).standard_normal((2, 1, 28, 28)).astype(np.float32)
    (logits,) = ort.InferenceSession(str(EXAMPLES / "mnist_cnn" / "1" / "model.onnx")).run(
        ["logits"], {"image": images})
    labels = (EXAMPLES / "mnist_cnn" / "labels.txt").read_text().split()
    tensor = module.InferInput("image", images.shape, "FP32")
    tensor.set_data_from_numpy(images)
    result = c.infer("mnist_cnn", [tensor],
                     outputs=[module.InferRequestedOutput("logits", class_count=3)])
    top = result.as_numpy("logits")
    assert top.shape == (2, 3)
    for row, item in zip(top, logits):
        expected = np.argsort(-item)[:3]
        for entry, index in zip(row, expected):
            value, got_index, label = entry.decode().split(":")
            assert int(got_index) == index and label == labels[index]
            assert abs(float(value) - item[index]) < 1e-5


def test_unknown_routes_and_methods_answer_json(example_server):
    """As Triton: 404 {"error": "Not Found"} and 405 {"error": "Method Not Allowed"}."""
    import requests

    base = f"http://{example_server.http_url}"
    for method, path, status, text in (("GET", "/v2/nonexistent", 404, "Not Found"),
                                       ("GET", "/", 404, "Not Found"),
                                       ("DELETE", "/v2/health/live", 405, "Method Not Allowed")):
        answer = requests.request(method, base + path, timeout=10)
        assert (answer.status_code, answer.json()) == (status, {"error": text}), path
