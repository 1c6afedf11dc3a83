"""Implicit state (sequence_batching.state) against real servers, tritonclient over gRPC and
HTTP on the native and the Python frontends. The models are accumulators made here: an ONNX
graph and a TorchScript module (OUTPUT = INPUT + state, the new state the same) and a Python
model doing the same through pb_utils; the core keeps each sequence's state between requests.
"""

from __future__ import annotations

import queue
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest

from conftest import (FRONTENDS, batch_counts, native_frontends_built, settled_statistics,
                      start_server, write_python_model)

pytest.importorskip("tritonclient.grpc")
onnx = pytest.importorskip("onnx")
torch = pytest.importorskip("torch")
import tritonclient.grpc as grpcclient  # noqa: E402
import tritonclient.http as httpclient  # noqa: E402
from onnx import TensorProto, helper  # noqa: E402
from tritonclient.utils import InferenceServerException  # noqa: E402

PYTHON_ACCUMULATOR = """import numpy as np
import triton_python_backend_utils as pb_utils


class TritonPythonModel:
    def execute(self, requests):
        responses = []
        for request in requests:
            value = pb_utils.get_input_tensor_by_name(request, "INPUT").as_numpy()
            state = pb_utils.get_input_tensor_by_name(request, "INPUT_STATE").as_numpy()
            total = value + state
            responses.append(pb_utils.InferenceResponse([
                pb_utils.Tensor("OUTPUT", total), pb_utils.Tensor("OUTPUT_STATE", total)]))
        return responses
"""

# Decoupled: each request is answered from a thread of its own after execute has returned,
# with what it saw, then with the sum, then the final flag alone. Both responses carry a state
# output: the last one sent before the final is the sequence's next state.
DECOUPLED_ACCUMULATOR = """import threading

import numpy as np
import triton_python_backend_utils as pb_utils


class TritonPythonModel:
    def execute(self, requests):
        returned = threading.Event()
        for request in requests:
            value = pb_utils.get_input_tensor_by_name(request, "INPUT").as_numpy()
            state = pb_utils.get_input_tensor_by_name(request, "INPUT_STATE").as_numpy()
            threading.Thread(target=self.answer, args=(request.get_response_sender(), value,
                                                       state, returned)).start()
        returned.set()
        return None

    def answer(self, sender, value, state, returned):
        returned.wait()
        sender.send(pb_utils.InferenceResponse([pb_utils.Tensor("OUTPUT", state),
                                                pb_utils.Tensor("OUTPUT_STATE", state - 1000)]))
        total = value + state
        sender.send(pb_utils.InferenceResponse([pb_utils.Tensor("OUTPUT", total),
                                                pb_utils.Tensor("OUTPUT_STATE", total)]))
        sender.send(flags=pb_utils.TRITONSERVER_RESPONSE_COMPLETE_FINAL)
"""


def state(input_name="INPUT_STATE", output_name="OUTPUT_STATE", initial="") -> str:
    return (f'state [ {{ input_name: "{input_name}" output_name: "{output_name}" '
            f'data_type: TYPE_INT32 dims: [ 1 ] {initial} }} ]')


ZERO = 'initial_state { data_type: TYPE_INT32 dims: [ 1 ] zero_data: true name: "zero" }'
FROM_FILE = ('initial_state { data_type: TYPE_INT32 dims: [ 1 ] data_file: "hundred" '
             'name: "hundred" }')


def config(name: str, backend: str, max_batch: int, sequence: str, inputs="INPUT",
           outputs=("OUTPUT",)) -> str:
    tensors = "".join(f'output {{ name: "{o}" data_type: TYPE_INT32 dims: [ 1 ] }}\n'
                      for o in outputs)
    return (f'name: "{name}"\nbackend: "{backend}"\nmax_batch_size: {max_batch}\n'
            f'input {{ name: "{inputs}" data_type: TYPE_INT32 dims: [ 1 ] }}\n{tensors}'
            f'sequence_batching {{\n  {sequence}\n}}\n'
            'instance_group [ { kind: KIND_CPU count: 1 } ]\n')


def save_onnx(repository, name: str, nodes: list, inputs: list, outputs: list):
    graph = helper.make_graph(nodes, name, inputs, outputs)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])
    model.ir_version = 8
    (repository / name / "1").mkdir(parents=True)
    onnx.save(model, str(repository / name / "1" / "model.onnx"))


def write_onnx(repository, name: str, max_batch: int, sequence: str, outputs=("OUTPUT",),
               state_input="INPUT_STATE"):
    dims = ["batch", 1] if max_batch else [1]
    info = [helper.make_tensor_value_info(n, TensorProto.INT32, dims)
            for n in ("INPUT", state_input, "OUTPUT", "OUTPUT_STATE")]
    save_onnx(repository, name,
              [helper.make_node("Add", ["INPUT", state_input], ["OUTPUT"]),
               helper.make_node("Identity", ["OUTPUT"], ["OUTPUT_STATE"])], info[:2], info[2:])
    (repository / name / "config.pbtxt").write_text(
        config(name, "onnxruntime", max_batch, sequence, outputs=outputs))


def write_onnx_history(repository, name: str = "onnx_history"):
    """A state of variable size: OUTPUT_STATE = INPUT_STATE with INPUT appended, answered as
    OUTPUT (no batching, so that sequences of different lengths never share a batch)."""
    info = [helper.make_tensor_value_info(n, TensorProto.INT32, [d])
            for n, d in (("INPUT", 1), ("INPUT_STATE", "n"), ("OUTPUT", "m"),
                         ("OUTPUT_STATE", "m"))]
    save_onnx(repository, name,
              [helper.make_node("Concat", ["INPUT_STATE", "INPUT"], ["OUTPUT"], axis=0),
               helper.make_node("Identity", ["OUTPUT"], ["OUTPUT_STATE"])], info[:2], info[2:])
    (repository / name / "config.pbtxt").write_text(
        config(name, "onnxruntime", 0, 'state [ { input_name: "INPUT_STATE" output_name: '
               '"OUTPUT_STATE" data_type: TYPE_INT32 dims: [ -1 ] } ]')
        .replace('output { name: "OUTPUT" data_type: TYPE_INT32 dims: [ 1 ] }',
                 'output { name: "OUTPUT" data_type: TYPE_INT32 dims: [ -1 ] }'))


class TorchAccumulator(torch.nn.Module):
    def forward(self, value, previous):
        total = value + previous
        return total, total


class TorchStartAccumulator(torch.nn.Module):
    """Reads the START control (an argument the core adds too) and ignores the state there."""

    def forward(self, value, previous, start):
        total = value + previous * (1 - start)
        return total, total


def write_torch(repository, name: str, max_batch: int, sequence: str, inputs="INPUT__0",
                outputs=("OUTPUT__0",), module=TorchAccumulator):
    (repository / name / "1").mkdir(parents=True)
    torch.jit.script(module()).save(str(repository / name / "1" / "model.pt"))
    (repository / name / "config.pbtxt").write_text(
        config(name, "pytorch", max_batch, sequence, inputs=inputs, outputs=outputs))


def write_models(repository):
    write_onnx(repository, "onnx_acc", 4, state())  # no initial_state: zeros
    write_onnx(repository, "onnx_file", 0, state(initial=FROM_FILE))
    (repository / "onnx_file" / "initial_state").mkdir()
    (repository / "onnx_file" / "initial_state" / "hundred").write_bytes(
        np.array([100], np.int32).tobytes())
    write_onnx(repository, "onnx_visible", 4, state(initial=ZERO),
               outputs=("OUTPUT", "OUTPUT_STATE"))
    # A batch forms only when all four slots have a request: sequences share every batch.
    write_onnx(repository, "onnx_full_batches", 4,
               "direct { max_queue_delay_microseconds: 10000000 minimum_slot_utilization: 1.0 }"
               f"\n  {state()}")
    write_onnx_history(repository)
    write_torch(repository, "torch_acc", 4, state("INPUT_STATE__1", "OUTPUT_STATE__1"))
    write_torch(repository, "torch_start", 4,
                'control_input [ { name: "START__2" control [ { kind: CONTROL_SEQUENCE_START '
                'int32_false_true: [ 0, 1 ] } ] } ]\n  '
                + state("INPUT_STATE__1", "OUTPUT_STATE__1", FROM_FILE),
                module=TorchStartAccumulator)
    (repository / "torch_start" / "initial_state").mkdir()
    (repository / "torch_start" / "initial_state" / "hundred").write_bytes(
        np.array([100], np.int32).tobytes())
    write_python_model(repository, "python_acc",
                       'input { name: "INPUT" data_type: TYPE_INT32 dims: [ 1 ] }\n'
                       'output { name: "OUTPUT" data_type: TYPE_INT32 dims: [ 1 ] }\n'
                       f'sequence_batching {{\n  oldest {{ max_candidate_sequences: 4 }}\n'
                       f'  {state(initial=ZERO)}\n}}\n'
                       'instance_group [ { kind: KIND_CPU count: 1 } ]\n',
                       PYTHON_ACCUMULATOR, max_batch_size=4)
    write_python_model(repository, "python_decoupled_acc",
                       'input { name: "INPUT" data_type: TYPE_INT32 dims: [ 1 ] }\n'
                       'output { name: "OUTPUT" data_type: TYPE_INT32 dims: [ 1 ] }\n'
                       f'sequence_batching {{\n  oldest {{ max_candidate_sequences: 4 }}\n'
                       f'  {state(initial=ZERO)}\n}}\n'
                       'model_transaction_policy { decoupled: true }\n'
                       'instance_group [ { kind: KIND_CPU count: 1 } ]\n',
                       DECOUPLED_ACCUMULATOR, max_batch_size=4)


@pytest.fixture(scope="module", params=FRONTENDS)
def server(request, tmp_path_factory):
    if request.param == "native" and not native_frontends_built():
        pytest.skip("pyserve was built without the native frontends")
    repository = tmp_path_factory.mktemp("state_models")
    write_models(repository)
    server = start_server([repository], tmp_path_factory.mktemp("logs") / "state.log",
                          "--grpc-frontend", request.param, "--http-frontend", request.param)
    yield server
    server.stop()


def connect(server, protocol: str):
    if protocol == "grpc":
        return grpcclient, grpcclient.InferenceServerClient(server.grpc_url)
    return httpclient, httpclient.InferenceServerClient(server.http_url)


def infer(module, client, model, value, sequence_id, start=False, end=False, outputs=None):
    batching = model not in ("onnx_file", "onnx_history")
    array = np.array([[value]] if batching else [value], dtype=np.int32)
    name = "INPUT__0" if model.startswith("torch") else "INPUT"
    tensor = module.InferInput(name, list(array.shape), "INT32")
    tensor.set_data_from_numpy(array)
    requested = [module.InferRequestedOutput(o) for o in outputs] if outputs else None
    return client.infer(model, [tensor], outputs=requested, sequence_id=sequence_id,
                        sequence_start=start, sequence_end=end)


def output(result, model) -> int:
    return int(result.as_numpy("OUTPUT__0" if model.startswith("torch") else "OUTPUT")
               .reshape(-1)[0])


MODELS = ["onnx_acc", "torch_acc", "torch_start", "python_acc"]


@pytest.mark.parametrize("model", MODELS)
@pytest.mark.parametrize("protocol", ["grpc", "http"])
def test_a_sequence_gets_a_running_sum(server, protocol, model):
    module, client = connect(server, protocol)
    with client:
        values, sums = [3, 4, 5, 6], []
        for i, value in enumerate(values):
            result = infer(module, client, model, value, 11, start=i == 0,
                           end=i == len(values) - 1)
            sums.append(output(result, model))
        assert sums == [3, 7, 12, 18]
        assert result.as_numpy("OUTPUT_STATE") is None  # state outputs stay in the server


@pytest.mark.parametrize("model", MODELS)
@pytest.mark.parametrize("protocol", ["grpc", "http"])
def test_interleaved_sequences_keep_separate_state(server, protocol, model):
    module, client = connect(server, protocol)
    with client:
        ids = (21, 22)
        totals = {}
        for step in range(3):
            for k, sequence_id in enumerate(ids):
                value = (k + 1) * 10 + step
                totals[sequence_id] = totals.get(sequence_id, 0) + value
                result = infer(module, client, model, value, sequence_id, start=step == 0,
                               end=step == 2)
                assert output(result, model) == totals[sequence_id]


@pytest.mark.parametrize("protocol", ["grpc", "http"])
def test_a_new_start_resets_to_the_initial_state(server, protocol):
    module, client = connect(server, protocol)
    with client:
        for model, initial in (("onnx_acc", 0), ("onnx_file", 100), ("python_acc", 0)):
            assert output(infer(module, client, model, 5, 31, start=True), model) == initial + 5
            assert output(infer(module, client, model, 1, 31), model) == initial + 6
            # START again before the END: Triton ends the old sequence and starts anew.
            assert output(infer(module, client, model, 2, 31, start=True), model) == initial + 2
            assert output(infer(module, client, model, 2, 31, end=True), model) == initial + 4


@pytest.mark.parametrize("protocol", ["grpc", "http"])
def test_a_state_listed_as_output_may_be_requested(server, protocol):
    module, client = connect(server, protocol)
    with client:
        infer(module, client, "onnx_visible", 4, 41, start=True, outputs=["OUTPUT"])
        result = infer(module, client, "onnx_visible", 5, 41, end=True,
                       outputs=["OUTPUT_STATE", "OUTPUT"])
        assert int(result.as_numpy("OUTPUT_STATE").reshape(-1)[0]) == 9
        with pytest.raises(InferenceServerException) as error:
            infer(module, client, "onnx_acc", 1, 42, start=True, end=True,
                  outputs=["OUTPUT_STATE"])
        assert "unexpected inference output 'OUTPUT_STATE' for model" in str(error.value)


@pytest.mark.parametrize("protocol", ["grpc", "http"])
def test_sequences_batched_together_keep_their_own_rows(server, protocol):
    module, client = connect(server, protocol)
    with client:
        before = batch_counts(client.get_inference_statistics("onnx_full_batches")
                              .model_stats[0]) if protocol == "grpc" else {}
    ids = [51, 52, 53, 54]

    def run(k: int) -> list[int]:
        module, client = connect(server, protocol)
        with client:
            return [output(infer(module, client, "onnx_full_batches", (k + 1) * 100 + step,
                                 ids[k], start=step == 0, end=step == 2), "onnx")
                    for step in range(3)]

    with ThreadPoolExecutor(len(ids)) as pool:
        sums = list(pool.map(run, range(len(ids))))
    assert sums == [[v, 2 * v + 1, 3 * v + 3] for v in (100, 200, 300, 400)]
    if protocol == "grpc":
        with grpcclient.InferenceServerClient(server.grpc_url) as client:
            stats = settled_statistics(client, "onnx_full_batches", 12)
            after = batch_counts(stats)
        assert after.get(4, 0) - before.get(4, 0) == 3  # three batches of four sequences


@pytest.mark.parametrize("protocol", ["grpc", "http"])
def test_a_variable_size_state_takes_the_shape_the_model_gave_it(server, protocol):
    module, client = connect(server, protocol)
    with client:
        history = [infer(module, client, "onnx_history", v, 61, start=v == 1, end=v == 3)
                   .as_numpy("OUTPUT").tolist() for v in (1, 2, 3)]
        # The first state is one zero (a variable dimension starts at 1, as in Triton).
        assert history == [[0, 1], [0, 1, 2], [0, 1, 2, 3]]


def test_a_decoupled_model_sends_the_state_its_sequence_goes_on_with(server):
    """Each request's next state is the last state output its responses carried before the
    final flag, sent after execute returned: a request queued meanwhile waits for it."""
    results: queue.Queue = queue.Queue()
    sequences = {71: [3, 4, 5], 72: [10, 20]}
    with grpcclient.InferenceServerClient(server.grpc_url) as client:
        client.start_stream(lambda result, error: results.put((result, error)))
        for step in range(3):  # all sent at once, the two sequences interleaved
            for sequence_id, values in sequences.items():
                if step < len(values):
                    tensor = grpcclient.InferInput("INPUT", [1, 1], "INT32")
                    tensor.set_data_from_numpy(np.array([[values[step]]], np.int32))
                    client.async_stream_infer(
                        "python_decoupled_acc", [tensor], request_id=f"{sequence_id}/{step}",
                        sequence_id=sequence_id, sequence_start=step == 0,
                        sequence_end=step == len(values) - 1)
        answers: dict[str, list[int]] = {}
        for _ in range(2 * 5):
            result, error = results.get(timeout=30)
            assert error is None, error
            answers.setdefault(result.get_response().id, []).append(output(result, "python"))
        client.stop_stream()
    # Per request: the state it saw, then its sum.
    assert answers == {"71/0": [0, 3], "71/1": [3, 7], "71/2": [7, 12],
                       "72/0": [0, 10], "72/1": [10, 30]}


# --- configurations Triton refuses ----------------------------------------------------------

BAD = {
    "two_initial": (state(initial=ZERO + " " + ZERO),
                    "initial_state field for state input 'INPUT_STATE' must contain exactly one "
                    "or zero element. Found '2' elements."),
    "initial_type": (state(initial=ZERO.replace("data_type: TYPE_INT32", "data_type: TYPE_FP32")),
                     "The data type used for 'initial_state' field of state 'INPUT_STATE' does "
                     "not match the state data type."),
    "initial_name": (state(initial=ZERO.replace(' name: "zero"', "")),
                     "Field 'name' must be set when using initial_state for state input "
                     "'INPUT_STATE'."),
    "initial_rank": (state(initial=ZERO.replace("dims: [ 1 ]", "dims: [ 1, 1 ]")),
                     "Number of dimensions in 'initial_state' doesn't match the size of 'state' "
                     "dimensions for state input 'INPUT_STATE'. 2 != 1"),
    "initial_dim": (state(initial=ZERO.replace("dims: [ 1 ]", "dims: [ 2 ]")),
                    "'initial_state' dim for input name 'INPUT_STATE' doesn't match 'state' dim "
                    "description. 2 != 1"),
    "initial_variable": (state(initial=ZERO.replace("dims: [ 1 ]", "dims: [ -1 ]")),
                         "'initial_state' field for state input name 'INPUT_STATE' contains "
                         "variable dimensions."),
    "initial_no_data": (state(initial=ZERO.replace("zero_data: true ", "")),
                        "initial_state setting expects state'INPUT_STATE' to have state_data set"),
    "short_file": (state(initial=FROM_FILE),
                   "initial_state setting expects 4 bytes, but the data provided from hundredonly "
                   "has 2 bytes."),
    "huge": (state().replace("dims: [ 1 ]", "dims: [ 1099511627776 ]"),
             "state 'INPUT_STATE' of huge is larger than 2147483648 bytes"),
    "negative_dim": (state().replace("dims: [ 1 ]", "dims: [ -2 ]"),
                     "state 'INPUT_STATE' of negative_dim has a dimension below -1"),
    "growable": (state(initial="use_growable_memory: true"),
                 "In order to 'use_growable_memory', you must also enable 'use_single_buffer' "
                 "for state input name 'INPUT_STATE'."),
    "growable_cpu": (state(initial="use_same_buffer_for_input_output: true "
                                   "use_growable_memory: true"),
                     "'use_growable_memory' can only work with KIND_GPU model instances right "
                     "now. Please either change the instance type to KIND_GPU or set "
                     "'use_growable_memory' to false for state input 'INPUT_STATE'."),
}


# Refused by the backends when they load the model.
BAD_MODELS = {
    "torch_unnamed_inputs": "PyTorch model 'torch_unnamed_inputs' is using sequence batching "
                            "with state but not all inputs and outputs follow the "
                            "<name>__<index> naming convention. ",
    "torch_unnamed_state": "PyTorch model 'torch_unnamed_state' is using sequence batching with "
                           "state but state 'INPUT_STATE' does not follow the <name>__<index> "
                           "naming convention. ",
    "onnx_no_state_input": "model 'onnx_no_state_input': configuration expects state inputs "
                           "['INPUT_STATE'] that the ONNX model does not have",
}


@pytest.fixture(scope="module", params=FRONTENDS)
def explicit_server(request, tmp_path_factory):
    if request.param == "native" and not native_frontends_built():
        pytest.skip("pyserve was built without the native frontends")
    repository = tmp_path_factory.mktemp("bad_state_models")
    for name, (sequence, _) in BAD.items():
        write_onnx(repository, name, 4, sequence)
    write_torch(repository, "torch_unnamed_inputs", 4, state("INPUT_STATE__1", "OUTPUT_STATE__1"),
                inputs="INPUT", outputs=("OUTPUT",))
    write_torch(repository, "torch_unnamed_state", 4, state())
    write_onnx(repository, "onnx_no_state_input", 4, state(), state_input="PREVIOUS")
    (repository / "short_file" / "initial_state").mkdir()
    (repository / "short_file" / "initial_state" / "hundred").write_bytes(b"\0\0")
    server = start_server([repository], tmp_path_factory.mktemp("logs") / "bad.log",
                          "--model-control-mode", "explicit",
                          "--grpc-frontend", request.param, "--http-frontend", request.param)
    yield server
    server.stop()


@pytest.mark.parametrize("name", sorted(BAD))
@pytest.mark.parametrize("protocol", ["grpc", "http"])
def test_state_configs_triton_refuses(explicit_server, protocol, name):
    _, client = connect(explicit_server, protocol)
    with client:
        with pytest.raises(InferenceServerException) as error:
            client.load_model(name)
        assert BAD[name][1] in str(error.value)
        assert not client.is_model_ready(name)


@pytest.mark.parametrize("name", sorted(BAD_MODELS))
def test_backends_refuse_state_they_cannot_serve(explicit_server, name):
    _, client = connect(explicit_server, "grpc")
    with client:
        with pytest.raises(InferenceServerException) as error:
            client.load_model(name)
        assert BAD_MODELS[name] in str(error.value)
