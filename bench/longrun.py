"""What the long runs (bench/fuzz.py, bench/soak.py) share: the model repository they serve,
valid requests with known answers for both protocols, the reference that computes a request's
answer from its inputs, and a pyserve process per pair of frontends.

The repository is the example one (`simple`: ONNX INT32 add/sub, `add_sub_python`: Triton's
model.py FP32 add/sub, `mnist_cnn`: ONNX FP32 CNN with labels) plus `identity_bytes`, a model.py
that returns its BYTES input, so that strings travel both ways. Every answer is checked against
the reference: onnxruntime in this process for mnist_cnn, numpy for the others.
"""

from __future__ import annotations

import json
import os
import shutil
import struct
import sys
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tests"))
from conftest import EXAMPLES, ServerProcess, start_server  # noqa: E402

MODELS = ("simple", "add_sub_python", "mnist_cnn", "identity_bytes")
IDENTITY_BYTES_CONFIG = """name: "identity_bytes"
backend: "python"
max_batch_size: 8
input [ { name: "INPUT0" data_type: TYPE_STRING dims: [ -1 ] } ]
output [ { name: "OUTPUT0" data_type: TYPE_STRING dims: [ -1 ] } ]
dynamic_batching { }
instance_group [ { count: 1 kind: KIND_CPU } ]
"""
IDENTITY_BYTES_MODEL = """import triton_python_backend_utils as pb_utils


class TritonPythonModel:
    def execute(self, requests):
        return [pb_utils.InferenceResponse(output_tensors=[pb_utils.Tensor(
            "OUTPUT0", pb_utils.get_input_tensor_by_name(request, "INPUT0").as_numpy())])
            for request in requests]
"""
NUMPY_OF = {"BOOL": np.bool_, "UINT8": np.uint8, "UINT16": np.uint16, "UINT32": np.uint32,
            "UINT64": np.uint64, "INT8": np.int8, "INT16": np.int16, "INT32": np.int32,
            "INT64": np.int64, "FP16": np.float16, "FP32": np.float32, "FP64": np.float64,
            "BYTES": np.object_}


def prepare(prefix: str) -> tuple[Path, Reference]:
    """A fresh copy of the repository in a temporary folder, and the reference for it."""
    repository = write_repository(Path(tempfile.mkdtemp(prefix=prefix)))
    return repository, Reference(repository)


def write_repository(root: Path) -> Path:
    """The examples plus identity_bytes, under root/models."""
    repository = root / "models"
    shutil.copytree(EXAMPLES, repository, ignore=shutil.ignore_patterns("__pycache__"))
    model = repository / "identity_bytes"
    (model / "1").mkdir(parents=True)
    (model / "config.pbtxt").write_text(IDENTITY_BYTES_CONFIG)
    (model / "1" / "model.py").write_text(IDENTITY_BYTES_MODEL)
    return repository


# --- requests and their answers -------------------------------------------------------------

@dataclass
class Case:
    """One valid request: its model, inputs (name -> (datatype, array)) and the answer."""
    model: str
    inputs: dict[str, tuple[str, np.ndarray]]
    expected: dict[str, np.ndarray] = field(default_factory=dict)


class Reference:
    """The answer a request should get, computed from its inputs in this process."""

    def __init__(self, repository: Path) -> None:
        import onnxruntime

        self._mnist = onnxruntime.InferenceSession(
            str(repository / "mnist_cnn" / "1" / "model.onnx"),
            providers=["CPUExecutionProvider"])

    def outputs(self, model: str, inputs: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        if model in ("simple", "add_sub_python"):
            a, b = inputs["INPUT0"], inputs["INPUT1"]
            with np.errstate(over="ignore"):
                return {"OUTPUT0": a + b, "OUTPUT1": a - b}
        if model == "identity_bytes":
            return {"OUTPUT0": inputs["INPUT0"]}
        if model == "mnist_cnn":
            logits, probabilities = self._mnist.run(None, {"image": inputs["image"]})
            return {"logits": logits, "probabilities": probabilities}
        raise KeyError(model)


def make_case(rng: np.random.Generator, reference: Reference, model: str | None = None,
              batch: int | None = None, text: bool = False) -> Case:
    """A valid request with fresh random data, so that a mixed-up answer shows. `text`: BYTES
    elements are ASCII (JSON carries them as strings)."""
    model = model or MODELS[rng.integers(len(MODELS))]
    batch = batch or int(rng.integers(1, 4))
    if model == "simple":
        arrays = {n: rng.integers(-2**31, 2**31, (batch, 16), dtype=np.int64).astype(np.int32)
                  for n in ("INPUT0", "INPUT1")}
        inputs = {n: ("INT32", a) for n, a in arrays.items()}
    elif model == "add_sub_python":
        inputs = {n: ("FP32", rng.standard_normal((batch, 4)).astype(np.float32))
                  for n in ("INPUT0", "INPUT1")}
    elif model == "mnist_cnn":
        inputs = {"image": ("FP32", rng.random((batch, 1, 28, 28), dtype=np.float32))}
    else:
        width = int(rng.integers(1, 5))
        low, high = (32, 127) if text else (0, 256)
        values = [bytes(rng.integers(low, high, int(rng.integers(0, 12)), dtype=np.uint8))
                  for _ in range(batch * width)]
        inputs = {"INPUT0": ("BYTES", np.array(values, dtype=np.object_).reshape(batch, width))}
    expected = reference.outputs(model, {n: a for n, (_, a) in inputs.items()})
    return Case(model, inputs, expected)


def same_answer(expected: dict[str, np.ndarray], got: dict[str, np.ndarray]) -> str | None:
    """None when `got` is the answer; else what differs."""
    if set(got) != set(expected):
        return f"outputs {sorted(got)} instead of {sorted(expected)}"
    for name, want in expected.items():
        have = got[name]
        if have is None or tuple(have.shape) != tuple(want.shape):
            return f"{name}: shape {None if have is None else have.shape} instead of {want.shape}"
        if want.dtype == np.object_:
            equal = [bytes(x) for x in have.ravel()] == [bytes(x) for x in want.ravel()]
        elif want.dtype.kind == "f":
            equal = np.allclose(have, want, rtol=1e-4, atol=1e-5, equal_nan=True)
        else:
            equal = np.array_equal(have, want)
        if not equal:
            return f"{name}: wrong values"
    return None


def serialize_bytes(array: np.ndarray) -> bytes:
    return b"".join(struct.pack("<I", len(x)) + bytes(x) for x in array.ravel())


def raw_bytes(datatype: str, array: np.ndarray) -> bytes:
    if datatype == "BYTES":
        return serialize_bytes(array)
    return np.ascontiguousarray(array, dtype=NUMPY_OF[datatype]).tobytes()


def array_from_raw(datatype: str, shape: list[int], raw: bytes) -> np.ndarray:
    """Triton's raw tensor bytes as an array; raises ValueError where they do not fit."""
    count = int(np.prod(shape, dtype=np.int64)) if shape else 1
    if any(d < 0 for d in shape) or count > 1 << 24:
        raise ValueError("shape")
    if datatype == "BYTES":
        values, offset = [], 0
        while offset < len(raw):
            if offset + 4 > len(raw):
                raise ValueError("truncated BYTES element")
            (length,) = struct.unpack_from("<I", raw, offset)
            if offset + 4 + length > len(raw):
                raise ValueError("truncated BYTES element")
            values.append(raw[offset + 4:offset + 4 + length])
            offset += 4 + length
        if len(values) != count:
            raise ValueError("BYTES element count")
        return np.array(values, dtype=np.object_).reshape(shape)
    dtype = np.dtype(NUMPY_OF[datatype])
    if len(raw) != count * dtype.itemsize:
        raise ValueError("byte size")
    return np.frombuffer(raw, dtype=dtype).reshape(shape)


# --- gRPC ------------------------------------------------------------------------------------

def grpc_request(case: Case, request_id: str, typed: bool = False):
    """ModelInferRequest for the case: raw_input_contents, or typed `contents` when asked."""
    from tritonclient.grpc import service_pb2

    request = service_pb2.ModelInferRequest(model_name=case.model, id=request_id)
    for name, (datatype, array) in case.inputs.items():
        tensor = request.inputs.add(name=name, datatype=datatype, shape=list(array.shape))
        if not typed:
            request.raw_input_contents.append(raw_bytes(datatype, array))
        elif datatype == "BYTES":
            tensor.contents.bytes_contents.extend(bytes(x) for x in array.ravel())
        elif datatype == "INT32":
            tensor.contents.int_contents.extend(int(x) for x in array.ravel())
        else:
            tensor.contents.fp32_contents.extend(float(x) for x in array.ravel())
    return request


def grpc_outputs(response) -> dict[str, np.ndarray]:
    from tritonclient.grpc import InferResult

    result = InferResult(response)
    return {o.name: result.as_numpy(o.name) for o in response.outputs}


# --- HTTP ------------------------------------------------------------------------------------

def http_body(case: Case, request_id: str, binary: bool) -> tuple[bytes, int | None]:
    """An infer body: JSON data, or the binary tensor extension (JSON header, then the tensors;
    the header's length goes in Inference-Header-Content-Length)."""
    inputs, tail = [], []
    for name, (datatype, array) in case.inputs.items():
        entry = {"name": name, "datatype": datatype, "shape": list(array.shape)}
        if binary:
            data = raw_bytes(datatype, array)
            entry["parameters"] = {"binary_data_size": len(data)}
            tail.append(data)
        elif datatype == "BYTES":
            entry["data"] = [bytes(x).decode() for x in array.ravel()]
        else:
            entry["data"] = array.ravel().tolist()
        inputs.append(entry)
    header = {"id": request_id, "inputs": inputs}
    if binary:
        header["parameters"] = {"binary_data_output": True}
    encoded = json.dumps(header).encode()
    if not binary:
        return encoded, None
    return encoded + b"".join(tail), len(encoded)


def http_outputs(body: bytes, header_length: int | None) -> dict[str, np.ndarray]:
    from tritonclient.http import InferResult

    result = InferResult.from_response_body(body, header_length=header_length)
    outputs = {}
    for output in result.get_response()["outputs"]:
        array = result.as_numpy(output["name"])
        if array is not None and array.dtype == np.object_:  # JSON strings: compare as bytes
            array = np.array([x.encode() if isinstance(x, str) else bytes(x)
                              for x in array.ravel()], dtype=np.object_).reshape(array.shape)
        outputs[output["name"]] = array
    return outputs


# --- the server ------------------------------------------------------------------------------

def start(repository: Path, log_path: Path, frontend: str, *extra: str) -> ServerProcess:
    """pyserve on 127.0.0.1 with the native or the Python frontends for both protocols."""
    return start_server([repository], log_path, "--grpc-frontend", frontend,
                        "--http-frontend", frontend, *extra, timeout=120)


def rss_bytes(pid: int) -> int:
    with open(f"/proc/{pid}/status") as status:
        for line in status:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
    raise ProcessLookupError(pid)


def thread_count(pid: int) -> int:
    return len(os.listdir(f"/proc/{pid}/task"))
