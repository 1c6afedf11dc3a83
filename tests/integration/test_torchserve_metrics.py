"""TorchServe 0.12's metrics under `pyserve torchserve`: Prometheus mode with the default and a
custom metrics.yaml (frontend, system and backend metrics, a handler's own through
`context.metrics`), and log mode's metric log lines."""

from __future__ import annotations

import re
import sys
import time
from pathlib import Path

import pytest

requests = pytest.importorskip("requests")
pytest.importorskip("ts", reason="the handler uses TorchServe's MetricTypes and Dimension")

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
sys.path.insert(0, str(Path(__file__).resolve().parent))
from torchserve_archives import make_mar  # noqa: E402
from test_torchserve_server import (ECHO, PROPERTIES, TorchServeProcess,  # noqa: E402
                                    _native_available, metric)

METRICS_HANDLER = '''
from ts.metrics.dimension import Dimension
from ts.metrics.metric_type_enum import MetricTypes


def handle(data, context):
    if data is None:
        return None
    metrics = context.metrics
    metrics.add_counter("InferenceRequestCount", len(data))
    metrics.add_time("PreprocessTime", 1.5)
    metrics.add_size("SizeOfImage", 2.0, unit="kB")
    metrics.add_percent("MemoryPercent", 42.0)
    metrics.add_metric("CustomLatency", 0.2, "s", dimensions=[Dimension("Stage", "post")],
                       metric_type=MetricTypes.HISTOGRAM)
    metrics.add_counter("NotInTheYaml", 1)
    return [b"ok"] * len(data)
'''
METRICS_YAML = """
dimensions:
  - &model_name "ModelName"
  - &level "Level"
  - &hostname "Hostname"
ts_metrics:
  counter:
    - name: Requests2XX
      unit: Count
      dimensions: [*level, *hostname]
  gauge:
    - name: QueueTime
      unit: Milliseconds
      dimensions: [*level, *hostname]
model_metrics:
  counter:
    - name: InferenceRequestCount
      unit: count
      dimensions: [*model_name, *level]
  gauge:
    - name: PreprocessTime
      unit: ms
      dimensions: [*model_name, *level]
    - name: SizeOfImage
      unit: kB
      dimensions: [*model_name, *level]
    - name: MemoryPercent
      unit: percent
      dimensions: [*model_name, *level]
  histogram:
    - name: CustomLatency
      unit: s
      dimensions: ["Stage", *model_name, *level]
"""


@pytest.fixture(params=["native", "python"])
def frontend(request):
    if request.param == "native" and not _native_available():
        pytest.skip("pyserve was built without the native HTTP frontend")
    return request.param


def _start(tmp_path: Path, frontend: str, properties: str) -> TorchServeProcess:
    store = tmp_path / "store"
    make_mar(store, "echo", {"echo.py": ECHO}, handler="echo.py", work=tmp_path / "echo")
    make_mar(store, "custom", {"handler.py": METRICS_HANDLER}, handler="handler.py",
             work=tmp_path / "custom")
    (tmp_path / "metrics.yaml").write_text(METRICS_YAML)
    base = PROPERTIES.replace("metrics_mode=prometheus\n", "")
    return TorchServeProcess(tmp_path, base + "load_models=echo.mar,custom.mar\n" + properties,
                             "--disable-token-auth", "--http-frontend", frontend)


def _predict(process: TorchServeProcess, model: str, count: int = 2) -> None:
    for _ in range(count):
        reply = requests.post(process.url("inference", f"/predictions/{model}"), data=b"x")
        assert reply.status_code == 200, reply.text


def test_prometheus_mode_with_torchserve_default_metrics(tmp_path, frontend):
    process = _start(tmp_path, frontend, "metrics_mode=prometheus\n")
    try:
        _predict(process, "echo")
        assert requests.get(process.url("management", "/models/nope")).status_code == 404
        assert requests.get(process.url("management", "/models")).status_code == 200
        text = requests.get(process.url("metrics", "/metrics")).text
        assert "# HELP Requests2XX Torchserve prometheus counter metric with unit: Count" in text
        assert "# TYPE Requests2XX counter" in text
        hostname = re.search(r'Requests2XX\{Level="Host",Hostname="([^"]+)"\}', text).group(1)
        assert metric(text, "Requests2XX", Level="Host") >= 1
        assert metric(text, "Requests4XX", Level="Host", Hostname=hostname) >= 1
        assert metric(text, "ts_inference_requests_total", model_name="echo",
                      model_version="default", hostname=hostname) == 2
        assert "# TYPE QueueTime gauge" in text and 'QueueTime{Level="Host"' in text
        assert re.search(r'WorkerLoadTime\{WorkerName="W-\d+-echo_1.0",Level="Host",'
                         r'Hostname="[^"]+"\} \d', text)
        assert 'WorkerThreadTime{Level="Host"' in text
        for name in ("CPUUtilization", "MemoryUsed", "MemoryAvailable", "MemoryUtilization",
                     "DiskUsage", "DiskUtilization", "DiskAvailable"):
            assert f'{name}{{Level="Host",Hostname="{hostname}"}}' in text, name
        # the backend's PredictionTime, metrics.yaml's model_metrics
        assert "# HELP PredictionTime Torchserve prometheus gauge metric with unit: ms" in text
        assert f'PredictionTime{{ModelName="echo",Level="Model",Hostname="{hostname}"}}' in text
        # a handler's metric metrics.yaml does not name: only with model_metrics_auto_detect
        _predict(process, "custom", 1)
        assert "NotInTheYaml" not in requests.get(process.url("metrics", "/metrics")).text
        # the metrics API's name filter
        only = requests.get(process.url("metrics", "/metrics?name[]=Requests2XX")).text
        assert "Requests2XX" in only and "QueueTime" not in only
    finally:
        process.stop()
        print(process.log_path.read_text()[-3000:])


def test_prometheus_mode_with_a_custom_metrics_yaml(tmp_path, frontend):
    process = _start(tmp_path, frontend, "metrics_mode=prometheus\n"
                     "metrics_config=metrics.yaml\n")
    try:
        _predict(process, "custom")
        text = requests.get(process.url("metrics", "/metrics")).text
        labels = {"ModelName": "custom", "Level": "Model"}
        assert metric(text, "InferenceRequestCount", **labels) == 2
        assert metric(text, "PreprocessTime", **labels) == 1.5
        assert "# HELP SizeOfImage Torchserve prometheus gauge metric with unit: kB" in text
        assert metric(text, "SizeOfImage", **labels) == 2.0
        assert metric(text, "MemoryPercent", **labels) == 42.0
        assert "# TYPE CustomLatency histogram" in text
        assert metric(text, "CustomLatency_count", Stage="post", **labels) == 2
        assert metric(text, "CustomLatency_sum", Stage="post", **labels) == pytest.approx(0.4)
        assert re.search(r'CustomLatency_bucket\{Stage="post",ModelName="custom",'
                         r'Level="Model",Hostname="[^"]+",le="0.25"\} 2.0', text)
        assert re.search(r'CustomLatency_bucket\{[^}]*le="0.1"\} 0.0', text)
        # only what the yaml names: no NotInTheYaml, no ts_inference_*, no system metrics
        for absent in ("NotInTheYaml", "ts_inference_requests_total", "CPUUtilization",
                       "PredictionTime"):
            assert absent not in text, absent
        assert "# TYPE Requests2XX counter" in text
    finally:
        process.stop()
        print(process.log_path.read_text()[-3000:])


def test_requests_by_status_class_count_predictions(tmp_path, frontend):
    if frontend == "native" and not _native_available():
        pytest.skip("pyserve was built without the native HTTP frontend")
    process = _start(tmp_path, frontend, "metrics_mode=prometheus\n")
    try:
        _predict(process, "echo", 3)
        missing = requests.post(process.url("inference", "/predictions/echo/9.9"), data=b"x")
        assert missing.status_code == 404
        text = requests.get(process.url("metrics", "/metrics")).text
        assert metric(text, "Requests2XX", Level="Host") == 3
        assert metric(text, "Requests4XX", Level="Host") == 1
    finally:
        process.stop()


def test_log_mode_writes_a_line_per_answer(tmp_path, frontend):
    """Natively answered predictions too: the native path counts them, and their lines are
    written each second."""
    process = _start(tmp_path, frontend, "")  # log mode: the default
    log = tmp_path / "logs" / "ts_metrics.log"

    def lines(name):
        return len(re.findall(rf"{name}\.Count:1\.0\|#Level:Host\|", log.read_text()))

    try:
        ok, missing = lines("Requests2XX"), lines("Requests4XX")
        _predict(process, "echo", 5)
        reply = requests.post(process.url("inference", "/predictions/echo/9.9"), data=b"x")
        assert reply.status_code == 404
        deadline = time.time() + 10
        while time.time() < deadline and (lines("Requests2XX") < ok + 5 or
                                          lines("Requests4XX") < missing + 1):
            time.sleep(0.1)
        assert (lines("Requests2XX"), lines("Requests4XX")) == (ok + 5, missing + 1)
    finally:
        process.stop()
    assert (lines("Requests2XX"), lines("Requests4XX")) == (ok + 5, missing + 1)


def test_log_mode_writes_torchserve_metric_lines(tmp_path, frontend):
    process = _start(tmp_path, frontend, "metrics_config=metrics.yaml\n")  # log: the default
    try:
        _predict(process, "custom")
        reply = requests.get(process.url("metrics", "/metrics"))
        assert reply.status_code == 200 and reply.text == ""
        deadline = time.time() + 10
        while time.time() < deadline:
            ts_lines = (tmp_path / "logs" / "ts_metrics.log").read_text()
            model_lines = (tmp_path / "logs" / "model_metrics.log").read_text()
            if "Requests2XX" in ts_lines and "CustomLatency" in model_lines:
                break
            time.sleep(0.2)
        assert re.search(r"Requests2XX\.Count:1\.0\|#Level:Host\|#hostname:[^,]+,"
                         r"timestamp:\d+$", ts_lines, re.M), ts_lines
        assert re.search(r"InferenceRequestCount\.count:1\.0\|#ModelName:custom,Level:Model\|"
                         r"#hostname:[^,]+,requestID:[^,]+,timestamp:\d+$", model_lines,
                         re.M), model_lines
        assert re.search(r"CustomLatency\.s:0\.2\|#Stage:post,ModelName:custom,Level:Model\|",
                         model_lines), model_lines
        assert "NotInTheYaml" not in model_lines  # not in the yaml, auto-detect off
    finally:
        process.stop()
