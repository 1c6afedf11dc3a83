"""NVIDIA's example clients for stateful models (tests/fixtures/triton_client_examples, unchanged)
against `pyserve serve`, on both frontends: gRPC sync, stream and asyncio stream, and HTTP, with
integer and string correlation IDs, on the models they expect. simple_sequence and
simple_dyna_sequence are ONNX models made here (ONNX Runtime computes them, fed the control
inputs the core fills in); simple_string_dyna_sequence, a Python model, keeps its sums."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import onnx
import pytest
from onnx import TensorProto, helper

from conftest import FRONTENDS, OUTSIDE, native_frontends_built, start_server, write_python_model

EXAMPLES = Path(__file__).resolve().parent.parent / "fixtures" / "triton_client_examples"


def _flag(name: str, kind: str) -> str:
    return f'{{ name: "{name}" control [ {{ kind: {kind} int32_false_true: [ 0, 1 ] }} ] }}'


_START = _flag("START", "CONTROL_SEQUENCE_START")
_END = _flag("END", "CONTROL_SEQUENCE_END")
_READY = _flag("READY", "CONTROL_SEQUENCE_READY")
_IO = """input [ { name: "INPUT" data_type: TYPE_INT32 dims: [ 1 ] } ]
output [ { name: "OUTPUT" data_type: TYPE_INT32 dims: [ 1 ] } ]
"""

# What the examples' README models compute: OUTPUT = INPUT + START (the first request adds 1);
# the dynamic one also adds the correlation ID at the END. READY false rows compute 0.
SIMPLE_SEQUENCE = f"""name: "simple_sequence"
platform: "onnxruntime_onnx"
max_batch_size: 8
sequence_batching {{ control_input [ {_START}, {_READY} ] }}
{_IO}instance_group [ {{ kind: KIND_CPU }} ]
"""


def _dyna(corrid_type: str) -> str:
    return f"""sequence_batching {{
  max_sequence_idle_microseconds: 10000000
  oldest {{ max_candidate_sequences: 1024 max_queue_delay_microseconds: 10000 }}
  control_input [ {_START}, {_END}, {_READY},
    {{ name: "CORRID" control [ {{ kind: CONTROL_SEQUENCE_CORRID data_type: {corrid_type} }} ] }}
  ]
}}
{_IO}instance_group [ {{ count: 2 kind: KIND_CPU }} ]
"""


SIMPLE_DYNA_SEQUENCE = ('name: "simple_dyna_sequence"\nplatform: "onnxruntime_onnx"\n'
                        "max_batch_size: 8\n" + _dyna("TYPE_UINT64"))

# The string-ID dynamic model: sums INPUT over the sequence, adding the ID (a number in text)
# to the last answer.
STRING_DYNA_MODEL = """import numpy as np
import triton_python_backend_utils as pb_utils


class TritonPythonModel:
    def initialize(self, args):
        self.sums = {}

    def execute(self, requests):
        responses = []
        for request in requests:
            def get(name):
                return pb_utils.get_input_tensor_by_name(request, name).as_numpy().reshape(-1)[0]
            corrid = get("CORRID").decode()
            output = 0
            if get("READY"):
                self.sums[corrid] = (0 if get("START") else self.sums[corrid]) + int(get("INPUT"))
                output = self.sums[corrid]
                if get("END"):
                    output += int(corrid)
                    del self.sums[corrid]
            responses.append(pb_utils.InferenceResponse(
                [pb_utils.Tensor("OUTPUT", np.array([[output]], dtype=np.int32))]))
        return responses
"""


def _model(dyna: bool) -> onnx.ModelProto:
    def int32(name):
        return helper.make_tensor_value_info(name, TensorProto.INT32, ["batch", 1])
    inputs = [int32("INPUT"), int32("START"), int32("READY")]
    nodes = [helper.make_node("Add", ["INPUT", "START"], ["sum"])]
    if dyna:
        inputs += [int32("END"), helper.make_tensor_value_info("CORRID", TensorProto.UINT64,
                                                               ["batch", 1])]
        nodes += [helper.make_node("Cast", ["CORRID"], ["corrid"], to=TensorProto.INT32),
                  helper.make_node("Mul", ["END", "corrid"], ["last"]),
                  helper.make_node("Add", ["sum", "last"], ["total"])]
    nodes.append(helper.make_node("Mul", ["total" if dyna else "sum", "READY"], ["OUTPUT"]))
    graph = helper.make_graph(nodes, "sequence", inputs, [int32("OUTPUT")])
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])


@pytest.fixture(scope="module", params=FRONTENDS)
def server(request, tmp_path_factory):
    if request.param == "native" and not native_frontends_built():
        pytest.skip("pyserve was built without the native frontends")
    repository = tmp_path_factory.mktemp("sequence_examples")
    for name, config, dyna in (("simple_sequence", SIMPLE_SEQUENCE, False),
                               ("simple_dyna_sequence", SIMPLE_DYNA_SEQUENCE, True)):
        (repository / name / "1").mkdir(parents=True)
        onnx.save(_model(dyna), repository / name / "1" / "model.onnx")
        (repository / name / "config.pbtxt").write_text(config)
    write_python_model(repository, "simple_string_dyna_sequence",
                       _dyna("TYPE_STRING"), STRING_DYNA_MODEL, max_batch_size=8)
    server = start_server([repository], tmp_path_factory.mktemp("logs") / "examples.log",
                          "--grpc-frontend", request.param, "--http-frontend", request.param)
    yield server
    server.stop()


@pytest.mark.parametrize("dyna", [False, True], ids=["direct", "dyna"])
@pytest.mark.parametrize("script", sorted(p.name for p in EXAMPLES.glob("*.py")))
def test_example_client_passes(server, script, dyna):
    url = server.http_url if "_http_" in script else server.grpc_url
    run = subprocess.run([sys.executable, str(EXAMPLES / script), "-u", url]
                         + (["-d"] if dyna else []),
                         capture_output=True, text=True, timeout=120, cwd=OUTSIDE)
    assert run.returncode == 0, run.stdout + run.stderr
    assert "PASS" in run.stdout
