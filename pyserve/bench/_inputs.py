"""The requests a benchmark sends: inputs made from the model's metadata (random or zero
data, or perf_analyzer's --input-data JSON), encoded once for the chosen protocol."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from pyserve.client import Client
from pyserve.client._grpc import serialize_infer
from pyserve.client._http import _model_path, encode_infer as http_encode
from pyserve.client._request import build_request
from pyserve.client._tensors import numpy_dtype


@dataclass(frozen=True)
class Payload:
    """One encoded request: gRPC message bytes, or an HTTP path, body and headers."""
    grpc: bytes | None = None
    http_path: str = ""
    http_body: bytes = b""
    http_headers: tuple = ()


def parse_shapes(items: list[str]) -> dict[str, list[int]]:
    """["NAME:1,2", ...] -> {"NAME": [1, 2]} (perf_analyzer's --shape, no batch dimension)."""
    shapes = {}
    for item in items:
        name, sep, dims = item.rpartition(":")
        if not sep or not name:
            raise ValueError(f"--shape wants NAME:D1[,D2...], got '{item}'")
        shapes[name] = [int(d) for d in dims.split(",") if d]
    return shapes


def make_inputs(client: Client, model: str, version: str, batch_size: int,
                shapes: dict[str, list[int]], input_data: str) -> list[dict[str, np.ndarray]]:
    """One or more input dicts: from a JSON file (each entry of its "data" list), or one dict
    of random or zero tensors shaped from the model's metadata."""
    metadata = client.model_metadata(model, version)
    config = client.model_config(model, version)
    batching = config.max_batch_size > 0
    if input_data not in ("random", "zero"):
        return _from_json(Path(input_data), metadata, batching, batch_size)
    rng = np.random.default_rng(0)
    inputs = {}
    for tensor in metadata.inputs:
        dims = list(tensor.shape[1:] if batching else tensor.shape)
        if tensor.name in shapes:
            dims = shapes[tensor.name]
        if any(d < 0 for d in dims):
            raise ValueError(f"input '{tensor.name}' has a variable shape {tensor.shape}: "
                             f"give it with --shape {tensor.name}:D1,D2...")
        shape = ([batch_size] if batching else []) + dims
        inputs[tensor.name] = _data(tensor.datatype, shape, input_data == "zero", rng)
    return [inputs]


def _data(datatype: str, shape: list[int], zero: bool, rng) -> np.ndarray:
    if datatype == "BYTES":
        value = b"0" if zero else None
        flat = np.empty(int(np.prod(shape)), dtype=np.object_)
        for i in range(flat.size):
            flat[i] = value if zero else rng.integers(0, 10**6).to_bytes(4, "little").hex().encode()
        return flat.reshape(shape)
    dtype = numpy_dtype(datatype)
    if zero:
        return np.zeros(shape, dtype=dtype)
    if datatype == "BOOL":
        return rng.integers(0, 2, shape).astype(bool)
    if dtype.kind in "iu":
        return rng.integers(0, 100, shape).astype(dtype)
    return rng.random(shape).astype(dtype)


def _from_json(path: Path, metadata, batching: bool, batch_size: int) -> list[dict]:
    """perf_analyzer's format: {"data": [{"NAME": [values] | {"content": [...], "shape": [...]}
    | {"b64": "..."}}, ...]}; each entry is one request (repeated batch_size times)."""
    document = json.loads(path.read_text())
    types = {t.name: t for t in metadata.inputs}
    requests = []
    for entry in document["data"]:
        inputs = {}
        for name, value in entry.items():
            tensor = types[name]
            shape = None
            if isinstance(value, dict):
                shape = value.get("shape")
                value = value["content"]
            dtype = numpy_dtype(tensor.datatype)
            array = np.asarray(value, dtype=dtype if tensor.datatype != "BYTES" else np.object_)
            if tensor.datatype == "BYTES":
                array = np.array([v.encode() if isinstance(v, str) else v
                                  for v in array.reshape(-1)], dtype=np.object_)
            dims = shape or [d if d >= 0 else -1 for d in
                             (tensor.shape[1:] if batching else tensor.shape)]
            array = array.reshape(dims)
            if batching:
                array = np.repeat(array[None], batch_size, axis=0)
            inputs[name] = array
        requests.append(inputs)
    return requests


def output_bytes(client: Client, model: str, version: str, batch_size: int,
                 default: int) -> dict[str, int]:
    """Each output's size for a request, from the model's metadata; `default` when the model
    does not fix it (BYTES, variable dims), as perf_analyzer's --output-shared-memory-size."""
    metadata = client.model_metadata(model, version)
    batching = client.model_config(model, version).max_batch_size > 0
    sizes = {}
    for tensor in metadata.outputs:
        dims = tensor.shape[1:] if batching else tensor.shape
        if tensor.datatype == "BYTES" or any(d < 0 for d in dims):
            sizes[tensor.name] = default
        else:
            count = int(np.prod(dims, dtype=np.int64)) * (batch_size if batching else 1)
            sizes[tensor.name] = count * numpy_dtype(tensor.datatype).itemsize
    return sizes


def region_bytes(requests: list[dict[str, np.ndarray]], outputs: dict[str, int]) -> int:
    """Room for every request's numeric inputs and one block per output, 64-byte aligned."""
    arrays = [a.nbytes for r in requests for a in r.values() if not a.dtype.hasobject]
    return sum(n + 64 for n in arrays + list(outputs.values())) + 64


def in_shared_memory(client: Client, region, model: str, version: str,
                     requests: list[dict[str, np.ndarray]], outputs: dict[str, int]
                     ) -> tuple[Payload, ...]:
    """Payloads whose numeric inputs are copies in `region` and whose outputs are written into
    it (perf_analyzer's --shared-memory system): the requests carry references only (BYTES
    inputs stay on the wire). Every request shares the output blocks, as perf_analyzer's do."""
    targets = {name: region.ndarray(max(n, 1), np.uint8) for name, n in outputs.items()}
    payloads = []
    for inputs in requests:
        placed = {}
        for name, array in inputs.items():
            placed[name] = array
            if not array.dtype.hasobject:
                placed[name] = region.ndarray(array.shape, array.dtype)
                placed[name][...] = array
        payloads.append(encode(model, version, placed, targets, client._shm_lookup))
    return tuple(payloads)


def encode(model: str, version: str, inputs: dict[str, np.ndarray], outputs=None,
           shm_lookup=None) -> Payload:
    request = build_request(model, inputs, version=version, outputs=outputs,
                            shm_lookup=shm_lookup)
    body, headers = http_encode(request)
    return Payload(grpc=serialize_infer(request),
                   http_path=_model_path(model, version) + "/infer", http_body=body,
                   http_headers=tuple(headers.items()))
