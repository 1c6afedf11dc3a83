"""The TensorRT backend with a real server and tritonclient.

Everywhere: a tensorrt_plan model that cannot run here (no tensorrt package, no GPU, or a
file that is not an engine) fails its own load with a clear reason and the server keeps
serving the rest. Where tensorrt and a GPU are present: an engine built by the test (dynamic
batch through an optimization profile) serves results equal to numpy, batched by the dynamic
batcher, with its config auto-completed from the engine; an accumulator engine with implicit
state (sequence_batching.state and a START control as engine bindings) keeps a running sum
per sequence, on both frontends, over gRPC and HTTP.
"""

from __future__ import annotations

import importlib.util
import shutil
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest
import tritonclient.grpc as grpcclient
import tritonclient.http as httpclient

from conftest import (EXAMPLES, FRONTENDS, batch_counts, native_frontends_built,
                      send_concurrently, settled_statistics, start_server, tensor)
from pyserve.devices import gpu_count

HAS_TENSORRT = importlib.util.find_spec("tensorrt") is not None
needs_tensorrt_gpu = pytest.mark.skipif(not HAS_TENSORRT or gpu_count() == 0,
                                        reason="needs the tensorrt package and a GPU")

PLAN_CONFIG = """
platform: "tensorrt_plan"
max_batch_size: 8
input [ { name: "INPUT0" data_type: TYPE_FP32 dims: [ 4 ] },
        { name: "INPUT1" data_type: TYPE_FP32 dims: [ 4 ] } ]
output [ { name: "OUTPUT0" data_type: TYPE_FP32 dims: [ 4 ] },
         { name: "OUTPUT1" data_type: TYPE_FP32 dims: [ 4 ] } ]
"""


def test_unusable_plan_fails_its_own_load_with_the_reason(tmp_path):
    repository = tmp_path / "models"
    (repository / "plan" / "1").mkdir(parents=True)
    (repository / "plan" / "1" / "model.plan").write_bytes(b"not an engine")
    (repository / "plan" / "config.pbtxt").write_text(PLAN_CONFIG)
    shutil.copytree(EXAMPLES / "simple", repository / "simple")
    server = start_server([repository], tmp_path / "plan.log", "--exit-on-error", "false")
    try:
        with grpcclient.InferenceServerClient(server.grpc_url) as c:
            index = {m.name: (m.state, m.reason) for m in c.get_model_repository_index().models}
            state, reason = index["plan"]
            assert state == "UNAVAILABLE"
            if not HAS_TENSORRT:
                expected = "pip install 'pyserve[tensorrt]'"
            elif gpu_count() == 0:
                expected = "TensorRT engines run on GPU instances only"
            else:
                expected = "is not a TensorRT engine"
            assert expected in reason
            assert c.is_model_ready("simple")
            ones = np.ones((1, 16), np.int32)
            result = c.infer("simple", [tensor(grpcclient, "INPUT0", ones, "INT32"),
                                        tensor(grpcclient, "INPUT1", ones, "INT32")])
            np.testing.assert_array_equal(result.as_numpy("OUTPUT0"), ones * 2)
    finally:
        server.stop()


def build_add_sub_engine(path, max_batch: int = 8) -> None:
    """INPUT0/INPUT1 FP32 [-1, 4] -> OUTPUT0 = sum, OUTPUT1 = difference; batch 1..max."""
    import tensorrt as trt

    builder = trt.Builder(trt.Logger(trt.Logger.WARNING))
    network = builder.create_network(0)
    a = network.add_input("INPUT0", trt.float32, (-1, 4))
    b = network.add_input("INPUT1", trt.float32, (-1, 4))
    for name, op in (("OUTPUT0", trt.ElementWiseOperation.SUM),
                     ("OUTPUT1", trt.ElementWiseOperation.SUB)):
        out = network.add_elementwise(a, b, op).get_output(0)
        out.name = name
        network.mark_output(out)
    config = builder.create_builder_config()
    profile = builder.create_optimization_profile()
    for name in ("INPUT0", "INPUT1"):
        profile.set_shape(name, (1, 4), (4, 4), (max_batch, 4))
    config.add_optimization_profile(profile)
    engine = builder.build_serialized_network(network, config)
    assert engine is not None, "TensorRT could not build the test engine"
    path.write_bytes(bytes(engine))


@pytest.fixture(scope="module")
def trt_server(tmp_path_factory):
    repository = tmp_path_factory.mktemp("trt_models")
    for name, config in (("add_sub", 'name: "add_sub"\n' + PLAN_CONFIG),
                         ("auto", 'platform: "tensorrt_plan"\n'),
                         ("too_big", 'platform: "tensorrt_plan"\nmax_batch_size: 16\n')):
        (repository / name / "1").mkdir(parents=True)
        build_add_sub_engine(repository / name / "1" / "model.plan")
        (repository / name / "config.pbtxt").write_text(config)
    server = start_server([repository], tmp_path_factory.mktemp("logs") / "trt.log",
                          "--exit-on-error", "false", env={"TRITONSERVER_DELAY_SCHEDULER": "3"})
    yield server
    server.stop()


def _inputs(a: np.ndarray, b: np.ndarray) -> list:
    return [tensor(grpcclient, "INPUT0", a, "FP32"), tensor(grpcclient, "INPUT1", b, "FP32")]


@needs_tensorrt_gpu
def test_engine_results_batched_by_the_dynamic_batcher(trt_server):
    rng = np.random.default_rng(0)
    pairs = [(rng.standard_normal((n, 4)).astype(np.float32),
              rng.standard_normal((n, 4)).astype(np.float32)) for n in (1, 2, 3)]
    with grpcclient.InferenceServerClient(trt_server.grpc_url) as c:
        results = send_concurrently(c, "auto", [_inputs(a, b) for a, b in pairs])
        for (a, b), (result, error) in zip(pairs, results):
            assert error is None, error
            np.testing.assert_allclose(result.as_numpy("OUTPUT0"), a + b, rtol=1e-6)
            np.testing.assert_allclose(result.as_numpy("OUTPUT1"), a - b, rtol=1e-6)
        assert batch_counts(settled_statistics(c, "auto", 3)) == {6: 1}


@needs_tensorrt_gpu
def test_config_is_auto_completed_from_the_engine(trt_server):
    with grpcclient.InferenceServerClient(trt_server.grpc_url) as c:
        config = c.get_model_config("auto").config
        assert config.backend == "tensorrt" and config.platform == "tensorrt_plan"
        assert config.max_batch_size == 8  # the profile's largest batch
        assert config.HasField("dynamic_batching")
        assert [(i.name, list(i.dims)) for i in config.input] == [("INPUT0", [4]), ("INPUT1", [4])]
        assert sorted(o.name for o in config.output) == ["OUTPUT0", "OUTPUT1"]


@needs_tensorrt_gpu
def test_shape_outside_the_profile_fails_only_that_request(trt_server):
    """dims [-1] in the engine's last dimension are fixed at 4: a request of 5 is refused by
    the frontend; the server goes on serving."""
    with grpcclient.InferenceServerClient(trt_server.grpc_url) as c:
        wide = np.ones((1, 5), np.float32)
        with pytest.raises(Exception, match="unexpected shape"):
            c.infer("add_sub", _inputs(wide, wide))
        a = np.ones((1, 4), np.float32)
        np.testing.assert_array_equal(c.infer("add_sub", _inputs(a, a)).as_numpy("OUTPUT0"), a * 2)


@needs_tensorrt_gpu
def test_max_batch_size_beyond_the_engine_fails_that_load(trt_server):
    with grpcclient.InferenceServerClient(trt_server.grpc_url) as c:
        index = {m.name: (m.state, m.reason) for m in c.get_model_repository_index().models}
        state, reason = index["too_big"]
        assert state == "UNAVAILABLE"
        assert "configuration specified max-batch 16 but TensorRT engine only supports " \
               "max-batch 8" in reason


def build_accumulator_engine(path, max_batch: int = 4) -> None:
    """INPUT, START and INPUT_STATE FP32 [-1, 1] -> OUTPUT = INPUT + INPUT_STATE * (1 - START),
    OUTPUT_STATE the same: a running sum whose state the server keeps."""
    import tensorrt as trt

    builder = trt.Builder(trt.Logger(trt.Logger.WARNING))
    network = builder.create_network(0)
    value, start, state = (network.add_input(name, trt.float32, (-1, 1))
                           for name in ("INPUT", "START", "INPUT_STATE"))
    ones = np.ones((1, 1), np.float32)  # TensorRT reads the weights when it builds: kept alive
    one = network.add_constant((1, 1), trt.Weights(ones)).get_output(0)
    elementwise = trt.ElementWiseOperation
    kept = network.add_elementwise(one, start, elementwise.SUB).get_output(0)
    kept = network.add_elementwise(state, kept, elementwise.PROD).get_output(0)
    total = network.add_elementwise(value, kept, elementwise.SUM).get_output(0)
    total.name = "OUTPUT"
    network.mark_output(total)
    new_state = network.add_identity(total).get_output(0)
    new_state.name = "OUTPUT_STATE"
    network.mark_output(new_state)
    config = builder.create_builder_config()
    profile = builder.create_optimization_profile()
    for name in ("INPUT", "START", "INPUT_STATE"):
        profile.set_shape(name, (1, 1), (max_batch, 1), (max_batch, 1))
    config.add_optimization_profile(profile)
    engine = builder.build_serialized_network(network, config)
    assert engine is not None, "TensorRT could not build the accumulator engine"
    path.write_bytes(bytes(engine))


ACCUMULATOR_CONFIG = """name: "{name}"
platform: "tensorrt_plan"
max_batch_size: 4
input [ {{ name: "INPUT" data_type: TYPE_FP32 dims: [ 1 ] }} ]
output [ {{ name: "OUTPUT" data_type: TYPE_FP32 dims: [ 1 ] }} ]
sequence_batching {{
  max_sequence_idle_microseconds: 60000000
  control_input [ {{ name: "START"
                    control [ {{ kind: CONTROL_SEQUENCE_START fp32_false_true: [ 0, 1 ] }} ] }} ]
  state [ {{ input_name: "INPUT_STATE" output_name: "OUTPUT_STATE" data_type: TYPE_FP32
            dims: [ 1 ] {flags} }} ]
}}
instance_group [ {{ kind: KIND_GPU count: 1 }} ]
"""
# use_growable_memory (with the single buffer Triton asks for it): accepted on GPU instances.
ACCUMULATORS = {"trt_acc": "",
                "trt_growable": "use_same_buffer_for_input_output: true use_growable_memory: true"}


@pytest.fixture(scope="module", params=FRONTENDS)
def state_server(request, tmp_path_factory):
    if request.param == "native" and not native_frontends_built():
        pytest.skip("pyserve was built without the native frontends")
    repository = tmp_path_factory.mktemp("trt_state_models")
    for name, flags in ACCUMULATORS.items():
        (repository / name / "1").mkdir(parents=True)
        build_accumulator_engine(repository / name / "1" / "model.plan")
        (repository / name / "config.pbtxt").write_text(
            ACCUMULATOR_CONFIG.format(name=name, flags=flags))
    server = start_server([repository], tmp_path_factory.mktemp("logs") / "trt_state.log",
                          "--grpc-frontend", request.param, "--http-frontend", request.param)
    yield server
    server.stop()


def _accumulate(server, protocol: str, model: str, sequence_id: int, values: list[float]) -> list:
    """Sends one sequence (START on the first value, END on the last); the OUTPUT of each."""
    module = grpcclient if protocol == "grpc" else httpclient
    url = server.grpc_url if protocol == "grpc" else server.http_url
    sums = []
    with module.InferenceServerClient(url) as client:
        for i, value in enumerate(values):
            result = client.infer(model, [tensor(module, "INPUT", np.array([[value]], np.float32),
                                                 "FP32")],
                                  sequence_id=sequence_id, sequence_start=i == 0,
                                  sequence_end=i == len(values) - 1)
            assert result.as_numpy("OUTPUT_STATE") is None  # the state stays in the server
            sums.append(float(result.as_numpy("OUTPUT").reshape(-1)[0]))
    return sums


@needs_tensorrt_gpu
@pytest.mark.parametrize("model", sorted(ACCUMULATORS))
@pytest.mark.parametrize("protocol", ["grpc", "http"])
def test_engine_with_implicit_state_keeps_a_running_sum(state_server, protocol, model):
    assert _accumulate(state_server, protocol, model, 11, [3, 4, 5, 6]) == [3, 7, 12, 18]
    # A new sequence of the same ID starts again from the initial state (zeros).
    assert _accumulate(state_server, protocol, model, 11, [2, 2]) == [2, 4]


@needs_tensorrt_gpu
@pytest.mark.parametrize("protocol", ["grpc", "http"])
def test_concurrent_sequences_keep_their_own_state_rows(state_server, protocol):
    """Four sequences at once share the engine's batches (one slot each); each row's state
    goes back to its own sequence."""
    def run(k: int) -> list:
        return _accumulate(state_server, protocol, "trt_acc", 100 + k,
                           [float((k + 1) * 10 + step) for step in range(5)])

    with ThreadPoolExecutor(4) as pool:
        sums = list(pool.map(run, range(4)))
    for k, got in enumerate(sums):
        values = [(k + 1) * 10 + step for step in range(5)]
        assert got == [float(sum(values[:n + 1])) for n in range(5)]
