"""What a Triton model.py reaches of its server through pb_utils: custom metrics on /metrics
(counters, gauges, histograms with buckets), model control (load_model, unload_model,
is_model_ready) and Logger lines in the server's log."""

from __future__ import annotations

import time

import numpy as np
import pytest
import requests
import tritonclient.grpc as grpcclient
import tritonclient.http as httpclient
from tritonclient.utils import InferenceServerException

from conftest import start_server, write_python_model

TIMEOUT_S = 30

METRICS_MODEL = '''
import numpy as np
import triton_python_backend_utils as pb_utils


class TritonPythonModel:
    def initialize(self, args):
        self.requests = pb_utils.MetricFamily(
            name="custom_requests", description="Requests seen by the model",
            kind=pb_utils.MetricFamily.COUNTER).Metric(labels={"model": args["model_name"]})
        self.last = pb_utils.MetricFamily(
            name="custom_last_value", description="The last value seen",
            kind=pb_utils.MetricFamily.GAUGE).Metric(labels={"model": args["model_name"]})
        self.sizes = pb_utils.MetricFamily(
            name="custom_value_sizes", description="Values seen",
            kind=pb_utils.MetricFamily.HISTOGRAM).Metric(labels={}, buckets=[1.0, 10.0])
        try:
            self.requests.set(3)
        except pb_utils.TritonModelException as e:
            pb_utils.Logger.log_warn(f"counter set refused: {e.message()}")

    def execute(self, requests):
        responses = []
        for request in requests:
            value = float(pb_utils.get_input_tensor_by_name(request, "X").as_numpy()[0])
            self.requests.increment(1)
            self.last.set(value)
            self.sizes.observe(value)
            pb_utils.Logger.log_info(f"custom metrics saw {value}")
            responses.append(pb_utils.InferenceResponse([pb_utils.Tensor(
                "Y", np.array([self.requests.value()], np.float32))]))
        return responses
'''

CONTROL_MODEL = '''
import numpy as np
import triton_python_backend_utils as pb_utils


class TritonPythonModel:
    def execute(self, requests):
        responses = []
        for request in requests:
            action = pb_utils.get_input_tensor_by_name(request, "ACTION").as_numpy()[0].decode()
            if action == "load":
                pb_utils.load_model("metrics")
            elif action == "unload":
                pb_utils.unload_model("metrics")
            elif action == "load_bad":
                try:
                    pb_utils.load_model("missing_model")
                except pb_utils.TritonModelException as e:
                    pb_utils.Logger.log_warn(f"load refused: {e.message()}")
            ready = pb_utils.is_model_ready("metrics")
            responses.append(pb_utils.InferenceResponse([pb_utils.Tensor(
                "READY", np.array([ready], np.bool_))]))
        return responses
'''

# Runs until its client goes away (at most 30 s), then says whether it saw it go.
WAIT_MODEL = '''
import time

import numpy as np
import triton_python_backend_utils as pb_utils


class TritonPythonModel:
    def execute(self, requests):
        (request,) = requests
        deadline = time.monotonic() + 30
        while not request.is_cancelled() and time.monotonic() < deadline:
            time.sleep(0.01)
        pb_utils.Logger.log_info(f"saw cancellation: {request.is_cancelled()}")
        return [pb_utils.InferenceResponse([pb_utils.Tensor("Y", np.zeros(1, np.float32))])]
'''

X_TENSORS = """
input [ { name: "X" data_type: TYPE_FP32 dims: [ 1 ] } ]
output [ { name: "Y" data_type: TYPE_FP32 dims: [ 1 ] } ]
"""

CONTROL_TENSORS = """
input [ { name: "ACTION" data_type: TYPE_STRING dims: [ 1 ] } ]
output [ { name: "READY" data_type: TYPE_BOOL dims: [ 1 ] } ]
"""


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    root = tmp_path_factory.mktemp("pb_utils_repo")
    write_python_model(root, "metrics", X_TENSORS, METRICS_MODEL)
    write_python_model(root, "control", CONTROL_TENSORS, CONTROL_MODEL)
    write_python_model(root, "wait", X_TENSORS, WAIT_MODEL)
    process = start_server([root], tmp_path_factory.mktemp("logs") / "pb_utils.log",
                           "--model-control-mode", "explicit", "--load-model", "control",
                           "--load-model", "wait")
    yield process
    process.stop()


def act(client, action: str) -> bool:
    tensor = httpclient.InferInput("ACTION", [1], "BYTES")
    tensor.set_data_from_numpy(np.array([action.encode()], dtype=np.object_))
    return bool(client.infer("control", [tensor]).as_numpy("READY")[0])


def test_model_control_from_a_model(server):
    client = httpclient.InferenceServerClient(server.http_url)
    assert act(client, "ready") is False
    assert act(client, "load") is True
    assert client.is_model_ready("metrics")
    assert act(client, "unload") is False
    assert not client.is_model_ready("metrics")
    assert act(client, "load_bad") is False
    assert "load refused:" in server.log() and "missing_model" in server.log()


def test_custom_metrics_on_the_metrics_endpoint(server):
    client = httpclient.InferenceServerClient(server.http_url)
    client.load_model("metrics")
    try:
        for value in (0.5, 5.0, 50.0):
            tensor = httpclient.InferInput("X", [1], "FP32")
            tensor.set_data_from_numpy(np.array([value], np.float32))
            client.infer("metrics", [tensor])
        text = requests.get(f"http://127.0.0.1:{server.metrics_port}/metrics",
                            timeout=TIMEOUT_S).text
        assert "# HELP custom_requests Requests seen by the model\n" in text
        assert "# TYPE custom_requests counter\n" in text
        assert 'custom_requests{model="metrics"} 3.0\n' in text
        assert "# TYPE custom_last_value gauge\n" in text
        assert 'custom_last_value{model="metrics"} 50.0\n' in text
        assert "# TYPE custom_value_sizes histogram\n" in text
        assert 'custom_value_sizes_bucket{le="1.0"} 1.0\n' in text
        assert 'custom_value_sizes_bucket{le="10.0"} 2.0\n' in text
        assert 'custom_value_sizes_bucket{le="+Inf"} 3.0\n' in text
        assert "custom_value_sizes_sum 55.5\n" in text
        assert "custom_value_sizes_count 3.0\n" in text
        assert "custom metrics saw 5.0" in server.log()
        assert "counter set refused: Failed to set metric value" in server.log()
    finally:
        client.unload_model("metrics")



def test_request_is_cancelled_when_the_client_goes_away(server):
    client = grpcclient.InferenceServerClient(server.grpc_url)
    tensor = grpcclient.InferInput("X", [1], "FP32")
    tensor.set_data_from_numpy(np.zeros(1, np.float32))
    with pytest.raises(InferenceServerException, match="Deadline"):
        client.infer("wait", [tensor], client_timeout=0.5)
    deadline = time.monotonic() + TIMEOUT_S
    while "saw cancellation:" not in server.log() and time.monotonic() < deadline:
        time.sleep(0.05)
    assert "saw cancellation: True" in server.log()
