#!/usr/bin/env python3
"""Write the example model repository that `pyserve serve` (and Triton) runs unchanged.

Usage:
    python examples/make_models.py [OUTPUT_DIR]

OUTPUT_DIR defaults to examples/model_repository/ next to this script. The output is
deterministic: the same onnx version writes byte-identical files on every run (weights come
from a fixed seed; no timestamps or paths are embedded).

Only numpy and the `onnx` helper API are used to build the graphs; onnxruntime is used to
check that each model really runs and computes what it should.
"""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

# Opset 17 is supported by every onnxruntime since 1.13. IR version 8 is the newest IR that
# onnxruntime 1.13-1.14 can read, so pinning it lets older runtimes (and older Triton images)
# load these files too; newer runtimes read old IR versions without complaint.
OPSET = 17
IR_VERSION = 8
SEED = 20240601
PRODUCER = "pyserve-examples"

HERE = Path(__file__).resolve().parent
DEFAULT_REPOSITORY = HERE / "model_repository"


# --------------------------------------------------------------------------------------------
# helpers
# --------------------------------------------------------------------------------------------


def _finish_model(graph: onnx.GraphProto) -> onnx.ModelProto:
    """Wrap a graph in a model with the pinned opset/IR version and check it."""
    model = helper.make_model(
        graph,
        opset_imports=[helper.make_opsetid("", OPSET)],
        producer_name=PRODUCER,
    )
    model.ir_version = IR_VERSION
    onnx.checker.check_model(model, full_check=True)
    return model


def _write(path: Path, data: bytes | str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    if isinstance(data, str):
        path.write_text(data)
    else:
        path.write_bytes(data)


def _run(model: onnx.ModelProto, feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """Run a model once on CPU in onnxruntime and return its outputs by name."""
    import onnxruntime as ort

    session = ort.InferenceSession(
        model.SerializeToString(), providers=["CPUExecutionProvider"]
    )
    names = [o.name for o in session.get_outputs()]
    return dict(zip(names, session.run(names, feeds)))


# --------------------------------------------------------------------------------------------
# simple: Triton's canonical "simple" model
# --------------------------------------------------------------------------------------------

SIMPLE_CONFIG = """\
name: "simple"
platform: "onnxruntime_onnx"
max_batch_size: 8
input [
  {
    name: "INPUT0"
    data_type: TYPE_INT32
    dims: [ 16 ]
  },
  {
    name: "INPUT1"
    data_type: TYPE_INT32
    dims: [ 16 ]
  }
]
output [
  {
    name: "OUTPUT0"
    data_type: TYPE_INT32
    dims: [ 16 ]
  },
  {
    name: "OUTPUT1"
    data_type: TYPE_INT32
    dims: [ 16 ]
  }
]
"""


def make_simple() -> onnx.ModelProto:
    """Triton's "simple" model: OUTPUT0 = INPUT0 + INPUT1, OUTPUT1 = INPUT0 - INPUT1.

    It exists because Triton's quickstart, its client examples (simple_grpc_infer_client.py,
    simple_http_infer_client.py, ...) and perf_analyzer tutorials all talk to a model with
    exactly these names, types and shapes, so those scripts run against pyserve unchanged.
    Triton ships it as a TensorFlow graph; this is the same contract in ONNX.
    """
    shape = ["batch", 16]
    inputs = [
        helper.make_tensor_value_info("INPUT0", TensorProto.INT32, shape),
        helper.make_tensor_value_info("INPUT1", TensorProto.INT32, shape),
    ]
    outputs = [
        helper.make_tensor_value_info("OUTPUT0", TensorProto.INT32, shape),
        helper.make_tensor_value_info("OUTPUT1", TensorProto.INT32, shape),
    ]
    nodes = [
        helper.make_node("Add", ["INPUT0", "INPUT1"], ["OUTPUT0"], name="add"),
        helper.make_node("Sub", ["INPUT0", "INPUT1"], ["OUTPUT1"], name="sub"),
    ]
    graph = helper.make_graph(nodes, "simple", inputs, outputs)
    return _finish_model(graph)


def check_simple(model: onnx.ModelProto) -> None:
    rng = np.random.default_rng(0)
    for batch in (1, 3, 8):
        a = rng.integers(-(2**20), 2**20, size=(batch, 16), dtype=np.int32)
        b = rng.integers(-(2**20), 2**20, size=(batch, 16), dtype=np.int32)
        out = _run(model, {"INPUT0": a, "INPUT1": b})
        assert out["OUTPUT0"].dtype == np.int32 and out["OUTPUT1"].dtype == np.int32
        assert out["OUTPUT0"].shape == (batch, 16) and out["OUTPUT1"].shape == (batch, 16)
        np.testing.assert_array_equal(out["OUTPUT0"], a + b)
        np.testing.assert_array_equal(out["OUTPUT1"], a - b)


# --------------------------------------------------------------------------------------------
# mnist_cnn: a small, realistic float32 image classifier
# --------------------------------------------------------------------------------------------

MNIST_CNN_CONFIG = """\
name: "mnist_cnn"
platform: "onnxruntime_onnx"
max_batch_size: 32
input [
  {
    name: "image"
    data_type: TYPE_FP32
    dims: [ 1, 28, 28 ]
  }
]
output [
  {
    name: "logits"
    data_type: TYPE_FP32
    dims: [ 10 ]
    label_filename: "labels.txt"
  },
  {
    name: "probabilities"
    data_type: TYPE_FP32
    dims: [ 10 ]
  }
]
dynamic_batching {
  max_queue_delay_microseconds: 500
}
instance_group [
  {
    count: 1
    kind: KIND_CPU
  }
]
"""


def _mnist_cnn_weights() -> dict[str, np.ndarray]:
    """He-initialised (std = sqrt(2 / fan_in)) weights from a fixed seed; zero biases."""
    rng = np.random.default_rng(SEED)

    def he(shape: tuple[int, ...], fan_in: int) -> np.ndarray:
        return (rng.standard_normal(shape) * np.sqrt(2.0 / fan_in)).astype(np.float32)

    return {
        "conv1.weight": he((8, 1, 3, 3), fan_in=1 * 3 * 3),
        "conv1.bias": np.zeros(8, dtype=np.float32),
        "conv2.weight": he((16, 8, 3, 3), fan_in=8 * 3 * 3),
        "conv2.bias": np.zeros(16, dtype=np.float32),
        "fc.weight": he((10, 16 * 7 * 7), fan_in=16 * 7 * 7),  # Gemm with transB=1
        "fc.bias": np.zeros(10, dtype=np.float32),
    }


def make_mnist_cnn() -> onnx.ModelProto:
    """A small CNN for 1x28x28 images: image -> logits (10) and probabilities (softmax).

    It exists to exercise what "simple" cannot: float32 tensors of real image size, a
    multi-dimensional per-item shape, a compute cost that grows with batch size (so dynamic
    batching and per-batch-size statistics are worth looking at), and two outputs that a
    client may request separately. The weights are random (He init, fixed seed), not trained:
    predictions are meaningless, but they are deterministic.

    conv3x3(8) -> relu -> maxpool2 -> conv3x3(16) -> relu -> maxpool2 -> flatten -> gemm(10)
    """
    weights = _mnist_cnn_weights()
    initializers = [numpy_helper.from_array(v, name=k) for k, v in weights.items()]

    conv = dict(kernel_shape=[3, 3], pads=[1, 1, 1, 1], strides=[1, 1])
    pool = dict(kernel_shape=[2, 2], strides=[2, 2])
    nodes = [
        helper.make_node("Conv", ["image", "conv1.weight", "conv1.bias"], ["c1"], name="conv1", **conv),
        helper.make_node("Relu", ["c1"], ["r1"], name="relu1"),
        helper.make_node("MaxPool", ["r1"], ["p1"], name="pool1", **pool),  # 8x14x14
        helper.make_node("Conv", ["p1", "conv2.weight", "conv2.bias"], ["c2"], name="conv2", **conv),
        helper.make_node("Relu", ["c2"], ["r2"], name="relu2"),
        helper.make_node("MaxPool", ["r2"], ["p2"], name="pool2", **pool),  # 16x7x7
        helper.make_node("Flatten", ["p2"], ["flat"], name="flatten", axis=1),  # 784
        helper.make_node("Gemm", ["flat", "fc.weight", "fc.bias"], ["logits"], name="fc", transB=1),
        helper.make_node("Softmax", ["logits"], ["probabilities"], name="softmax", axis=-1),
    ]
    inputs = [helper.make_tensor_value_info("image", TensorProto.FLOAT, ["batch", 1, 28, 28])]
    outputs = [
        helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["batch", 10]),
        helper.make_tensor_value_info("probabilities", TensorProto.FLOAT, ["batch", 10]),
    ]
    graph = helper.make_graph(nodes, "mnist_cnn", inputs, outputs, initializer=initializers)
    return _finish_model(graph)


def _mnist_cnn_reference(image: np.ndarray) -> np.ndarray:
    """The same network in plain numpy (float64), used to check onnxruntime's logits."""
    w = {k: v.astype(np.float64) for k, v in _mnist_cnn_weights().items()}

    def conv3x3(x: np.ndarray, weight: np.ndarray, bias: np.ndarray) -> np.ndarray:
        n, c, h, wd = x.shape
        xp = np.pad(x, ((0, 0), (0, 0), (1, 1), (1, 1)))
        # patches[n, c, i, j, y, x] = xp[n, c, y + i, x + j]
        patches = np.stack(
            [np.stack([xp[:, :, i : i + h, j : j + wd] for j in range(3)], 2) for i in range(3)], 2
        )
        return np.einsum("ncijyx,ocij->noyx", patches, weight) + bias[None, :, None, None]

    def maxpool2(x: np.ndarray) -> np.ndarray:
        n, c, h, wd = x.shape
        return x.reshape(n, c, h // 2, 2, wd // 2, 2).max(axis=(3, 5))

    x = image.astype(np.float64)
    x = maxpool2(np.maximum(conv3x3(x, w["conv1.weight"], w["conv1.bias"]), 0))
    x = maxpool2(np.maximum(conv3x3(x, w["conv2.weight"], w["conv2.bias"]), 0))
    return x.reshape(x.shape[0], -1) @ w["fc.weight"].T + w["fc.bias"]


def check_mnist_cnn(model: onnx.ModelProto) -> None:
    rng = np.random.default_rng(1)
    for batch in (1, 5, 32):
        image = rng.random((batch, 1, 28, 28), dtype=np.float32)
        out = _run(model, {"image": image})
        logits, probs = out["logits"], out["probabilities"]
        assert logits.dtype == np.float32 and logits.shape == (batch, 10)
        assert probs.dtype == np.float32 and probs.shape == (batch, 10)
        np.testing.assert_allclose(logits, _mnist_cnn_reference(image), rtol=1e-4, atol=1e-4)
        np.testing.assert_allclose(probs.sum(axis=1), 1.0, rtol=1e-5)
        np.testing.assert_array_equal(probs.argmax(axis=1), logits.argmax(axis=1))


# --------------------------------------------------------------------------------------------
# main
# --------------------------------------------------------------------------------------------

DIGITS = ["zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine"]

MODELS = [
    # (name, builder, checker, config.pbtxt)
    ("simple", make_simple, check_simple, SIMPLE_CONFIG),
    ("mnist_cnn", make_mnist_cnn, check_mnist_cnn, MNIST_CNN_CONFIG),
]


def main(argv: list[str]) -> int:
    repository = Path(argv[1]) if len(argv) > 1 else DEFAULT_REPOSITORY
    for name, build, check, config in MODELS:
        model = build()
        check(model)
        model_path = repository / name / "1" / "model.onnx"
        _write(model_path, model.SerializeToString())
        _write(repository / name / "config.pbtxt", config)
        if name == "mnist_cnn":  # class names for Triton's classification extension
            _write(repository / name / "labels.txt", "".join(f"{d}\n" for d in DIGITS))
        print(f"wrote {model_path} ({model_path.stat().st_size} bytes) and config.pbtxt")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
