"""Triton's trace extension on both frontends and both protocols: the trace flags, the
settings read and changed (TraceSetting, /v2/[models/M/]trace/setting) with Triton's texts,
Triton's trace file (timestamps in order, log_frequency's indexed files), and OpenTelemetry
export to an OTLP/HTTP receiver on 127.0.0.1 that decodes what it receives."""

from __future__ import annotations

import json
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import numpy as np
import pytest
import requests
import tritonclient.grpc as grpcclient
import tritonclient.http as httpclient
from tritonclient.utils import InferenceServerException

from conftest import EXAMPLES, FRONTENDS, native_frontends_built, start_server
from pyserve import cli, tracing

WAIT_S = 30
CORE_ORDER = ["REQUEST_START", "QUEUE_START", "COMPUTE_START", "COMPUTE_INPUT_END",
              "COMPUTE_OUTPUT_START", "COMPUTE_END", "REQUEST_END"]
TRACEPARENT = "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"


def _start(tmp_path: Path, frontend: str, *flags: str):
    if frontend == "native" and not native_frontends_built():
        pytest.skip("pyserve was built without the native frontends")
    return start_server([EXAMPLES], tmp_path / "server.log", "--grpc-frontend", frontend,
                        "--http-frontend", frontend, "--load-model", "simple",
                        "--model-control-mode", "explicit", *flags)


@pytest.fixture(scope="module", params=FRONTENDS)
def server(request, tmp_path_factory):
    folder = tmp_path_factory.mktemp("trace")
    process = _start(folder, request.param, "--trace-config", f"triton,file={folder / 'trace.json'}",
                     "--trace-config", "level=TIMESTAMPS", "--trace-config", "rate=1")
    process.frontend = request.param
    process.trace_file = folder / "trace.json"
    yield process
    assert process.stop() == 0


def settings(protocol: str, server, changes: dict | None = None, model: str = "") -> dict:
    """The settings as the HTTP answer has them: trace_level a list, the rest strings."""
    if protocol == "http":
        with httpclient.InferenceServerClient(server.http_url) as client:
            return (client.update_trace_settings(model, changes) if changes is not None
                    else client.get_trace_settings(model))
    with grpcclient.InferenceServerClient(server.grpc_url) as client:
        answer = (client.update_trace_settings(model, changes, as_json=True)
                  if changes is not None else client.get_trace_settings(model, as_json=True))
    return {key: value.get("value", []) if key == "trace_level" else value["value"][0]
            for key, value in answer["settings"].items()}


def infer(protocol: str, server, request_id: str, headers: dict | None = None) -> None:
    data = np.arange(16, dtype=np.int32).reshape(1, 16)
    module = httpclient if protocol == "http" else grpcclient
    inputs = [module.InferInput(name, [1, 16], "INT32") for name in ("INPUT0", "INPUT1")]
    for tensor in inputs:
        tensor.set_data_from_numpy(data)
    with module.InferenceServerClient(server.http_url if protocol == "http"
                                      else server.grpc_url) as client:
        result = client.infer("simple", inputs, request_id=request_id, headers=headers)
    assert (result.as_numpy("OUTPUT0") == 2 * data).all()


def traces_in(path: Path, request_ids: set[str]) -> dict[str, dict]:
    """Wait until the trace file holds a trace of each request id; each trace as its model
    entry and its timestamps by name, in file order."""
    deadline = time.monotonic() + WAIT_S
    while True:
        found = _parse(path)
        by_request = {t["request_id"]: t for t in found.values() if "request_id" in t}
        if request_ids <= set(by_request) or time.monotonic() > deadline:
            assert request_ids <= set(by_request), f"no traces of {request_ids - set(by_request)}"
            return by_request
        time.sleep(0.05)


def _parse(path: Path) -> dict[int, dict]:
    try:
        entries = json.loads(path.read_text())
    except (FileNotFoundError, ValueError):
        return {}
    traces: dict[int, dict] = {}
    for entry in entries:
        t = traces.setdefault(entry["id"], {"timestamps": [], "tensors": []})
        if "model_name" in entry:
            t.update(entry)
        if "activity" in entry:
            t["tensors"].append((entry["activity"], entry["tensor"]))
        for stamp in entry.get("timestamps", []):
            t["timestamps"].append((stamp["name"], stamp["ns"]))
    return traces


def test_settings_from_the_command_line_and_the_extension(server):
    assert "trace" in requests.get(f"http://{server.http_url}/v2").json()["extensions"]
    expected = {"trace_level": ["TIMESTAMPS"], "trace_rate": "1", "trace_count": "-1",
                "log_frequency": "0", "trace_file": str(server.trace_file),
                "trace_mode": "triton"}
    assert settings("http", server) == expected
    assert settings("grpc", server) == expected
    assert settings("http", server, model="simple") == expected  # the global one


@pytest.mark.parametrize("protocol", ["grpc", "http"])
def test_model_settings_follow_the_global_ones_until_set(server, protocol):
    try:
        changed = settings(protocol, server, {"trace_rate": "5", "trace_count": "3"}, "simple")
        assert (changed["trace_rate"], changed["trace_count"]) == ("5", "3")
        assert settings(protocol, server)["trace_rate"] == "1"  # the global one unchanged
        settings(protocol, server, {"trace_level": ["OFF"]})  # global change: level follows
        model = settings(protocol, server, model="simple")
        assert (model["trace_level"], model["trace_rate"]) == (["OFF"], "5")
    finally:
        settings(protocol, server, {"trace_level": ["TIMESTAMPS"]})
        cleared = settings(protocol, server, {"trace_rate": None, "trace_count": None}, "simple")
        assert cleared == settings(protocol, server)


@pytest.mark.parametrize("changes, grpc_answer, http_answer", [
    ({"trace_file": "/tmp/elsewhere.json"},
     ("StatusCode.UNIMPLEMENTED", "trace file location can not be updated through network "
                                  "protocol"),
     ("501", "trace file location can not be updated through network protocol")),
    ({"trace_level": ["OFF", "TIMESTAMPS"]},
     ("StatusCode.INVALID_ARGUMENT", "Expect only one trace level 'OFF' is specified"),
     ("400", "Expect only one trace level 'OFF' is specified")),
    ({"trace_rate": "often"},
     ("StatusCode.INVALID_ARGUMENT", "Unable to parse 'trace_rate', got: often"),
     ("400", "Unable to parse 'trace_rate', got: often")),
    ({"trace_count": "-2"},
     ("StatusCode.INVALID_ARGUMENT", "Unable to parse 'trace_count'. Expecting value >= -1, "
                                     "got: -2"),
     ("400", "Unable to parse 'trace_count'. Expecting value >= -1, got:-2")),
    ({"trace_rate": "0"},
     ("StatusCode.INVALID_ARGUMENT", "Attempting to set invalid trace setting :sample rate "
                                     "must be non-zero"),
     ("400", "Attempting to set invalid trace setting :sample rate must be non-zero")),
])
@pytest.mark.parametrize("protocol", ["grpc", "http"])
def test_refusals_are_tritons(server, protocol, changes, grpc_answer, http_answer):
    with pytest.raises(InferenceServerException) as refused:
        settings(protocol, server, changes)
    assert (refused.value.status(), refused.value.message()) == (
        grpc_answer if protocol == "grpc" else http_answer)
    assert settings(protocol, server)["trace_rate"] == "1"  # nothing changed


@pytest.mark.parametrize("body, answer", [
    (b'{"trace_rate": 5}', (500, "attempt to access JSON non-string as string")),
    (b'{"trace_level": "TIMESTAMPS"}', (500, "attempt to access JSON non-array as array")),
    (b'{"trace_level": [1]}', (500, "attempt to access JSON non-string as string")),
    (b'[]', (200, None)),  # no settings named: a read
])
def test_json_types_are_tritons(server, body, answer):
    response = requests.post(f"http://{server.http_url}/v2/trace/setting", data=body)
    assert response.status_code == answer[0]
    assert response.json().get("error") == answer[1]


@pytest.mark.parametrize("protocol", ["grpc", "http"])
def test_unknown_model_is_refused(server, protocol):
    with pytest.raises(InferenceServerException) as refused:
        settings(protocol, server, model="nope")
    assert refused.value.message() == "Request for unknown model : nope"


@pytest.mark.parametrize("protocol", ["grpc", "http"])
def test_trace_file_has_tritons_timestamps_in_order(server, protocol):
    ids = {f"{protocol}-{i}" for i in range(3)}
    for request_id in sorted(ids):
        infer(protocol, server, request_id)
    for request_id, t in traces_in(server.trace_file, ids).items():
        assert (t["model_name"], t["model_version"]) == ("simple", 1)
        names = [name for name, _ in t["timestamps"]]
        assert [n for n in names if n in CORE_ORDER] == CORE_ORDER, names
        stamps = dict(t["timestamps"])
        times = [stamps[n] for n in CORE_ORDER]
        assert times == sorted(times), t
        if protocol == "grpc" and server.frontend == "native":
            assert (stamps["GRPC_WAITREAD_START"] <= stamps["GRPC_WAITREAD_END"]
                    <= stamps["REQUEST_START"])
            assert stamps["COMPUTE_OUTPUT_START"] <= stamps["INFER_RESPONSE_COMPLETE"] \
                <= stamps["GRPC_SEND_START"] <= stamps["GRPC_SEND_END"]


@pytest.mark.parametrize("protocol", ["grpc", "http"])
def test_tensors_level_writes_tensors_as_triton(server, protocol):
    try:
        settings(protocol, server, {"trace_level": ["TIMESTAMPS", "TENSORS"]}, "simple")
        infer(protocol, server, f"tensors-{protocol}")
        t = traces_in(server.trace_file, {f"tensors-{protocol}"})[f"tensors-{protocol}"]
    finally:
        settings(protocol, server, {"trace_level": None}, "simple")
    data = ",".join(str(i) for i in range(16))
    doubled = ",".join(str(2 * i) for i in range(16))
    tensors = {(activity, tensor["name"]): tensor for activity, tensor in t["tensors"]}
    for activity in ("TENSOR_QUEUE_INPUT", "TENSOR_BACKEND_INPUT"):
        assert tensors[activity, "INPUT0"] == {"name": "INPUT0", "data": data,
                                               "shape": "1,16", "dtype": "INT32"}
    assert tensors["TENSOR_BACKEND_OUTPUT", "OUTPUT0"]["data"] == doubled
    assert tensors["TENSOR_BACKEND_OUTPUT", "OUTPUT1"]["data"] == ",".join(["0"] * 16)
    assert len(t["timestamps"]) >= len(CORE_ORDER)


def test_rate_samples_one_of_every_rate(server):
    try:
        settings("http", server, {"trace_rate": "3"}, "simple")
        for i in range(6):
            infer("http", server, f"rated-{i}")
        traced = traces_in(server.trace_file, {"rated-2", "rated-5"})
        assert not {f"rated-{i}" for i in (0, 1, 3, 4)} & set(traced)
    finally:
        settings("http", server, {"trace_rate": None}, "simple")


def test_a_spent_count_writes_an_indexed_file(server):
    """As Triton's L0_trace: with trace_count N, the N traces go to `<file>.0` once taken."""
    try:
        settings("grpc", server, {"trace_count": "2"}, "simple")
        for i in range(4):
            infer("grpc", server, f"counted-{i}")
        indexed = traces_in(Path(f"{server.trace_file}.0"), {"counted-0", "counted-1"})
        assert len(indexed) == 2
        assert settings("grpc", server, model="simple")["trace_count"] == "0"
    finally:
        settings("grpc", server, {"trace_count": None}, "simple")
    infer("grpc", server, "after-count")  # traced again, by the global setting
    traced = traces_in(server.trace_file, {"after-count"})
    assert not {"counted-0", "counted-1", "counted-2", "counted-3"} & set(traced)


def test_log_frequency_splits_the_file(tmp_path):
    frontend = "native" if native_frontends_built() else "python"
    path = tmp_path / "split.json"
    server = _start(tmp_path, frontend, "--trace-config", f"triton,file={path}",
                    "--trace-config", "triton,log-frequency=2", "--trace-config", "rate=1",
                    "--trace-config", "level=TIMESTAMPS")
    try:
        assert settings("http", server)["log_frequency"] == "2"
        for i in range(5):
            infer("grpc", server, f"split-{i}")
        assert len(_traces_when(Path(f"{path}.0"), 2)) == 2
        assert len(_traces_when(Path(f"{path}.1"), 2)) == 2
    finally:
        assert server.stop() == 0
    # The fifth trace, left over at exit, gets a file of its own.
    assert len(_parse(Path(f"{path}.2"))) == 1
    assert not path.exists()


def _traces_when(path: Path, count: int) -> dict[int, dict]:
    deadline = time.monotonic() + WAIT_S
    while len(traces := _parse(path)) < count and time.monotonic() < deadline:
        time.sleep(0.05)
    return traces


class _OtlpReceiver(BaseHTTPRequestHandler):
    """OTLP/HTTP: each POST an ExportTraceServiceRequest (protobuf)."""
    exports: list = []
    arrived = threading.Condition()

    def do_POST(self):
        from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import (
            ExportTraceServiceRequest)
        body = self.rfile.read(int(self.headers["Content-Length"]))
        export = ExportTraceServiceRequest.FromString(body)
        with self.arrived:
            self.exports.append((self.path, export))
            self.arrived.notify_all()
        self.send_response(200)
        self.send_header("Content-Type", "application/x-protobuf")
        self.send_header("Content-Length", "0")
        self.end_headers()

    def log_message(self, *args):
        pass


@pytest.mark.parametrize("frontend", FRONTENDS)
def test_opentelemetry_export(tmp_path, frontend):
    pytest.importorskip("opentelemetry.sdk")
    receiver = ThreadingHTTPServer(("127.0.0.1", 0), _OtlpReceiver)
    _OtlpReceiver.exports = []
    threading.Thread(target=receiver.serve_forever, daemon=True).start()
    url = f"http://127.0.0.1:{receiver.server_port}/v1/traces"
    server = _start(tmp_path, frontend, "--trace-config", "mode=opentelemetry",
                    "--trace-config", "level=TIMESTAMPS", "--trace-config", "rate=1",
                    "--trace-config", f"opentelemetry,url={url}",
                    "--trace-config", "opentelemetry,resource=test.key=test.value",
                    "--trace-config", "opentelemetry,bsp_schedule_delay=50",
                    "--trace-config", "opentelemetry,bsp_max_export_batch_size=1")
    try:
        answer = settings("http", server)
        assert answer["trace_mode"] == "opentelemetry" and "trace_file" not in answer
        assert (answer["url"], answer["bsp_max_export_batch_size"]) == (url, "1")
        infer("http", server, "otel-http", {"traceparent": TRACEPARENT})
        infer("grpc", server, "otel-grpc", {"traceparent": TRACEPARENT})
        spans = _spans_until(lambda s: sorted(x.name for x in s) == [
            "InferRequest", "InferRequest", "compute", "compute", "simple", "simple"])
    finally:
        assert server.stop() == 0
        receiver.shutdown()
    paths = {path for path, _ in _OtlpReceiver.exports}
    assert paths == {"/v1/traces"}
    # bsp_max_export_batch_size=1: one span per export.
    assert all(sum(len(ss.spans) for rs in e.resource_spans for ss in rs.scope_spans) == 1
               for _, e in _OtlpReceiver.exports)
    resource = {a.key: a.value.string_value
                for a in _OtlpReceiver.exports[0][1].resource_spans[0].resource.attributes}
    assert resource["test.key"] == "test.value"
    assert resource["service.name"] == "triton-inference-server"
    by_id = {span.span_id: span for span in spans}
    parent_trace = bytes.fromhex(TRACEPARENT.split("-")[1])
    parent_span = bytes.fromhex(TRACEPARENT.split("-")[2])
    for model_span in (s for s in spans if s.name == "simple"):
        root = by_id[model_span.parent_span_id]
        assert root.name == "InferRequest"
        assert (root.trace_id, root.parent_span_id) == (parent_trace, parent_span)
        attributes = {a.key: a.value for a in model_span.attributes}
        assert attributes["triton.model_name"].string_value == "simple"
        assert attributes["triton.model_version"].int_value == 1
        assert attributes["triton.request_id"].string_value in ("otel-http", "otel-grpc")
        events = [e.name for e in model_span.events]
        assert events == ["REQUEST_START", "QUEUE_START", "REQUEST_END"]
        compute = next(s for s in spans if s.parent_span_id == model_span.span_id)
        assert compute.name == "compute"
        assert [e.name for e in compute.events] == CORE_ORDER[2:6]
        assert model_span.start_time_unix_nano <= compute.start_time_unix_nano \
            <= compute.end_time_unix_nano <= model_span.end_time_unix_nano
        assert abs(model_span.start_time_unix_nano - time.time_ns()) < 600e9  # wall clock


def _spans_until(done) -> list:
    deadline = time.monotonic() + WAIT_S
    with _OtlpReceiver.arrived:
        while True:
            spans = [span for _, e in _OtlpReceiver.exports for rs in e.resource_spans
                     for ss in rs.scope_spans for span in ss.spans]
            if done(spans):
                return spans
            remaining = deadline - time.monotonic()
            assert remaining > 0, f"spans received: {[s.name for s in spans]}"
            _OtlpReceiver.arrived.wait(remaining)


@pytest.mark.parametrize("argv, message", [
    (["--trace-config", "level=LOUD"],
     'Bad option: "--trace-config level".\ninvalid value for trace level option: loud'),
    (["--trace-config", "mode=zipkin"],
     'Bad option: "--trace-config mode".\ninvalid value for trace mode option: zipkin. '
     'Available options are "triton" and "opentelemetry"'),
    (["--trace-config", ",rate=1"],
     "No trace mode specified. --trace-config option format is <trace mode>,<setting>=<value> "
     "or <setting>=<value>. Got ,rate=1"),
    (["--trace-config", "rate"],
     "--trace-config option format is '<trace mode>,<setting>=<value>'. Got rate"),
    (["--trace-config", "mode=opentelemetry", "--trace-config",
      "opentelemetry,bsp_max_queue_size=-1"],
     'Bad option: "--trace-config opentelemetry,bsp_max_queue_size".\nout of range: -1'),
])
def test_bad_trace_flags_stop_start_up(argv, message):
    args = cli._parser().parse_args(["serve", "--model-repository", str(EXAMPLES), *argv])
    with pytest.raises(SystemExit) as refused:
        tracing.configure_from_args(args)
    assert str(refused.value) == f"pyserve: {message}"


def test_deprecated_flags_and_their_precedence(capsys):
    args = cli._parser().parse_args(["serve", "--model-repository", str(EXAMPLES),
                                     "--trace-file", "/tmp/a.json", "--trace-rate", "7",
                                     "--trace-level", "TIMESTAMPS", "--trace-count", "4",
                                     "--trace-log-frequency", "3", "--trace-config", "rate=9"])
    config = tracing.parse_flags(args.trace_config, args.trace_file, args.trace_level,
                               args.trace_rate, args.trace_count, args.trace_log_frequency)
    assert (config.level, config.rate, config.count, config.log_frequency, config.file) == (
        tracing.TIMESTAMPS, 9, 4, 3, "/tmp/a.json")
    off = tracing.parse_flags(["level=TIMESTAMPS"], levels=["OFF"])
    assert off.level == tracing.OFF  # an explicit OFF anywhere wins, as in tritonserver


@pytest.mark.parametrize("frontend", FRONTENDS)
def test_defaults_and_the_restricted_trace_group(tmp_path, frontend):
    """Without trace flags, Triton's defaults; tracing cannot be turned on without a file."""
    server = _start(tmp_path, frontend, "--grpc-restricted-protocol", "trace:admin-key=yes",
                    "--http-restricted-api", "trace:admin-key=yes")
    try:
        for path in ("/v2/trace/setting", "/v2/models/simple/trace/setting"):
            url = f"http://{server.http_url}{path}"
            assert requests.get(url).status_code == 403
            assert requests.get(url, headers={"admin-key": "yes"}).json() == {
                "trace_level": ["OFF"], "trace_rate": "1000", "trace_count": "-1",
                "log_frequency": "0", "trace_file": "", "trace_mode": "triton"}
        refused = requests.post(f"http://{server.http_url}/v2/trace/setting",
                                json={"trace_level": ["TIMESTAMPS"]}, headers={"admin-key": "yes"})
        assert (refused.status_code, refused.json()) == (400, {
            "error": "Attempting to set invalid trace setting :trace file name is not given"})
        with grpcclient.InferenceServerClient(server.grpc_url) as client:
            with pytest.raises(InferenceServerException) as refused:
                client.get_trace_settings()
            assert refused.value.status() == "StatusCode.UNAVAILABLE"
            answer = client.get_trace_settings(headers={"triton-grpc-protocol-admin-key": "yes"},
                                               as_json=True)
            assert answer["settings"]["trace_level"]["value"] == ["OFF"]
    finally:
        assert server.stop() == 0
