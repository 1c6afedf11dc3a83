"""`pyserve torchserve` as a TorchServe user runs it: archives built by torch-model-archiver,
a config.properties, requests sent with `requests` the way TorchServe's docs send them with
curl, TorchServe's status codes and bodies."""

from __future__ import annotations

import concurrent.futures
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

requests = pytest.importorskip("requests")
torch = pytest.importorskip("torch")

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from conftest import EXAMPLES  # noqa: E402
from torchserve_archives import HAVE_ARCHIVER, make_mar  # noqa: E402

HAVE_ORT = __import__("importlib").util.find_spec("onnxruntime") is not None
HAVE_TS = __import__("importlib").util.find_spec("ts") is not None
needs_ts = pytest.mark.skipif(not HAVE_TS, reason="needs pyserve[torchserve] (the ts package)")

ECHO = '''
def handle(data, context):
    if data is None:
        return None
    context.metrics.add_metric("EchoBatchSize", len(data), "count")
    out = []
    for i, row in enumerate(data):
        body = row.get("data") if row.get("data") is not None else row.get("body")
        if isinstance(body, (bytes, bytearray)):
            body = body.decode()
        if body == "teapot":
            context.set_response_status(418, "I'm a teapot", i)
        context.set_response_header(i, "x-batch", str(len(data)))
        out.append({"echo": body, "batch": len(data), "tag": context.get_request_header(i, "x-tag"),
                    "yaml": context.model_yaml_config.get("handler", {}),
                    "version": context.manifest["model"]["modelVersion"]})
    return out
'''
ECHO_YAML = "batchSize: 4\nmaxBatchDelay: 300\nminWorkers: 1\nhandler:\n  greeting: hi\n"

MODEL_PY = '''
import torch
class Doubler(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.linear = torch.nn.Linear(2, 2, bias=False)
    def forward(self, x):
        return self.linear(x)
'''
TENSOR_HANDLER = '''
import torch
from ts.torch_handler.base_handler import BaseHandler
class TensorHandler(BaseHandler):
    def preprocess(self, data):
        return torch.tensor([row.get("body") for row in data], dtype=torch.float32)
    def postprocess(self, data):
        return data.tolist()
'''
COLLIDE_HANDLER = '''
import model
def handle(data, context):
    return None if data is None else [{"value": model.VALUE} for _ in data]
'''
FAILING = '''
from ts.utils.util import PredictionException
def handle(data, context):
    if data is None:
        return None
    body = data[0].get("body")
    if body == b"bad":
        raise PredictionException("bad input", 513)
    raise RuntimeError("boom")
'''
STREAMING = '''
from ts.handler_utils.utils import send_intermediate_predict_response
def handle(data, context):
    if data is None:
        return None
    for word in ("one ", "two "):
        send_intermediate_predict_response([word] * len(data), context.request_ids,
                                           "Intermediate Prediction success", 200, context)
    return ["three"] * len(data)
'''
TYPED_CONFIG = """
max_batch_size: 4
input [ { name: "INPUT0" data_type: TYPE_FP32 dims: [ 2 ] } ]
output [ { name: "OUTPUT0" data_type: TYPE_FP32 dims: [ 2 ] } ]
"""
TYPED = '''
import json
def handle(data, context):
    if data is None:
        return None
    out = []
    for row in data:
        if "INPUT0" in row:  # KServe v2: the row's tensors by input name
            out.append({"OUTPUT0": row["INPUT0"] * 2})
        else:  # TorchServe's API: the body
            out.append([2 * v for v in row["body"]])
    return out
'''
FORM = '''
def handle(data, context):
    if data is None:
        return None
    out = []
    for i, row in enumerate(data):
        out.append({name: {"type": type(value).__name__,
                           "value": value.decode("latin-1") if isinstance(value, bytes) else value,
                           "header": context.get_request_header(i, name)}
                    for name, value in row.items()})
    return out
'''
SLOW = '''
import time
def handle(data, context):
    if data is None:
        return None
    if any(row.get("body") == b"sleep" for row in data):
        time.sleep(4)
    return ["done"] * len(data)
'''


def build_store(store: Path) -> None:
    scratch = store.parent / "scratch"
    make_mar(store, "echo", {"echo.py": ECHO}, handler="echo.py", version="2.0",
             work=scratch / "echo2").rename(store / "echo_v2.mar")
    make_mar(store, "echo", {"echo.py": ECHO, "model-config.yaml": ECHO_YAML},
             handler="echo.py", config_file="model-config.yaml", work=scratch / "echo")
    if HAVE_TS:
        weights = scratch / "eager"
        weights.mkdir(parents=True)
        (weights / "model.py").write_text(MODEL_PY)
        namespace: dict = {}
        exec(MODEL_PY, namespace)
        doubler = namespace["Doubler"]()
        with torch.no_grad():
            doubler.linear.weight.copy_(torch.eye(2) * 2)
        torch.save(doubler.state_dict(), weights / "doubler.pt")
        make_mar(store, "eager", {"model.py": MODEL_PY, "tensor_handler.py": TENSOR_HANDLER,
                                  "doubler.pt": (weights / "doubler.pt").read_bytes()},
                 handler="tensor_handler.py", serialized_file="doubler.pt",
                 model_file="model.py", work=weights)
        class Triple(torch.nn.Module):
            def forward(self, x):
                return x * 3

        tripler = torch.jit.script(Triple())
        scripted = scratch / "scripted"
        scripted.mkdir(parents=True)
        tripler.save(str(scripted / "triple.pt"))
        make_mar(store, "scripted", {"tensor_handler.py": TENSOR_HANDLER,
                                     "triple.pt": (scripted / "triple.pt").read_bytes()},
                 handler="tensor_handler.py", serialized_file="triple.pt", work=scripted)
        make_mar(store, "failing", {"failing.py": FAILING}, handler="failing.py",
                 work=scratch / "failing")
        make_mar(store, "streaming", {"streaming.py": STREAMING}, handler="streaming.py",
                 work=scratch / "streaming")
    for name, value in (("collide_a", 1), ("collide_b", 2)):
        make_mar(store, name, {"handler.py": COLLIDE_HANDLER, "model.py": f"VALUE = {value}\n"},
                 handler="handler.py", work=scratch / name)
    make_mar(store, "tgz_echo", {"echo.py": ECHO}, handler="echo.py", work=scratch / "tgz",
             archive_format="tgz" if HAVE_ARCHIVER else "default")
    make_mar(store, "typed", {"typed.py": TYPED, "config.pbtxt": TYPED_CONFIG},
             handler="typed.py", work=scratch / "typed")
    make_mar(store, "slow", {"slow.py": SLOW, "model-config.yaml": "responseTimeout: 1\n"},
             handler="slow.py", config_file="model-config.yaml", work=scratch / "slow")
    make_mar(store, "simple", {"echo.py": ECHO}, handler="echo.py", work=scratch / "simple")
    make_mar(store, "form", {"form.py": FORM}, handler="form.py", work=scratch / "form")


class TorchServeProcess:
    def __init__(self, cwd: Path, properties: str, *flags: str, env: dict | None = None,
                 scheme: str = "http", verify=True) -> None:
        (cwd / "config.properties").write_text(properties)
        self.cwd = cwd
        self.scheme = scheme
        self.verify = verify  # what requests should trust (a CA file for HTTPS)
        self.log_path = cwd / "server.log"
        self.process = subprocess.Popen(
            [sys.executable, "-m", "pyserve.cli", "torchserve", "--start", "--ncs",
             "--ts-config", "config.properties", "--grpc-port", "0", "--http-port", "0",
             "--metrics-port", "0", *flags],
            cwd=cwd, stdout=open(self.log_path, "w"), stderr=subprocess.STDOUT,
            env={**os.environ, **(env or {})})
        self.ports: dict[str, int] = {}
        deadline = time.time() + 120
        while time.time() < deadline:
            text = self.log_path.read_text()
            for kind, port in re.findall(r"(\w+) API bind to: https?://[^:]+:(\d+)", text):
                self.ports[kind.lower()] = int(port)
            for kind, port in re.findall(r"Started (GRPC|HTTP)\w* at [^:]+:(\d+)", text):
                self.ports[f"kserve-{kind.lower()}"] = int(port)
            if "Model server started." in text:
                return
            if self.process.poll() is not None:
                break
            time.sleep(0.2)
        self.stop()
        raise RuntimeError(f"pyserve torchserve did not start:\n{self.log_path.read_text()}")

    def url(self, kind: str, path: str) -> str:
        return f"{self.scheme}://127.0.0.1:{self.ports[kind]}{path}"

    def stop(self) -> None:
        if self.process.poll() is None:
            os.kill(self.process.pid, signal.SIGTERM)
            try:
                self.process.wait(30)
            except subprocess.TimeoutExpired:
                os.kill(self.process.pid, signal.SIGKILL)
                self.process.wait()


PROPERTIES = """inference_address=http://127.0.0.1:0
management_address=http://127.0.0.1:0
metrics_address=http://127.0.0.1:0
model_store=store
default_workers_per_model=1
metrics_mode=prometheus
"""


def _native_available() -> bool:
    from pyserve.torchserve import native

    return native.available()


# The inference API on the native HTTP frontend (predictions in native code) and on aiohttp.
@pytest.fixture(scope="module", params=["native", "python"])
def server(request, tmp_path_factory):
    if request.param == "native" and not _native_available():
        pytest.skip("pyserve was built without the native HTTP frontend")
    root = tmp_path_factory.mktemp("torchserve")
    build_store(root / "store")
    repository = root / "repository"
    repository.mkdir()
    if HAVE_ORT:  # the repository's model beside the archives
        shutil.copytree(EXAMPLES / "simple", repository / "simple")
    models = ["echo=echo.mar", "form.mar", "collide_a.mar", "collide_b.mar", "typed.mar", "slow.mar",
              "tgz_echo" + (".tar.gz" if HAVE_ARCHIVER else ".mar")]
    if HAVE_TS:
        models += ["eager.mar", "scripted.mar", "failing.mar", "streaming.mar"]
    extra = ("cors_allowed_origin=*\ncors_allowed_methods=GET, POST\nbatch_size=3\n"
             "model_metrics_auto_detect=true\n")  # EchoBatchSize is not in metrics.yaml
    process = TorchServeProcess(root, PROPERTIES + extra + f"load_models={','.join(models)}\n",
                                "--disable-token-auth", "--enable-model-api",
                                "--model-repository", str(repository),
                                "--http-frontend", request.param)
    if request.param == "native":
        assert "Inference API: native predictions" in process.log_path.read_text()
    yield process
    process.stop()
    print(process.log_path.read_text()[-4000:])


def metric(text: str, name: str, **labels) -> float:
    total = 0.0
    for line in text.splitlines():
        if line.startswith(name + "{") and all(f'{k}="{v}"' in line for k, v in labels.items()):
            total += float(line.rsplit(" ", 1)[1])
    return total


def test_torchserve_ping_and_api_description(server):
    reply = requests.get(server.url("inference", "/ping"))
    assert reply.status_code == 200 and reply.json() == {"status": "Healthy"}
    assert reply.headers["Access-Control-Allow-Origin"] == "*"  # cors_allowed_origin
    assert reply.headers["Access-Control-Allow-Methods"] == "GET, POST"
    description = requests.options(server.url("inference", "/"))
    assert description.status_code == 200 and "/ping" in description.json()["paths"]
    # ApiDescriptionRequestHandler on every address: OPTIONS / and /api-description
    for kind in ("inference", "management", "metrics"):
        described = requests.get(server.url(kind, "/api-description"))
        assert described.status_code == 200 and "/metrics" in described.json()["paths"]
        assert requests.options(server.url(kind, "/")).status_code == 200
        assert requests.get(server.url(kind, "/")).status_code == 405
    missing = requests.get(server.url("inference", "/nothing/here"))
    assert missing.status_code == 404
    assert missing.json()["type"] == "ResourceNotFoundException"


def test_torchserve_predictions_raw_multipart_and_json(server):
    url = server.url("inference", "/predictions/echo")
    raw = requests.put(url, data=b"kitten bytes", headers={"x-tag": "t1"})  # curl -T file
    assert raw.status_code == 200, raw.text
    assert raw.json()["echo"] == "kitten bytes" and raw.json()["tag"] == "t1"
    assert raw.json()["yaml"] == {"greeting": "hi"}  # the handler section of model-config.yaml
    assert raw.headers["x-request-id"]
    assert raw.headers["x-batch"] == "1"  # a header the handler set
    assert raw.headers["Access-Control-Allow-Origin"] == "*"  # cors_allowed_origin
    form = requests.post(url, files={"data": ("kitten.jpg", b"jpeg bytes")})  # curl -F data=@
    assert form.json()["echo"] == "jpeg bytes"
    bad_form = requests.post(url, data=b"a=\xff\xfe",
                             headers={"Content-Type": "application/x-www-form-urlencoded"})
    assert bad_form.status_code == 400 and bad_form.json()["type"] == "BadRequestException"
    as_json = requests.post(url, json={"text": "hello"})
    assert as_json.json()["echo"] == {"text": "hello"}  # application/json arrives decoded
    teapot = requests.post(url, data=b"teapot", headers={"Content-Type": "text/plain"})
    assert teapot.status_code == 418 and teapot.json()["echo"] == "teapot"
    versioned = requests.post(server.url("inference", "/predictions/echo/1.0"), data=b"v")
    assert versioned.status_code == 200
    for path, kind in (("/predictions/nope", "ModelNotFoundException"),
                       ("/predictions/echo/9.9", "ModelVersionNotFoundException")):
        reply = requests.post(server.url("inference", path), data=b"x")
        assert reply.status_code == 404 and reply.json()["type"] == kind, reply.text
    assert requests.post(server.url("inference", "/predictions/tgz_echo"),
                         data=b"t").json()["echo"] == "t"


def test_torchserve_multipart_parts_and_put_as_the_handler_sees_them(server):
    """Each part of a multipart/form-data body is an entry of the handler's row, decoded by its
    type when it has a filename (split natively on the native frontend); PUT is POST."""
    url = server.url("inference", "/predictions/form")
    reply = requests.post(url, files={"data": ("d.json", b'{"a": 1}', "application/json"),
                                      "image": ("k.jpg", b"\xff\xd8 jpeg", "image/jpeg")},
                          data={"note": "caf\u00e9"})
    assert reply.status_code == 200, reply.text
    assert reply.json() == {
        "data": {"type": "dict", "value": {"a": 1}, "header": {"content-type": "application/json"}},
        "image": {"type": "bytes", "value": "\xff\xd8 jpeg", "header": {"content-type": "image/jpeg"}},
        "note": {"type": "bytes", "value": "caf\u00c3\u00a9", "header": {"content-type": ""}}}
    put = requests.put(url, data=iter([b"chunked ", b"upload"]),  # curl -T: chunked
                       headers={"Content-Type": "text/plain"})
    assert put.json() == {"body": {"type": "str", "value": "chunked upload",
                                   "header": {"content-type": "text/plain"}}}
    unusual = (b"--b\r\nContent-Disposition: form-data; name=\"data\"; filename*=UTF-8''k.txt\r\n"
               b"Content-Type: text/plain\r\n\r\nhi\r\n--b--\r\n")  # left to the shell's parser
    reply = requests.post(url, data=unusual,
                          headers={"Content-Type": "multipart/form-data; boundary=b"})
    assert reply.status_code == 200 and reply.json()["data"]["value"] == "hi", reply.text


def test_torchserve_batching_seen_through_the_metrics(server):
    url = server.url("inference", "/predictions/echo")
    before = requests.get(server.url("metrics", "/metrics")).text
    with concurrent.futures.ThreadPoolExecutor(8) as pool:
        replies = list(pool.map(lambda i: requests.post(url, data=f"r{i}".encode(),
                                                        headers={"Content-Type": "text/plain"}),
                                range(8)))
    assert [r.json()["echo"] for r in replies] == [f"r{i}" for i in range(8)]
    batches = [r.json()["batch"] for r in replies]
    assert max(batches) > 1 and max(batches) <= 4  # batchSize 4 from model-config.yaml
    after = requests.get(server.url("metrics", "/metrics")).text
    requested = (metric(after, "ts_inference_requests_total", model_name="echo")
                 - metric(before, "ts_inference_requests_total", model_name="echo"))
    assert requested == 8
    handler_batches = (metric(after, "EchoBatchSize", ModelName="echo")
                       - metric(before, "EchoBatchSize", ModelName="echo"))
    assert handler_batches == 8  # the batch sizes the handler saw add up to the requests
    assert metric(after, "ts_queue_latency_microseconds", model_name="echo") > 0
    assert metric(after, "ts_inference_latency_microseconds", model_name="echo") > 0


def test_torchserve_config_properties_batch_size_is_the_default(server):
    """batch_size in config.properties applies to startup models without their own."""
    described = requests.get(server.url("management", "/models/collide_a")).json()
    assert described[0]["batchSize"] == 3
    assert requests.get(server.url("management", "/models/echo")).json()[0]["batchSize"] == 4


def test_torchserve_archives_with_the_same_module_names(server):
    a = requests.post(server.url("inference", "/predictions/collide_a"), data=b"x").json()
    b = requests.post(server.url("inference", "/predictions/collide_b"), data=b"x").json()
    assert (a["value"], b["value"]) == (1, 2)


@needs_ts
def test_torchserve_eager_and_torchscript_models_with_base_handler(server):
    eager = requests.post(server.url("inference", "/predictions/eager"), json=[1.0, 2.5])
    assert eager.status_code == 200, eager.text
    assert eager.json() == [2.0, 5.0]
    scripted = requests.post(server.url("inference", "/predictions/scripted"), json=[1.0, 2.0])
    assert scripted.json() == [3.0, 6.0]


@needs_ts
def test_torchserve_handler_failures(server):
    url = server.url("inference", "/predictions/failing")
    bad = requests.post(url, data=b"bad")
    assert bad.status_code == 513
    assert bad.json() == {"code": 513, "type": "InternalServerException", "message": "bad input"}
    boom = requests.post(url, data=b"boom")
    assert boom.status_code == 503 and boom.json()["message"] == "Prediction failed"
    assert requests.get(server.url("inference", "/ping")).status_code == 200


@needs_ts
def test_torchserve_streaming_response(server):
    reply = requests.post(server.url("inference", "/predictions/streaming"), data=b"x",
                          stream=True)
    assert reply.status_code == 200
    assert reply.headers.get("Transfer-Encoding") == "chunked"
    chunks = [c.decode() for c in reply.iter_content(chunk_size=None) if c]
    assert "".join(chunks) == "one two three"
    assert len(chunks) >= 2


def test_torchserve_management_api(server):
    m = lambda path: server.url("management", path)  # noqa: E731
    listing = requests.get(m("/models")).json()
    names = [entry["modelName"] for entry in listing["models"]]
    assert names == sorted(names) and "echo" in names
    page = requests.get(m("/models?limit=1&next_page_token=1")).json()
    assert page["nextPageToken"] == "2" and page["models"][0]["modelName"] == names[1]

    described = requests.get(m("/models/echo")).json()
    assert described[0]["modelVersion"] == "1.0" and described[0]["batchSize"] == 4
    assert len(described[0]["workers"]) == 1 and described[0]["loadedAtStartup"] is True

    # register version 2.0 of echo from the model store, then give it workers (without
    # initial_workers it would get default_workers_per_model, as in TorchServe)
    registered = requests.post(m("/models?url=echo_v2.mar&initial_workers=0"))
    assert registered.status_code == 200, registered.text
    assert registered.json()["status"] == ('Model "echo" Version: 2.0 registered with 0 '
                                           "initial workers. Use scale workers API to add "
                                           "workers for the model.")
    conflict = requests.post(m("/models?url=echo_v2.mar"))
    assert conflict.status_code == 409 and conflict.json()["type"] == "ConflictStatusException"
    no_worker = requests.post(server.url("inference", "/predictions/echo/2.0"), data=b"x")
    assert no_worker.status_code == 503
    scaled = requests.put(m("/models/echo/2.0?min_worker=2&synchronous=true"))
    assert scaled.status_code == 200
    assert scaled.json()["status"] == "Workers scaled to 2 for model: echo, version: 2.0"
    assert len(requests.get(m("/models/echo/2.0")).json()[0]["workers"]) == 2
    assert requests.put(m("/models/echo/2.0?min_worker=1")).status_code == 202
    everything = requests.get(m("/models/echo/all")).json()
    assert sorted(e["modelVersion"] for e in everything) == ["1.0", "2.0"]

    default = requests.put(m("/models/echo/2.0/set-default"))
    assert default.status_code == 200
    assert default.json() == {"status": 'Default version successfully updated for model "echo" '
                                        'to "2.0"'}  # TorchServe 0.12's spelling
    assert requests.get(m("/models/echo")).json()[0]["modelVersion"] == "2.0"
    assert requests.post(server.url("inference", "/predictions/echo"),
                         data=b"d").json()["version"] == "2.0"
    assert requests.post(server.url("inference", "/predictions/echo/1.0"),
                         data=b"d").json()["version"] == "1.0"
    unknown = requests.put(m("/models/echo/9.9/set-default"))
    assert unknown.json()["message"] == "Model version 9.9 does not exist for model echo"
    forbidden = requests.delete(m("/models/echo/2.0"))
    assert forbidden.status_code == 403
    assert forbidden.json()["message"] == "Cannot remove default version for model echo"
    assert requests.put(m("/models/echo/1.0/set-default")).status_code == 200
    assert requests.post(server.url("inference", "/predictions/echo"),
                         data=b"d").json()["version"] == "1.0"
    removed = requests.delete(m("/models/echo/2.0"))
    assert removed.status_code == 200 and removed.json() == {"status": 'Model "echo" unregistered'}

    # synchronous register with initial workers, then unregister the whole model
    named = requests.post(m("/models?url=echo_v2.mar&model_name=echo_copy&initial_workers=1"
                            "&synchronous=true&batch_size=2&max_batch_delay=5"))
    assert named.status_code == 200, named.text
    assert named.json()["status"] == 'Model "echo_copy" Version: 2.0 registered with 1 initial workers'
    assert requests.get(m("/models/echo_copy")).json()[0]["batchSize"] == 2
    assert requests.post(server.url("inference", "/predictions/echo_copy"),
                         data=b"c").json()["echo"] == "c"
    assert requests.delete(m("/models/echo_copy")).status_code == 200
    assert requests.get(m("/models/echo_copy")).status_code == 404


@pytest.mark.parametrize("method,path,status,kind", [
    ("POST", "/models", 400, "BadRequestException"),  # no url
    ("POST", "/models?url=missing.mar", 404, "ModelNotFoundException"),
    ("POST", "/models?url=../store/echo.mar", 404, "ModelNotFoundException"),
    ("POST", "/models?url=https://example.invalid/m.mar", 400, "DownloadArchiveException"),
    ("POST", "/models?url=ftp://example.invalid/m.mar", 404, "ModelNotFoundException"),
    ("POST", "/models?url=echo.mar&runtime=LSP", 400, "BadRequestException"),
    ("POST", "/models?url=&model_name=x", 404, "ModelNotFoundException"),  # "empty url"
    ("POST", "/models?url=echo.mar&runtime=python4", 400, "BadRequestException"),
    ("PUT", "/models/echo?max_worker=-1", 400, "BadRequestException"),  # below min_worker 1
    ("GET", "/models/nope", 404, "ModelNotFoundException"),
    ("GET", "/models/echo/9.9", 404, "ModelVersionNotFoundException"),
    ("GET", "/models/nope/all", 404, "ModelNotFoundException"),
    ("PUT", "/models/nope?min_worker=1", 404, "ModelNotFoundException"),
    ("PUT", "/models/echo?min_worker=3&max_worker=2", 400, "BadRequestException"),
    ("PUT", "/models/echo/9.9/set-default", 404, "ModelVersionNotFoundException"),
    ("PUT", "/models/nope/1.0/set-default", 404, "ModelNotFoundException"),
    ("DELETE", "/models/nope", 404, "ModelNotFoundException"),
    ("DELETE", "/models/echo/9.9", 404, "ModelVersionNotFoundException"),
    ("PATCH", "/models/echo", 405, "MethodNotAllowedException"),
    ("GET", "/elsewhere", 404, "ResourceNotFoundException"),
])
def test_torchserve_management_refusals(server, method, path, status, kind):
    reply = requests.request(method, server.url("management", path))
    assert reply.status_code == status, reply.text
    assert reply.json()["type"] == kind and reply.json()["code"] == status


def test_torchserve_management_parameters_as_torchserve_reads_them(server):
    """TorchServe 0.12's parameter handling (NettyUtils.getIntParameter, Boolean.parseBoolean,
    ApiUtils, ModelManager): what is not an integer is the default, what is not "true" is
    false, and the answers are TorchServe's, as its management API collection expects them."""
    m = lambda path: server.url("management", path)  # noqa: E731

    def register(query: str, **kwargs):
        return requests.post(m(f"/models?url=echo_v2.mar&{query}"), **kwargs)

    def described(name: str) -> dict:
        return requests.get(m(f"/models/{name}")).json()[0]

    def unregister(name: str) -> None:  # the query's parameters mean nothing to unregister
        reply = requests.delete(m(f"/models/{name}/?timeout=true&synchronous=-1"))
        assert reply.status_code == 200, reply.text

    # a batch_size or max_batch_delay that is not an integer is as if not given
    reply = register("model_name=p_batch&batch_size=dd&initial_workers=1")
    assert reply.status_code == 200, reply.text
    assert reply.json() == {"status": 'Model "p_batch" Version: 2.0 registered with 1 '
                                      "initial workers"}  # synchronous unless told otherwise
    assert (described("p_batch")["batchSize"], described("p_batch")["maxBatchDelay"]) == (1, 100)
    unregister("p_batch")
    reply = register("model_name=p_delay&batch_size=2&initial_workers=1&max_batch_delay=junk")
    assert reply.status_code == 200, reply.text
    assert (described("p_delay")["batchSize"], described("p_delay")["maxBatchDelay"]) == (2, 100)
    unregister("p_delay")
    # negative initial workers: registered without workers
    reply = register("model_name=p_negative&initial_workers=-1")
    assert reply.status_code == 200 and "with 0 initial workers" in reply.json()["status"]
    # synchronous=-1 is false; initial_workers defaults to default_workers_per_model (1)
    reply = register("model_name=p_async&synchronous=-1")
    assert reply.status_code == 202 and reply.json() == {"status": "Processing worker updates..."}
    # scaling: min_worker 1 unless an integer, synchronous only for "true"
    for query in ("min_worker=1&synchronous=Nan", "min_worker=nan&synchronous=nan", "",
                  "timeout=-1", "number_gpu=10"):
        reply = requests.put(m(f"/models/p_negative?{query}"))
        assert reply.status_code == 202, (query, reply.text)
    reply = requests.put(m("/models/p_negative?min_worker=2&synchronous=true"))
    assert reply.json() == {"status": "Workers scaled to 2 for model: p_negative"}
    # min_worker 1 with max_worker 3 keeps both workers: only those past max_worker stop
    assert requests.put(m("/models/p_negative?min_worker=1&max_worker=3&synchronous=true")
                        ).status_code == 200
    assert len(described("p_negative")["workers"]) == 2
    # a negative min_worker: TorchServe stops every worker and fails with a 500
    reply = requests.put(m("/models/p_negative?min_worker=-1"))
    assert reply.status_code == 500, reply.text
    assert reply.json() == {"code": 500, "type": "IndexOutOfBoundsException",
                            "message": "Index -1 out of bounds for length 0"}
    assert described("p_negative")["workers"] == []
    unregister("p_negative")
    # startup_timeout=0: workers cannot load in no time; without workers it registers
    reply = register("model_name=p_startup&batch_size=3&initial_workers=3&startup_timeout=0")
    assert reply.status_code == 500, reply.text
    assert reply.json()["type"] == "InternalServerException"
    assert reply.json()["message"].startswith(
        "Failed to start workers for model p_startup version: 2.0")
    assert requests.get(m("/models/p_startup")).status_code == 404  # unregistered again
    reply = register("model_name=p_startup&startup_timeout=0&initial_workers=0")
    assert reply.status_code == 200, reply.text
    assert described("p_startup")["startupTimeout"] == 0
    unregister("p_startup")
    # list parameters that are not integers are their defaults
    for query in ("limit=&next_page_token=", "limit=abc", "next_page_token=12", "limit=-1"):
        assert requests.get(m(f"/models?{query}")).status_code == 200, query
    # a JSON body as Gson reads it: numeric strings are ints; a wrong type is a 500
    reply = requests.post(m("/models"), json={"url": "echo_v2.mar", "model_name": "p_json",
                                              "initial_workers": "1", "batch_size": 2})
    assert reply.status_code == 200, reply.text
    assert reply.json()["status"] == 'Model "p_json" Version: 2.0 registered with 1 initial workers'
    assert described("p_json")["batchSize"] == 2
    unregister("p_json")
    reply = requests.post(m("/models"), json={"url": "echo_v2.mar", "batch_size": "dd"})
    assert reply.status_code == 500 and reply.json()["type"] == "JsonSyntaxException"
    reply = requests.post(m("/models"), json={"model_name": "p_nourl"})
    assert reply.status_code == 400 and reply.json()["message"] == "Parameter url is required."


def test_torchserve_token_authorization_and_disabled_model_api(tmp_path):
    store = tmp_path / "store"
    make_mar(store, "echo", {"echo.py": ECHO}, handler="echo.py", work=tmp_path / "src")
    process = TorchServeProcess(tmp_path, PROPERTIES + "load_models=echo.mar\n")
    try:
        keys = json.loads((tmp_path / "key_file.json").read_text())
        inference = {"Authorization": f"Bearer {keys['inference']['key']}"}
        management = {"Authorization": f"Bearer {keys['management']['key']}"}
        url = process.url("inference", "/predictions/echo")
        refused = requests.post(url, data=b"x")
        assert refused.status_code == 400
        assert refused.json()["type"] == "InvalidKeyException"
        assert requests.post(url, data=b"x", headers=management).status_code == 400
        assert requests.post(url, data=b"x", headers=inference).json()["echo"] == "x"
        assert requests.get(process.url("management", "/models")).status_code == 400
        assert requests.get(process.url("management", "/models"),
                            headers=management).status_code == 200
        # the model API is off unless asked for: register and unregister are not allowed
        assert requests.post(process.url("management", "/models?url=echo.mar"),
                             headers=management).status_code == 405
        assert requests.delete(process.url("management", "/models/echo"),
                               headers=management).status_code == 405
        # a new inference key replaces the old one
        renewed = requests.get(process.url("management", "/token?type=inference"),
                               headers={"Authorization": f"Bearer {keys['API']['key']}"})
        assert renewed.status_code == 200
        assert requests.post(url, data=b"x", headers=inference).status_code == 400
        fresh = {"Authorization": f"Bearer {renewed.json()['inference']['key']}"}
        assert requests.post(url, data=b"x", headers=fresh).status_code == 200
        assert "ts_inference_requests_total" in requests.get(
            process.url("metrics", "/metrics")).text  # the metrics API takes no token
    finally:
        process.stop()
    assert not (tmp_path / "key_file.json").exists()


@pytest.mark.parametrize("frontend", ["native", "python"])
def test_torchserve_size_limits(tmp_path, frontend):
    """max_request_size and max_response_size: TorchServe's 413 and 507 answers."""
    if frontend == "native" and not _native_available():
        pytest.skip("pyserve was built without the native HTTP frontend")
    store = tmp_path / "store"
    make_mar(store, "echo", {"echo.py": ECHO}, handler="echo.py", work=tmp_path / "src")
    process = TorchServeProcess(
        tmp_path, PROPERTIES + "load_models=echo.mar\nmax_request_size=4096\n"
        "max_response_size=2048\n", "--disable-token-auth", "--http-frontend", frontend)
    try:
        url = process.url("inference", "/predictions/echo")
        assert requests.post(url, data=b"x" * 100).json()["echo"] == "x" * 100
        too_long = requests.post(url, data=b"x" * 3000)  # its echo passes 2048 bytes
        assert too_long.status_code == 507, too_long.text
        assert too_long.json()["message"] == ("Response size exceeds the limit "
                                              "(max_response_size)")
        too_large = requests.post(url, data=b"x" * 5000)
        assert too_large.status_code == 413 and too_large.json()["code"] == 413
        assert requests.post(url, data=b"y").json()["echo"] == "y"  # still serving
    finally:
        process.stop()


def test_torchserve_builtin_image_classifier(server, tmp_path):
    """A built-in handler by name: it classifies when torchvision imports beside this torch;
    otherwise only that model fails to load, saying why, and the others keep serving."""
    if not HAVE_TS:
        pytest.skip("needs pyserve[torchserve] (the ts package)")
    net = torch.jit.script(torch.nn.Sequential(torch.nn.AdaptiveAvgPool2d(1), torch.nn.Flatten(),
                                               torch.nn.Linear(3, 2)))
    net.save(str(tmp_path / "net.pt"))
    store = server.cwd / "store"
    make_mar(store, "classifier", {"net.pt": (tmp_path / "net.pt").read_bytes()},
             handler="image_classifier", serialized_file="net.pt", work=tmp_path / "src")
    reply = requests.post(server.url("management", "/models?url=classifier.mar"
                                     "&initial_workers=1&synchronous=true"))
    try:
        import torchvision  # noqa: F401
    except Exception:  # noqa: BLE001 - the CUDA build of torchvision beside the CPU torch
        assert reply.status_code == 500, reply.text
        assert "torchvision" in reply.json()["message"]
        assert requests.get(server.url("management", "/models/classifier")).status_code == 404
        assert requests.post(server.url("inference", "/predictions/collide_a"),
                             data=b"x").status_code == 200
        return
    assert reply.status_code == 200, reply.text
    import io

    from PIL import Image

    image = io.BytesIO()
    Image.new("RGB", (32, 32), (200, 10, 10)).save(image, format="PNG")
    answer = requests.post(server.url("inference", "/predictions/classifier"),
                           data=image.getvalue())
    assert answer.status_code == 200 and len(answer.json()) >= 1


@pytest.fixture(params=["grpc", "http"])
def kserve(request, server):
    """tritonclient on pyserve's KServe v2 frontends of the `pyserve torchserve` process."""
    module = pytest.importorskip(f"tritonclient.{request.param}")
    url = f"127.0.0.1:{server.ports[f'kserve-{request.param}']}"
    client = module.InferenceServerClient(url)
    yield module, client
    client.close()


def test_torchserve_archive_served_over_kserve_v2(kserve):
    """A .mar with no config.pbtxt: one BYTES input `data` and one BYTES output per request;
    its TorchServe version 1.0 is version 1."""
    module, client = kserve
    import numpy as np

    assert client.is_model_ready("echo") and client.is_model_ready("echo", "1")
    metadata = client.get_model_metadata("echo")
    inputs = metadata.inputs if hasattr(metadata, "inputs") else metadata["inputs"]
    first = inputs[0]
    name = first.name if hasattr(first, "name") else first["name"]
    datatype = first.datatype if hasattr(first, "datatype") else first["datatype"]
    assert (name, datatype) == ("data", "BYTES")
    config = client.get_model_config("echo")
    config = config.config if hasattr(config, "config") else config
    max_batch = config.max_batch_size if hasattr(config, "max_batch_size") \
        else config["max_batch_size"]
    assert max_batch == 4  # batchSize of the archive's model-config.yaml
    data = module.InferInput("data", [2, 1], "BYTES")
    data.set_data_from_numpy(np.array([[b"first"], [b"second"]], dtype=np.object_))
    result = client.infer("echo", [data])
    answers = [json.loads(row[0]) for row in result.as_numpy("output")]
    assert [a["echo"] for a in answers] == ["first", "second"]
    assert answers[0]["yaml"] == {"greeting": "hi"}


def test_torchserve_archive_with_its_own_config_pbtxt(kserve, server):
    """An archive carrying config.pbtxt is served with its tensors; the handler gets each
    row's arrays by input name. Its TorchServe API keeps working beside it."""
    module, client = kserve
    import numpy as np

    values = np.array([[1.0, 2.0], [3.0, 4.5]], dtype=np.float32)
    tensor = module.InferInput("INPUT0", list(values.shape), "FP32")
    tensor.set_data_from_numpy(values)
    result = client.infer("typed", [tensor])
    np.testing.assert_array_equal(result.as_numpy("OUTPUT0"), values * 2)
    reply = requests.post(server.url("inference", "/predictions/typed"), json=[1.5, 2.0])
    assert reply.status_code == 200 and reply.json() == [3.0, 4.0]


def test_torchserve_and_model_repository_in_one_process(kserve, server):
    """The repository's ONNX model beside the archives, on the same KServe v2 frontends; an
    archive named like a repository model is refused."""
    module, client = kserve
    import numpy as np

    if not HAVE_ORT:
        pytest.skip("the repository's model needs onnxruntime")
    a = np.arange(16, dtype=np.int32).reshape(1, 16)
    inputs = []
    for name in ("INPUT0", "INPUT1"):
        inputs.append(module.InferInput(name, [1, 16], "INT32"))
        inputs[-1].set_data_from_numpy(a)
    result = client.infer("simple", inputs)
    np.testing.assert_array_equal(result.as_numpy("OUTPUT0"), a + a)
    index = client.get_model_repository_index()
    index = index.models if hasattr(index, "models") else index
    names = {m.name if hasattr(m, "name") else m["name"] for m in index}
    assert {"simple", "echo", "typed"} <= names
    conflict = requests.post(server.url("management", "/models?url=simple.mar"))
    assert conflict.status_code == 409, conflict.text
    assert "model repository" in conflict.json()["message"]


def test_torchserve_scaling_and_unregistering_reach_kserve_v2(server):
    tritonclient = pytest.importorskip("tritonclient.http")
    client = tritonclient.InferenceServerClient(f"127.0.0.1:{server.ports['kserve-http']}")
    m = lambda path: server.url("management", path)  # noqa: E731
    try:
        registered = requests.post(m("/models?url=echo_v2.mar&model_name=echo_kserve"
                                     "&initial_workers=1&synchronous=true"))
        assert registered.status_code == 200, registered.text
        assert client.is_model_ready("echo_kserve", "2")  # TorchServe's "2.0"
        assert requests.put(m("/models/echo_kserve?min_worker=0&synchronous=true")
                            ).status_code == 200
        assert not client.is_model_ready("echo_kserve")  # no workers: not served
        assert requests.put(m("/models/echo_kserve?min_worker=2&synchronous=true")
                            ).status_code == 200
        assert client.is_model_ready("echo_kserve")
        assert requests.delete(m("/models/echo_kserve")).status_code == 200
        assert not client.is_model_ready("echo_kserve")
    finally:
        client.close()


def test_torchserve_response_timeout(server):
    """A handler past responseTimeout gets TorchServe's answer (500 "Worker died."), its
    worker is replaced, and the model keeps serving at once."""
    url = server.url("inference", "/predictions/slow")
    workers = requests.get(server.url("management", "/models/slow")).json()[0]["workers"]
    began = time.monotonic()
    timed_out = requests.post(url, data=b"sleep")
    assert timed_out.status_code == 500, timed_out.text
    assert timed_out.json() == {"code": 500, "type": "InternalServerException",
                                "message": "Worker died."}
    assert time.monotonic() - began < 3.5  # answered at the timeout, not when the handler ends
    began = time.monotonic()
    fine = requests.post(url, data=b"quick")
    assert fine.status_code == 200 and fine.content == b"done"
    assert time.monotonic() - began < 2.8  # a new worker: the stuck one sleeps 3 s more
    described = requests.get(server.url("management", "/models/slow")).json()[0]
    assert described["responseTimeout"] == 1
    assert [w["id"] for w in described["workers"]] != [w["id"] for w in workers]
    assert len(described["workers"]) == len(workers)


def test_torchserve_register_response_timeout(server):
    m = lambda path: server.url("management", path)  # noqa: E731
    registered = requests.post(m("/models?url=echo_v2.mar&model_name=echo_timeout"
                                 "&response_timeout=7"))
    assert registered.status_code == 200, registered.text
    assert requests.get(m("/models/echo_timeout")).json()[0]["responseTimeout"] == 7
    assert requests.delete(m("/models/echo_timeout")).status_code == 200


def test_torchserve_archive_with_an_invalid_config_pbtxt(server, tmp_path):
    make_mar(server.cwd / "store", "badconfig",
             {"echo.py": ECHO, "config.pbtxt": "max_batch_size: -3\n"}, handler="echo.py",
             work=tmp_path / "src")
    reply = requests.post(server.url("management", "/models?url=badconfig.mar"
                                     "&initial_workers=1&synchronous=true"))
    assert reply.status_code == 400, reply.text
    assert reply.json()["type"] == "ModelException"
    assert "config.pbtxt" in reply.json()["message"]
    assert requests.get(server.url("management", "/models/badconfig")).status_code == 404


# KServe's sample config.properties (docs/samples/v1beta1/torchserve/v1 in kserve/kserve), as
# KServe's TorchServe runtime mounts it at /mnt/models/config/config.properties.
KSERVE_PROPERTIES = """inference_address=http://0.0.0.0:8085
management_address=http://0.0.0.0:8085
metrics_address=http://0.0.0.0:8082
grpc_inference_port=7070
grpc_management_port=7071
enable_metrics_api=true
metrics_format=prometheus
number_of_netty_threads=4
job_queue_size=10
enable_envvars_config=true
install_py_dep_per_model=true
model_store=/mnt/models/model-store
model_snapshot={"name":"startup.cfg","modelCount":1,"models":{"mnist":{"1.0":{"defaultVersion":true,"marName":"mnist.mar","minWorkers":1,"maxWorkers":5,"batchSize":1,"maxBatchDelay":5000,"responseTimeout":120}}}}
"""


def test_kserves_sample_config_properties_loads_unchanged(tmp_path, monkeypatch):
    """The model snapshot's archive is loaded under its name, install_py_dep_per_model=true is
    warned about, TS_* variables apply (enable_envvars_config), and the equal inference and
    management addresses share one port, as in TorchServe."""
    import socket

    import tritonclient.http as tritonclient

    make_mar(tmp_path / "model-store", "mnist", {"echo.py": ECHO}, handler="echo.py",
             work=tmp_path / "src")
    with socket.socket() as probe:  # a free port for the shared address
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    # What the pod gets from KServe's runtime, with loopback addresses for the test.
    monkeypatch.setenv("TS_SERVICE_ENVELOPE", "")  # KServe's template with no label
    monkeypatch.setenv("TS_INFERENCE_ADDRESS", f"http://127.0.0.1:{port}")
    monkeypatch.setenv("TS_MANAGEMENT_ADDRESS", f"http://127.0.0.1:{port}")
    monkeypatch.setenv("TS_METRICS_ADDRESS", "http://127.0.0.1:0")
    process = TorchServeProcess(tmp_path, KSERVE_PROPERTIES, "--disable-token-auth",
                                "--model-store", str(tmp_path / "model-store"))
    try:
        log = process.log_path.read_text()
        assert "install_py_dep_per_model=true is ignored" in log
        assert process.ports["inference"] == port and "management" not in process.ports
        assert "Management API served on the inference address" in log
        assert requests.get(process.url("inference", "/ping")).json() == {"status": "Healthy"}
        (described,) = requests.get(process.url("inference", "/models/mnist")).json()
        assert described["modelVersion"] == "1.0" and described["maxWorkers"] == 5
        assert len(described["workers"]) == 1
        client = tritonclient.InferenceServerClient(f"127.0.0.1:{process.ports['kserve-http']}")
        assert client.is_model_ready("mnist")
    finally:
        process.stop()
