"""The Python backend: Triton model.py files run unchanged, in-process, against real clients.

Two servers share one repository builder: `server` serves every model as requests arrive, and
`held` runs with TRITONSERVER_DELAY_SCHEDULER=3 so that each model's first three requests
form one batch, which shows how a batch is split back into per-request InferenceRequests.
"""

from __future__ import annotations

import json
import textwrap
from pathlib import Path

import numpy as np
import pytest
import tritonclient.grpc as grpcclient
import tritonclient.http as httpclient
from tritonclient.utils import InferenceServerException

from conftest import (EXAMPLES, FRONTENDS, batch_counts, native_frontends_built, send_concurrently,
                      settled_statistics, start_server, tensor)

HOLD = {"TRITONSERVER_DELAY_SCHEDULER": "3"}
TIMEOUT_S = 30

ADD_SUB_CONFIG = """
name: "{name}"
backend: "python"
max_batch_size: 8
input [
  {{ name: "INPUT0" data_type: TYPE_FP32 dims: [ 4 ] }},
  {{ name: "INPUT1" data_type: TYPE_FP32 dims: [ 4 ] }}
]
output [
  {{ name: "OUTPUT0" data_type: TYPE_FP32 dims: [ 4 ] }},
  {{ name: "OUTPUT1" data_type: TYPE_FP32 dims: [ 4 ] }}
]
dynamic_batching {{ }}
instance_group [ {{ count: 1 kind: KIND_CPU }} ]
"""

# Triton's examples/add_sub/model.py, as a Triton user has it: nothing pyserve-specific.
ADD_SUB_MODEL = (EXAMPLES / "add_sub_python" / "1" / "model.py").read_text()

STRING_CONFIG = """
backend: "python"
max_batch_size: 8
input [ { name: "INPUT0" data_type: TYPE_STRING dims: [ -1 ] } ]
output [
  { name: "OUTPUT0" data_type: TYPE_STRING dims: [ -1 ] },
  { name: "UPPER" data_type: TYPE_STRING dims: [ -1 ] }
]
"""

STRING_MODEL = '''
import numpy as np
import triton_python_backend_utils as pb_utils


class TritonPythonModel:
    def execute(self, requests):
        responses = []
        for request in requests:
            data = pb_utils.get_input_tensor_by_name(request, "INPUT0").as_numpy()
            assert data.dtype == np.object_ and all(isinstance(v, bytes) for v in data.flat)
            upper = np.array([v.decode().upper() for v in data.flat], dtype=np.object_)
            responses.append(pb_utils.InferenceResponse([
                pb_utils.Tensor("OUTPUT0", data),
                pb_utils.Tensor("UPPER", upper.reshape(data.shape)),  # str elements
            ]))
        return responses
'''

INTROSPECT_MODEL = '''
import json

import numpy as np
import triton_python_backend_utils as pb_utils


class TritonPythonModel:
    """Answers with what it was told about the request besides its tensors."""

    def execute(self, requests):
        responses = []
        for request in requests:
            seen = {"id": request.request_id(), "parameters": json.loads(request.parameters()),
                    "outputs": request.requested_output_names()}
            text = np.array([[json.dumps(seen, sort_keys=True).encode()]], dtype=np.object_)
            responses.append(pb_utils.InferenceResponse([
                pb_utils.Tensor("OUTPUT0", text), pb_utils.Tensor("UPPER", text)]))
        return responses
'''

CHECKED_CONFIG = """
backend: "python"
max_batch_size: 8
input [ { name: "INPUT0" data_type: TYPE_FP32 dims: [ 2 ] } ]
output [ { name: "OUTPUT0" data_type: TYPE_FP32 dims: [ 2 ] } ]
dynamic_batching { }
"""

# Fails the requests that carry a negative number, and only those.
CHECKED_MODEL = '''
import triton_python_backend_utils as pb_utils


class TritonPythonModel:
    def execute(self, requests):
        responses = []
        for request in requests:
            data = request.get_input_tensor_by_name("INPUT0").as_numpy()
            if (data < 0).any():
                error = pb_utils.TritonError("negative input is not allowed",
                                             pb_utils.TritonError.INVALID_ARG)
                responses.append(pb_utils.InferenceResponse(error=error))
            else:
                responses.append(pb_utils.InferenceResponse([pb_utils.Tensor("OUTPUT0", data * 10)]))
        return responses
'''

WRONG_COUNT_MODEL = '''
class TritonPythonModel:
    def execute(self, requests):
        return []
'''

RAISING_MODEL = '''
class TritonPythonModel:
    def execute(self, requests):
        raise ValueError("the model broke")
'''

# No config.pbtxt: the model describes itself.
AUTO_MODEL = '''
import triton_python_backend_utils as pb_utils


class TritonPythonModel:
    @staticmethod
    def auto_complete_config(auto_complete_model_config):
        auto_complete_model_config.add_input({"name": "IN", "data_type": "TYPE_INT32", "dims": [3]})
        auto_complete_model_config.add_output({"name": "OUT", "data_type": "TYPE_INT32", "dims": [3]})
        auto_complete_model_config.set_max_batch_size(4)
        auto_complete_model_config.set_dynamic_batching()
        return auto_complete_model_config

    def execute(self, requests):
        return [pb_utils.InferenceResponse(
                    [pb_utils.Tensor("OUT", r.get_input_tensor_by_name("IN").as_numpy() + 1)])
                for r in requests]
'''

NATIVE_CONFIG = """
backend: "python"
max_batch_size: 8
input [ { name: "X" data_type: TYPE_FP16 dims: [ 2 ] } ]
output [
  { name: "DOUBLED" data_type: TYPE_FP16 dims: [ 2 ] },
  { name: "BATCH" data_type: TYPE_INT32 dims: [ 1 ] }
]
dynamic_batching { }
"""

NATIVE_MODEL = '''
import numpy as np

import pyserve


@pyserve.batched
def infer(inputs):
    x = inputs["X"]
    return {"DOUBLED": x * np.float16(2),
            "BATCH": np.full((x.shape[0], 1), x.shape[0], dtype=np.int32)}
'''

ZERO_COPY_CONFIG = """
backend: "python"
max_batch_size: 8
input [ { name: "INPUT0" data_type: TYPE_FP32 dims: [ 4 ] } ]
output [
  { name: "VIEW" data_type: TYPE_BOOL dims: [ 1 ] },
  { name: "ARGS" data_type: TYPE_STRING dims: [ 1 ] },
  { name: "OUTPUT0" data_type: TYPE_FP32 dims: [ 4 ] }
]
dynamic_batching { }
"""

# Reports whether its inputs are read-only views (not copies), and returns them unchanged.
ZERO_COPY_MODEL = '''
import json

import numpy as np
import triton_python_backend_utils as pb_utils


class TritonPythonModel:
    def initialize(self, args):
        self.args = dict(args)

    def execute(self, requests):
        responses = []
        for request in requests:
            data = request.inputs()[0].as_numpy()
            view = not data.flags.writeable and not data.flags.owndata
            n = data.shape[0]
            responses.append(pb_utils.InferenceResponse([
                pb_utils.Tensor("VIEW", np.full((n, 1), view)),
                pb_utils.Tensor("ARGS", np.full((n, 1), json.dumps(self.args).encode(), dtype=object)),
                pb_utils.Tensor("OUTPUT0", data),
            ]))
        return responses
'''

BAD_INIT_MODEL = '''
class TritonPythonModel:
    def initialize(self, args):
        raise RuntimeError("weights not found")

    def execute(self, requests):
        return []
'''


BF16_CONFIG = """
max_batch_size: 8
input [ { name: "INPUT0" data_type: TYPE_BF16 dims: [ -1 ] } ]
output [ { name: "OUTPUT0" data_type: TYPE_BF16 dims: [ -1 ] } ]
"""

# Triton's BF16 example model: numpy refuses BF16, DLPack carries it to and from torch.
BF16_MODEL = '''
import torch
import torch.utils.dlpack
import triton_python_backend_utils as pb_utils


class TritonPythonModel:
    def execute(self, requests):
        responses = []
        for request in requests:
            tensor = pb_utils.get_input_tensor_by_name(request, "INPUT0")
            try:
                tensor.as_numpy()
            except pb_utils.TritonModelException as e:
                assert "tensor dtype is bf16 and cannot be converted to numpy" in str(e).lower()
            else:
                raise Exception("Expected BF16 conversion to numpy to fail")
            x = torch.utils.dlpack.from_dlpack(tensor.to_dlpack())
            out = pb_utils.Tensor.from_dlpack("OUTPUT0", torch.utils.dlpack.to_dlpack(x * 2 + 1))
            responses.append(pb_utils.InferenceResponse([out]))
        return responses
'''


# Triton runs a model's execute on its stub's one thread: what execute keeps in a
# threading.local (a tokenizer, a framework's per-thread context) is there at the next call.
THREAD_LOCAL_CONFIG = """
backend: "python"
max_batch_size: 0
input [ { name: "INPUT0" data_type: TYPE_INT64 dims: [ 1 ] } ]
output [ { name: "CALLS" data_type: TYPE_INT64 dims: [ 1 ] } ]
instance_group [ { count: 1 kind: KIND_CPU } ]
"""

THREAD_LOCAL_MODEL = '''
import threading

import numpy as np
import triton_python_backend_utils as pb_utils


class TritonPythonModel:
    def initialize(self, args):
        self.local = threading.local()

    def execute(self, requests):
        self.local.calls = getattr(self.local, "calls", 0) + 1
        calls = np.array([self.local.calls], dtype=np.int64)
        return [pb_utils.InferenceResponse([pb_utils.Tensor("CALLS", calls)]) for _ in requests]
'''


def _model(repository: Path, name: str, config: str | None, code: str) -> None:
    (repository / name / "1").mkdir(parents=True)
    if config is not None:
        (repository / name / "config.pbtxt").write_text(textwrap.dedent(config))
    (repository / name / "1" / "model.py").write_text(textwrap.dedent(code))


def build_repository(repository: Path) -> None:
    _model(repository, "add_sub", ADD_SUB_CONFIG.format(name="add_sub"), ADD_SUB_MODEL)
    _model(repository, "checked", CHECKED_CONFIG, CHECKED_MODEL)
    _model(repository, "native", NATIVE_CONFIG, NATIVE_MODEL)
    _model(repository, "zero_copy", ZERO_COPY_CONFIG, ZERO_COPY_MODEL)


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    repository = tmp_path_factory.mktemp("python_models")
    build_repository(repository)
    _model(repository, "strings", STRING_CONFIG, STRING_MODEL)
    _model(repository, "introspect", STRING_CONFIG, INTROSPECT_MODEL)
    _model(repository, "wrong_count", CHECKED_CONFIG, WRONG_COUNT_MODEL)
    _model(repository, "raising", CHECKED_CONFIG, RAISING_MODEL)
    _model(repository, "auto", None, AUTO_MODEL)
    _model(repository, "bad_init", CHECKED_CONFIG, BAD_INIT_MODEL)
    _model(repository, "bf16", BF16_CONFIG, BF16_MODEL)
    process = start_server([repository], tmp_path_factory.mktemp("logs") / "python.log",
                           "--exit-on-error", "false")
    yield process
    process.stop()


@pytest.fixture(scope="module")
def held(tmp_path_factory):
    repository = tmp_path_factory.mktemp("python_models_held")
    build_repository(repository)
    process = start_server([repository], tmp_path_factory.mktemp("logs") / "python_held.log",
                           env=HOLD)
    yield process
    process.stop()


def _add_sub_inputs(module, a: np.ndarray, b: np.ndarray) -> list:
    return [tensor(module, "INPUT0", a, "FP32"), tensor(module, "INPUT1", b, "FP32")]


def _send_concurrently(url: str, model: str, inputs: list[list]) -> list:
    with grpcclient.InferenceServerClient(url) as c:
        return send_concurrently(c, model, inputs)


def _batch_counts(url: str, model: str, settled: int) -> dict[int, int]:
    with grpcclient.InferenceServerClient(url) as c:
        return batch_counts(settled_statistics(c, model, settled))


# --- Triton's add_sub, unchanged ----------------------------------------------------------

@pytest.mark.parametrize("batch", [1, 3, 8])
def test_add_sub_model_runs_unchanged(client, batch):
    module, c = client
    rng = np.random.default_rng(batch)
    a = rng.standard_normal((batch, 4)).astype(np.float32)
    b = rng.standard_normal((batch, 4)).astype(np.float32)
    result = c.infer("add_sub", _add_sub_inputs(module, a, b))
    np.testing.assert_array_equal(result.as_numpy("OUTPUT0"), a + b)
    np.testing.assert_array_equal(result.as_numpy("OUTPUT1"), a - b)
    assert result.as_numpy("OUTPUT0").dtype == np.float32


def test_add_sub_batch_is_split_per_request(held):
    sizes = [1, 2, 3]
    pairs = [(np.full((n, 4), i + 1, np.float32) + np.arange(4, dtype=np.float32),
              np.full((n, 4), 0.5 * (i + 1), np.float32)) for i, n in enumerate(sizes)]
    done = _send_concurrently(held.grpc_url, "add_sub",
                              [_add_sub_inputs(grpcclient, a, b) for a, b in pairs])
    for (a, b), (result, error) in zip(pairs, done):
        assert error is None, error
        np.testing.assert_array_equal(result.as_numpy("OUTPUT0"), a + b)
        np.testing.assert_array_equal(result.as_numpy("OUTPUT1"), a - b)
    assert _batch_counts(held.grpc_url, "add_sub", 3) == {6: 1}


def test_metadata_and_platform(client):
    module, c = client
    metadata = c.get_model_metadata("add_sub")
    if module is grpcclient:
        assert metadata.platform == "python"
        assert [(t.name, t.datatype, list(t.shape)) for t in metadata.inputs] == [
            ("INPUT0", "FP32", [-1, 4]), ("INPUT1", "FP32", [-1, 4])]
    else:
        assert metadata["platform"] == "python"
        assert [(t["name"], t["shape"]) for t in metadata["outputs"]] == [
            ("OUTPUT0", [-1, 4]), ("OUTPUT1", [-1, 4])]


# --- BYTES ----------------------------------------------------------------------------------

def test_string_identity_and_str_outputs(client):
    module, c = client
    data = np.array([[b"hello", b"wor\x00ld", b""]], dtype=np.object_)
    result = c.infer("strings", [tensor(module, "INPUT0", data, "BYTES")])
    assert result.as_numpy("OUTPUT0").tolist() == data.tolist()
    assert result.as_numpy("UPPER").tolist() == [[b"HELLO", b"WOR\x00LD", b""]]


def test_bf16_model_through_dlpack_and_torch(client):
    torch = pytest.importorskip("torch")
    ml_dtypes = pytest.importorskip("ml_dtypes")
    module, c = client
    data = np.array([[1.5, -2.25, 3.0, 0.0078125]], ml_dtypes.bfloat16)
    result = c.infer("bf16", [tensor(module, "INPUT0", data, "BF16")])
    expected = torch.from_numpy(data.view(np.int16)).view(torch.bfloat16) * 2 + 1
    got = np.asarray(result.as_numpy("OUTPUT0")).view(np.uint16)
    np.testing.assert_array_equal(got, expected.view(torch.int16).numpy().view(np.uint16))


# --- errors -------------------------------------------------------------------------------

def test_error_response_fails_only_its_request(client):
    module, c = client
    good = np.array([[1, 2]], np.float32)
    np.testing.assert_array_equal(
        c.infer("checked", [tensor(module, "INPUT0", good, "FP32")]).as_numpy("OUTPUT0"), good * 10)
    with pytest.raises(InferenceServerException, match="negative input is not allowed") as info:
        c.infer("checked", [tensor(module, "INPUT0", -good, "FP32")])
    status = info.value.status()
    assert status in ("StatusCode.INVALID_ARGUMENT", "400"), status


def test_error_response_in_a_batch_fails_only_its_request(held):
    arrays = [np.array([[1, 2]], np.float32), np.array([[-1, 2]], np.float32),
              np.array([[3, 4], [5, 6]], np.float32)]
    done = _send_concurrently(held.grpc_url, "checked",
                              [[tensor(grpcclient, "INPUT0", a, "FP32")] for a in arrays])
    assert done[1][0] is None and "negative input is not allowed" in str(done[1][1])
    for index in (0, 2):
        result, error = done[index]
        assert error is None, error
        np.testing.assert_array_equal(result.as_numpy("OUTPUT0"), arrays[index] * 10)
    assert _batch_counts(held.grpc_url, "checked", 3) == {4: 1}


def test_wrong_response_count_fails_the_request(client):
    module, c = client
    with pytest.raises(InferenceServerException,
                       match="Number of InferenceResponse objects do not match"):
        c.infer("wrong_count", [tensor(module, "INPUT0", np.ones((1, 2), np.float32), "FP32")])


def test_raising_execute_fails_the_batch_and_keeps_serving(client):
    module, c = client
    ones = tensor(module, "INPUT0", np.ones((1, 2), np.float32), "FP32")
    for _ in range(2):
        with pytest.raises(InferenceServerException, match="ValueError: the model broke"):
            c.infer("raising", [ones])
    assert c.is_model_ready("raising")


def test_failing_initialize_leaves_the_others_serving(server):
    with httpclient.InferenceServerClient(server.http_url) as c:
        assert not c.is_model_ready("bad_init")
        assert c.is_model_ready("add_sub")
        index = {m["name"]: m for m in c.get_model_repository_index()}
    assert index["bad_init"]["state"] == "UNAVAILABLE"
    assert "initialize failed: RuntimeError: weights not found" in index["bad_init"]["reason"]
    assert "failed to load 'bad_init'" in server.log()


# --- auto-complete ------------------------------------------------------------------------

def test_auto_complete_config_fills_the_config(client):
    module, c = client
    metadata = c.get_model_metadata("auto")
    config = c.get_model_config("auto")
    if module is grpcclient:
        assert [(t.name, t.datatype, list(t.shape)) for t in metadata.inputs] == [
            ("IN", "INT32", [-1, 3])]
        assert [(t.name, t.datatype, list(t.shape)) for t in metadata.outputs] == [
            ("OUT", "INT32", [-1, 3])]
        assert config.config.max_batch_size == 4
        assert config.config.HasField("dynamic_batching")
    else:
        assert [(t["name"], t["datatype"], t["shape"]) for t in metadata["inputs"]] == [
            ("IN", "INT32", [-1, 3])]
        assert config["max_batch_size"] == 4 and "dynamic_batching" in config
    data = np.array([[1, 2, 3], [4, 5, 6]], np.int32)
    result = c.infer("auto", [tensor(module, "IN", data, "INT32")])
    np.testing.assert_array_equal(result.as_numpy("OUT"), data + 1)


# --- the native form ----------------------------------------------------------------------

def test_native_batched_function_with_fp16(client):
    module, c = client
    x = np.array([[1.5, -2.25], [0.5, 8]], np.float16)
    result = c.infer("native", [tensor(module, "X", x, "FP16")])
    assert result.as_numpy("DOUBLED").dtype == np.float16
    np.testing.assert_array_equal(result.as_numpy("DOUBLED"), x * 2)
    np.testing.assert_array_equal(result.as_numpy("BATCH"), [[2], [2]])


def test_native_function_sees_the_whole_batch(held):
    xs = [np.full((n, 2), n, np.float16) for n in (1, 1, 2)]
    done = _send_concurrently(held.grpc_url, "native",
                              [[tensor(grpcclient, "X", x, "FP16")] for x in xs])
    for x, (result, error) in zip(xs, done):
        assert error is None, error
        np.testing.assert_array_equal(result.as_numpy("DOUBLED"), x * 2)
        np.testing.assert_array_equal(result.as_numpy("BATCH"), np.full((len(x), 1), 4))


# --- zero copy ----------------------------------------------------------------------------

def test_inputs_are_read_only_views_and_args_follow_triton(client):
    module, c = client
    data = np.arange(8, dtype=np.float32).reshape(2, 4)
    result = c.infer("zero_copy", [tensor(module, "INPUT0", data, "FP32")])
    assert result.as_numpy("VIEW").tolist() == [[True], [True]]
    np.testing.assert_array_equal(result.as_numpy("OUTPUT0"), data)
    args = json.loads(result.as_numpy("ARGS")[0, 0])
    assert args["model_name"] == "zero_copy" and args["model_version"] == "1"
    assert args["model_instance_kind"] == "CPU" and args["model_instance_device_id"] == "0"
    assert args["model_instance_name"] == "zero_copy_0"
    assert Path(args["model_repository"]).name == "zero_copy"
    assert json.loads(args["model_config"])["input"][0]["dims"] == [4]


def test_batched_inputs_are_views_and_passed_through_outputs_survive(held):
    arrays = [np.full((n, 4), n * 10, np.float32) + np.arange(4, dtype=np.float32)
              for n in (1, 2, 3)]
    done = _send_concurrently(held.grpc_url, "zero_copy",
                              [[tensor(grpcclient, "INPUT0", a, "FP32")] for a in arrays])
    for array, (result, error) in zip(arrays, done):
        assert error is None, error
        assert result.as_numpy("VIEW").all()
        np.testing.assert_array_equal(result.as_numpy("OUTPUT0"), array)
    assert _batch_counts(held.grpc_url, "zero_copy", 3) == {6: 1}


def test_requests_carry_their_id_parameters_and_requested_outputs(client):
    module, c = client
    words = np.array([[b"a"]], dtype=np.object_)
    result = c.infer("introspect", [tensor(module, "INPUT0", words, "BYTES")], request_id="r-9",
                     parameters={"temperature": "hot", "top_k": 3}, priority=0,
                     outputs=[module.InferRequestedOutput("OUTPUT0")])
    seen = json.loads(result.as_numpy("OUTPUT0")[0, 0])
    assert seen == {"id": "r-9", "parameters": {"temperature": "hot", "top_k": 3},
                    "outputs": ["OUTPUT0"]}


# --- the thread execute runs on ----------------------------------------------------------

@pytest.fixture(scope="module", params=FRONTENDS)
def thread_local_server(request, tmp_path_factory):
    if request.param == "native" and not native_frontends_built():
        pytest.skip("pyserve was built without the native frontends")
    repository = tmp_path_factory.mktemp("thread_local")
    _model(repository, "thread_local", THREAD_LOCAL_CONFIG, THREAD_LOCAL_MODEL)
    process = start_server([repository], tmp_path_factory.mktemp("logs") / "thread_local.log",
                           "--grpc-frontend", request.param, "--http-frontend", request.param)
    yield process
    process.stop()


@pytest.mark.parametrize("protocol", ["grpc", "http"])
def test_execute_keeps_its_thread_local_state_between_calls(thread_local_server, protocol):
    module = grpcclient if protocol == "grpc" else httpclient
    url = thread_local_server.grpc_url if protocol == "grpc" else thread_local_server.http_url
    with module.InferenceServerClient(url) as c:
        inputs = [tensor(module, "INPUT0", np.array([0], dtype=np.int64), "INT64")]
        calls = [int(c.infer("thread_local", inputs).as_numpy("CALLS")[0]) for _ in range(3)]
    assert calls[1:] == [calls[0] + 1, calls[0] + 2]
