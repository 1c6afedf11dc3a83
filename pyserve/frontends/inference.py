"""The protocol-independent part of an inference: find the model, check the request, run it,
and pick the outputs to return. Both frontends decode into this and encode what it returns."""

from __future__ import annotations

import base64
import time
from dataclasses import dataclass
from typing import Sequence

import numpy as np

from pyserve.backends.base import RequestInfo
from pyserve.config import parse_config_json
from pyserve.datatypes import wire_name
from pyserve.errors import ErrorCode, ServerError
from pyserve.frontends.metrics import Metrics
from pyserve.frontends.validation import validate_request
from pyserve.lifecycle import ModelManager, ModelVersion
from pyserve.protocol import pb
from pyserve.runner import InputTensor


# Request parameters the server itself acts on; the rest are the model's.
_SERVER_PARAMETERS = {"priority", "timeout", "binary_data_output"}


@dataclass
class OutputTensor:
    name: str
    datatype: str
    array: np.ndarray


async def run_inference(manager: ModelManager, model_name: str, version: str,
                        inputs: Sequence[InputTensor], requested_outputs: Sequence[str],
                        request_id: str = "", parameters: dict | None = None,
                        metrics: Metrics | None = None,
                        classification: dict[str, int] | None = None,
                        ) -> tuple[ModelVersion, list[OutputTensor]]:
    """Outputs in the order requested, or every output of the config in config order.
    `parameters` are the request's (priority and timeout are read here); `classification`
    asks for the top k classes of some outputs instead of their values."""
    model = manager.get(model_name, version)
    parameters = parameters or {}
    start = time.perf_counter()
    ok = False
    try:
        batch_size = validate_request(model.config, inputs, requested_outputs, request_id)
        info = RequestInfo(request_id, {k: v for k, v in parameters.items()
                                        if k not in _SERVER_PARAMETERS}, list(requested_outputs))
        results = await model.runner.infer(
            inputs, batch_size, _unsigned(parameters, "priority"), _unsigned(parameters, "timeout"),
            info)
        ok = True
    finally:
        if metrics is not None:
            metrics.observe(model.name, str(model.version), ok,
                            (time.perf_counter() - start) * 1e6)
    datatypes = {o.name: wire_name(o.data_type) for o in model.config.output}
    names = list(requested_outputs) or [o.name for o in model.config.output]
    missing = [name for name in names if name not in results]
    if missing:
        raise ServerError(f"model '{model.name}' did not produce output(s) {missing}",
                          ErrorCode.INTERNAL)
    outputs = []
    for name in names:
        k = (classification or {}).get(name)
        if k is None:
            outputs.append(OutputTensor(name, datatypes[name], results[name]))
        else:
            outputs.append(OutputTensor(name, "BYTES", classify(
                results[name], k, model.labels.get(name), model.config.max_batch_size > 0)))
    return model, outputs


def classify(array: np.ndarray, k: int, labels: list[str] | None, batched: bool) -> np.ndarray:
    """Triton's classification extension: per batch item, the k largest values as
    "value:index" or "value:index:label" strings, largest first."""
    if isinstance(k, bool) or not isinstance(k, int) or k < 1:
        raise ServerError(f"classification count must be a positive integer, got {k!r}")
    items = array.reshape(array.shape[0] if batched else 1, -1)
    if items.dtype == np.object_:
        raise ServerError("classification is not supported on BYTES outputs")
    rows = []
    for item in items:
        top = np.argsort(-item.astype(np.float64), kind="stable")[:k]
        rows.append([_class_entry(item[i], int(i), labels) for i in top])
    result = np.array(rows, dtype=np.object_)
    return result if batched else result[0]


def _class_entry(value, index: int, labels: list[str] | None) -> bytes:
    text = f"{value:f}" if isinstance(value, np.floating) else str(value)
    entry = f"{text}:{index}"
    if labels is not None and index < len(labels):
        entry += f":{labels[index]}"
    return entry.encode()


def _unsigned(parameters: dict, key: str) -> int:
    value = parameters.get(key, 0)
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        raise ServerError(f"parameter '{key}' must be a non-negative integer, got {value!r}")
    return value


def model_metadata(model: ModelVersion, versions: list[str]) -> dict:
    """ModelMetadata as a dict of the KServe v2 fields: shapes are config dims, with -1 for
    the batch dimension when the model batches."""
    config = model.config
    batch = [-1] if config.max_batch_size > 0 else []
    def tensors(specs):
        return [{"name": s.name, "datatype": wire_name(s.data_type), "shape": batch + list(s.dims)}
                for s in specs]
    return {
        "name": config.name,
        "versions": versions,
        "platform": config.platform or config.backend,
        "inputs": tensors(config.input),
        "outputs": tensors(config.output),
    }


def load_parameters(parameters: dict) -> tuple[pb.ModelConfig | None, dict[str, bytes]]:
    """The load API's parameters: `config` (JSON ModelConfig) and `file:<version>/<path>`
    contents (bytes, or base64 text over HTTP)."""
    config, files = None, {}
    for key, value in parameters.items():
        if key == "config":
            if not isinstance(value, str):
                raise ServerError("Invalid config override: 'config' must be a JSON string")
            config = parse_config_json(value)
        elif key.startswith("file:"):
            if isinstance(value, str):
                try:
                    value = base64.b64decode(value, validate=True)
                except ValueError:
                    raise ServerError(f"load parameter '{key}' is not valid base64") from None
            if not isinstance(value, bytes):
                raise ServerError(f"load parameter '{key}' must hold the file's bytes")
            files[key] = value
        else:
            raise ServerError(f"Unrecognized load parameter '{key}'.")
    return config, files
