"""The protocol-independent part of an inference: find the model, check the request, run it,
and pick the outputs to return. Both frontends decode into this and encode what it returns."""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Sequence

import numpy as np

from pyserve.datatypes import wire_name
from pyserve.frontends.metrics import Metrics
from pyserve.frontends.validation import validate_request
from pyserve.lifecycle import ModelManager, ModelVersion
from pyserve.runner import InputTensor


@dataclass
class OutputTensor:
    name: str
    datatype: str
    array: np.ndarray


async def run_inference(manager: ModelManager, model_name: str, version: str,
                        inputs: Sequence[InputTensor], requested_outputs: Sequence[str],
                        request_id: str = "", metrics: Metrics | None = None,
                        ) -> tuple[ModelVersion, list[OutputTensor]]:
    """Outputs in the order requested, or every output of the config in config order."""
    model = manager.get(model_name, version)
    start = time.perf_counter()
    ok = False
    try:
        validate_request(model.config, inputs, requested_outputs, request_id)
        results = await model.runner.infer(inputs)
        ok = True
    finally:
        if metrics is not None:
            metrics.observe(model.name, str(model.version), ok,
                            (time.perf_counter() - start) * 1e6)
    datatypes = {o.name: wire_name(o.data_type) for o in model.config.output}
    names = list(requested_outputs) or [o.name for o in model.config.output]
    return model, [OutputTensor(name, datatypes[name], results[name]) for name in names]


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
