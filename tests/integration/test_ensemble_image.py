"""An image pipeline served as an ensemble, under the names NVIDIA's `ensemble_image_client.py`
expects: `preprocess_inception_ensemble` = `preprocess` (Python: JPEG bytes -> normalized CHW
floats) then `classifier` (ONNX: a linear layer over the pixels). NVIDIA's client (kept
unchanged in tests/fixtures/nvidia) passes, and the ensemble answers as the two steps run by
hand."""

from __future__ import annotations

import io
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import onnx
import pytest

from conftest import FRONTENDS, tensor, write_python_model
from test_ensemble import serve

PIL = pytest.importorskip("PIL.Image")

CLIENT = Path(__file__).parent.parent / "fixtures" / "nvidia" / "ensemble_image_client.py"
SIDE = 16
LABELS = ["red", "green", "blue", "dark", "light"]

PREPROCESS = """import io

import numpy as np
import triton_python_backend_utils as pb_utils
from PIL import Image


class TritonPythonModel:
    def execute(self, requests):
        responses = []
        for request in requests:
            images = pb_utils.get_input_tensor_by_name(request, "INPUT_0").as_numpy()
            pixels = [np.asarray(Image.open(io.BytesIO(item[0])).convert("RGB")
                                 .resize((16, 16), Image.BILINEAR), dtype=np.float32)
                      for item in images]
            batch = np.stack(pixels).transpose(0, 3, 1, 2) / 255.0
            responses.append(pb_utils.InferenceResponse(
                [pb_utils.Tensor("OUTPUT_0", batch.astype(np.float32))]))
        return responses
"""


def classifier_onnx() -> bytes:
    """input FP32 [batch, 3, 16, 16] -> Flatten -> MatMul + Add -> scores FP32 [batch, 5]."""
    from onnx import TensorProto, helper, numpy_helper

    rng = np.random.default_rng(3)
    weights = rng.standard_normal((3 * SIDE * SIDE, len(LABELS))).astype(np.float32)
    bias = rng.standard_normal(len(LABELS)).astype(np.float32)
    graph = helper.make_graph(
        [helper.make_node("Flatten", ["input"], ["flat"], axis=1),
         helper.make_node("MatMul", ["flat", "W"], ["product"]),
         helper.make_node("Add", ["product", "b"], ["scores"])], "classifier",
        [helper.make_tensor_value_info("input", TensorProto.FLOAT, ["batch", 3, SIDE, SIDE])],
        [helper.make_tensor_value_info("scores", TensorProto.FLOAT, ["batch", len(LABELS)])],
        [numpy_helper.from_array(weights, "W"), numpy_helper.from_array(bias, "b")])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.checker.check_model(model)
    return model.SerializeToString()


def build_repository(repository: Path) -> None:
    write_python_model(
        repository, "preprocess",
        'input [ { name: "INPUT_0" data_type: TYPE_STRING dims: [ 1 ] } ]\n'
        f'output [ {{ name: "OUTPUT_0" data_type: TYPE_FP32 dims: [ 3, {SIDE}, {SIDE} ] }} ]\n',
        PREPROCESS, max_batch_size=8)
    (repository / "classifier" / "1").mkdir(parents=True)
    (repository / "classifier" / "1" / "model.onnx").write_bytes(classifier_onnx())
    (repository / "classifier" / "config.pbtxt").write_text(
        'name: "classifier"\nplatform: "onnxruntime_onnx"\nmax_batch_size: 8\n'
        f'input [ {{ name: "input" data_type: TYPE_FP32 dims: [ 3, {SIDE}, {SIDE} ] }} ]\n'
        f'output [ {{ name: "scores" data_type: TYPE_FP32 dims: [ {len(LABELS)} ] '
        'label_filename: "labels.txt" } ]\n')
    (repository / "classifier" / "labels.txt").write_text("\n".join(LABELS) + "\n")
    ensemble = repository / "preprocess_inception_ensemble"
    (ensemble / "1").mkdir(parents=True)
    (ensemble / "labels.txt").write_text("\n".join(LABELS) + "\n")
    (ensemble / "config.pbtxt").write_text(
        'name: "preprocess_inception_ensemble"\nplatform: "ensemble"\nmax_batch_size: 8\n'
        'input [ { name: "INPUT" data_type: TYPE_STRING dims: [ 1 ] } ]\n'
        f'output [ {{ name: "OUTPUT" data_type: TYPE_FP32 dims: [ {len(LABELS)} ] '
        'label_filename: "labels.txt" } ]\n'
        'ensemble_scheduling { step [\n'
        '  { model_name: "preprocess" model_version: -1\n'
        '    input_map { key: "INPUT_0" value: "INPUT" }\n'
        '    output_map { key: "OUTPUT_0" value: "preprocessed_image" } },\n'
        '  { model_name: "classifier" model_version: -1\n'
        '    input_map { key: "input" value: "preprocessed_image" }\n'
        '    output_map { key: "scores" value: "OUTPUT" } }\n'
        '] }\n')


def write_images(folder: Path) -> list[Path]:
    """Three JPEGs the test draws: a red, a blue and a noisy one."""
    folder.mkdir()
    rng = np.random.default_rng(5)
    pictures = {
        "a_red.jpg": np.tile(np.array([220, 30, 30], np.uint8), (40, 48, 1)),
        "b_blue.jpg": np.tile(np.array([20, 40, 230], np.uint8), (40, 48, 1)),
        "c_noise.jpg": rng.integers(0, 256, (40, 48, 3), dtype=np.uint8),
    }
    paths = []
    for name, pixels in pictures.items():
        buffer = io.BytesIO()
        PIL.fromarray(pixels).save(buffer, format="JPEG")
        (folder / name).write_bytes(buffer.getvalue())
        paths.append(folder / name)
    return paths


@pytest.fixture(scope="module", params=FRONTENDS)
def server(request, tmp_path_factory):
    yield from serve(request, tmp_path_factory, build_repository)


@pytest.fixture(scope="module")
def images(tmp_path_factory) -> list[Path]:
    return write_images(tmp_path_factory.mktemp("pictures") / "images")


def by_hand(module, client, image: Path, classes: int) -> list[str]:
    """The two steps called one after the other: the top classes as "score:index:label"."""
    data = np.array([[image.read_bytes()]], dtype=np.object_)
    pixels = client.infer("preprocess", [tensor(module, "INPUT_0", data, "BYTES")]).as_numpy(
        "OUTPUT_0")
    result = client.infer("classifier", [tensor(module, "input", pixels, "FP32")],
                          outputs=[module.InferRequestedOutput("scores", class_count=classes)])
    return [item.decode() for item in result.as_numpy("scores")[0]]


def test_ensemble_answers_as_its_steps_run_by_hand(client, images):
    module, c = client
    data = np.array([[p.read_bytes()] for p in images], dtype=np.object_)
    ensemble = c.infer("preprocess_inception_ensemble", [tensor(module, "INPUT", data, "BYTES")])
    for index, image in enumerate(images):
        pixels = c.infer("preprocess", [tensor(module, "INPUT_0", data[index:index + 1],
                                               "BYTES")]).as_numpy("OUTPUT_0")
        scores = c.infer("classifier", [tensor(module, "input", pixels, "FP32")]).as_numpy(
            "scores")
        np.testing.assert_allclose(ensemble.as_numpy("OUTPUT")[index], scores[0], rtol=1e-5)


@pytest.mark.parametrize("protocol", ["grpc", "http"])
def test_nvidias_ensemble_image_client_passes(server, images, protocol):
    import tritonclient.grpc as grpcclient
    import tritonclient.http as httpclient

    url = server.grpc_url if protocol == "grpc" else server.http_url
    run = subprocess.run([sys.executable, str(CLIENT), "-u", url, "-i", protocol, "-c", "3",
                          str(images[0].parent)], capture_output=True, text=True, timeout=120)
    assert run.returncode == 0, run.stdout + run.stderr
    assert run.stdout.rstrip().endswith("PASS")
    printed = dict(re.findall(r'"([^"]+)":\n  \[OUTPUT\]:\n((?:    .*\n){3})', run.stdout))
    module = grpcclient if protocol == "grpc" else httpclient
    with module.InferenceServerClient(url) as c:
        for image in images:
            expected = by_hand(module, c, image, 3)
            lines = printed[str(image)].strip().splitlines()
            # The client prints "score:index:label" as "score (index) = label".
            assert [line.strip() for line in lines] == [
                f"{e.split(':')[0]} ({e.split(':')[1]}) = {e.split(':')[2]}" for e in expected]
