"""`pyserve torchserve` with service_envelope=kserve and kservev2: TorchServe's KServe routes
(`/v1/models/{m}:predict|:explain`, `/v2/models/{m}/infer|explain`) through TorchServe's own
request envelopes around an MNIST-style handler, as TorchServe's KServe API collections send
them (a JSON file posted as application/json)."""

from __future__ import annotations

import base64
import io
import json
import sys
from pathlib import Path

import pytest

requests = pytest.importorskip("requests")
torch = pytest.importorskip("torch")
pytest.importorskip("ts", reason="the envelopes are TorchServe's ts package")
Image = pytest.importorskip("PIL.Image")

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
sys.path.insert(0, str(Path(__file__).resolve().parent))
from torchserve_archives import make_mar  # noqa: E402
from test_torchserve_server import PROPERTIES, TorchServeProcess, _native_available  # noqa: E402

# TorchServe's MNIST example in miniature: a PNG (raw bytes or base64 text) becomes a 28x28
# tensor; explanations are the pixels' share of the image (what captum's would be shaped as).
MNIST_HANDLER = '''
import base64
import io

import torch
from PIL import Image
from ts.torch_handler.base_handler import BaseHandler


class MNISTDigitClassifier(BaseHandler):
    def preprocess(self, data):
        images = []
        for row in data:
            image = row.get("data") or row.get("body")
            if isinstance(image, str):
                image = base64.b64decode(image)
            if isinstance(image, (bytes, bytearray)):
                pixels = Image.open(io.BytesIO(image)).convert("L").getdata()
                image = torch.tensor(list(pixels), dtype=torch.float32).reshape(28, 28) / 255
            else:
                image = torch.tensor(image, dtype=torch.float32).reshape(28, 28)
            images.append(image)
        return torch.stack(images)

    def postprocess(self, data):
        return data.argmax(1).tolist()

    def get_insights(self, tensor_data, _, target=0):
        return (tensor_data / tensor_data.sum()).reshape(len(tensor_data), -1)[:, :3].tolist()
'''


class Digits(torch.nn.Module):
    """Sums the pixels into the logit of digit 2: every image that is not blank is a 2."""

    def forward(self, x):
        total = x.reshape(x.shape[0], -1).sum(1, keepdim=True)
        return torch.cat([torch.zeros_like(total)] * 2 + [total]
                         + [torch.zeros_like(total)] * 7, dim=1)


def _png() -> bytes:
    image = Image.new("L", (28, 28), 0)
    for x in range(10, 18):
        image.putpixel((x, 14), 255)
    out = io.BytesIO()
    image.save(out, format="PNG")
    return out.getvalue()


@pytest.fixture(scope="module", params=["native", "python"])
def frontend(request):
    if request.param == "native" and not _native_available():
        pytest.skip("pyserve was built without the native HTTP frontend")
    return request.param


def _start(tmp_path: Path, frontend: str, properties: str, env: dict | None = None):
    store = tmp_path / "store"
    work = tmp_path / "src"
    work.mkdir(parents=True)
    torch.jit.script(Digits()).save(str(work / "mnist.pt"))
    make_mar(store, "mnist", {"mnist_handler.py": MNIST_HANDLER,
                              "mnist.pt": (work / "mnist.pt").read_bytes()},
             handler="mnist_handler.py", serialized_file="mnist.pt", work=work)
    return TorchServeProcess(tmp_path, PROPERTIES + "load_models=mnist.mar\n" + properties,
                             "--disable-token-auth", "--http-frontend", frontend, env=env)


def _post_file(url: str, path: Path) -> "requests.Response":
    """As newman posts a collection's JSON file: its bytes, Content-Type application/json."""
    return requests.post(url, data=path.read_bytes(),
                         headers={"Content-Type": "application/json"})


def test_kserve_v1_envelope(tmp_path, frontend):
    process = _start(tmp_path, frontend, "service_envelope=kserve\n")
    try:
        body = tmp_path / "mnist.json"  # kubernetes/kserve/kf_request_json/v1/mnist.json
        body.write_text(json.dumps({"instances": [
            {"data": base64.b64encode(_png()).decode()}]}))
        url = process.url("inference", "/v1/models/mnist")
        predicted = _post_file(url + ":predict", body)
        assert predicted.status_code == 200, predicted.text
        assert predicted.json() == {"predictions": [2]}
        explained = _post_file(url + ":explain", body)
        assert explained.status_code == 200, explained.text
        assert list(explained.json()) == ["explanations"]
        assert len(explained.json()["explanations"]) == 1
        ready = requests.get(process.url("management", "/v1/models/mnist"))
        assert ready.status_code == 200, ready.text
        assert ready.json() == {"name": "mnist", "ready": True}
    finally:
        process.stop()
        print(process.log_path.read_text()[-6000:])


def test_kserve_v1_envelope_body_without_content_type(tmp_path, frontend):
    """A body without Content-Type reaches the envelope as bytes, which it decodes itself."""
    if frontend == "native" and not _native_available():
        pytest.skip("pyserve was built without the native HTTP frontend")
    process = _start(tmp_path, frontend, "service_envelope=kserve\n")
    try:
        body = json.dumps({"instances": [{"data": base64.b64encode(_png()).decode()}]})
        raw = requests.post(process.url("inference", "/v1/models/mnist:predict"),
                            data=body.encode())
        assert raw.status_code == 200 and raw.json() == {"predictions": [2]}, raw.text
    finally:
        process.stop()


def test_kserve_v2_envelope_from_the_environment(tmp_path, frontend):
    """TS_SERVICE_ENVELOPE counts where enable_envvars_config=true, over the file's value."""
    process = _start(tmp_path, frontend, "service_envelope=kserve\nenable_envvars_config=true\n",
                     env={"TS_SERVICE_ENVELOPE": "kservev2"})
    try:
        body = tmp_path / "mnist_v2.json"  # kf_request_json/v2/mnist/mnist_v2_bytes.json
        body.write_text(json.dumps({"id": "d3b15cad-50a2-4eaf-80ce-8b0a428bd298", "inputs": [
            {"name": "e8d5afed-0a56-4deb-ac9c-352663f51b93", "shape": [-1],
             "datatype": "BYTES", "data": [base64.b64encode(_png()).decode()]}]}))
        url = process.url("inference", "/v2/models/mnist")
        inferred = _post_file(url + "/infer", body)
        assert inferred.status_code == 200, inferred.text
        assert inferred.json() == {
            "id": "d3b15cad-50a2-4eaf-80ce-8b0a428bd298", "model_name": "mnist",
            "model_version": "1.0",
            "outputs": [{"name": "e8d5afed-0a56-4deb-ac9c-352663f51b93", "datatype": "INT64",
                         "data": [2], "shape": [1]}]}
        explained = _post_file(url + "/explain", body)
        assert explained.status_code == 200, explained.text
        assert explained.json()["outputs"][0]["datatype"] == "FP64"
        # a tensor input: its data reshaped as the envelope does
        tensor = tmp_path / "mnist_v2_tensor.json"
        pixels = [[1.0 if 10 <= x < 18 and y == 14 else 0.0 for x in range(28)]
                  for y in range(28)]
        tensor.write_text(json.dumps({"inputs": [
            {"name": "input-0", "shape": [1, 28, 28], "datatype": "FP32",
             "data": sum(pixels, [])}]}))
        answer = _post_file(url + "/infer", tensor)
        assert answer.status_code == 200, answer.text
        assert answer.json()["outputs"][0]["data"] == [2]
    finally:
        process.stop()
        print(process.log_path.read_text()[-6000:])
