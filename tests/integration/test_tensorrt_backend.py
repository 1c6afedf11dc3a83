"""The TensorRT backend with a real server and tritonclient.

Everywhere: a tensorrt_plan model that cannot run here (no tensorrt package, no GPU, or a
file that is not an engine) fails its own load with a clear reason and the server keeps
serving the rest. Where tensorrt and a GPU are present: an engine built by the test (dynamic
batch through an optimization profile) serves results equal to numpy, batched by the dynamic
batcher, with its config auto-completed from the engine.
"""

from __future__ import annotations

import importlib.util
import shutil

import numpy as np
import pytest
import tritonclient.grpc as grpcclient

from conftest import EXAMPLES, batch_counts, send_concurrently, settled_statistics, start_server, tensor
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
