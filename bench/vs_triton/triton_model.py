"""Triton Python-backend model that serves an ONNX file with onnxruntime (default session options).

This is how a Triton CPU user without Triton's ONNX Runtime backend serves an ONNX model: the
dynamic batcher hands `execute` a list of requests; their inputs are concatenated along the batch
dimension, run in one `InferenceSession.run`, and the outputs are split back per request (what
the ORT backend does natively). bench/vs_triton.py copies this file to `<model>/1/model.py`, next
to `model.onnx`.
"""

import json
import os

import numpy as np
import onnxruntime as ort
import triton_python_backend_utils as pb_utils


class TritonPythonModel:
    def initialize(self, args):
        config = json.loads(args["model_config"])
        path = os.path.join(args["model_repository"], args["model_version"], "model.onnx")
        self.session = ort.InferenceSession(path)
        self.inputs = [i["name"] for i in config["input"]]
        self.outputs = [o["name"] for o in config["output"]]

    def execute(self, requests):
        arrays = [[pb_utils.get_input_tensor_by_name(r, name).as_numpy() for name in self.inputs]
                  for r in requests]
        sizes = [a[0].shape[0] for a in arrays]
        if len(requests) == 1:
            feed = dict(zip(self.inputs, arrays[0]))
        else:
            feed = {name: np.concatenate([a[k] for a in arrays])
                    for k, name in enumerate(self.inputs)}
        results = self.session.run(self.outputs, feed)
        responses, start = [], 0
        for size in sizes:
            tensors = [pb_utils.Tensor(name, result[start:start + size])
                       for name, result in zip(self.outputs, results)]
            responses.append(pb_utils.InferenceResponse(output_tensors=tensors))
            start += size
        return responses
