"""Ensembles (`platform: "ensemble"`) on real servers, through tritonclient, on both frontends.

The repository the tests build: `add_sub` (ONNX: OUTPUT0 = INPUT0 + INPUT1, OUTPUT1 = INPUT0 -
INPUT1), `scale` (Python: Y = 2 X) and ensembles of them; each answer is checked against the
same steps run by hand through the composing models.
"""

from __future__ import annotations

import queue
from pathlib import Path

import numpy as np
import onnx
import pytest
import tritonclient.grpc as grpcclient
import tritonclient.http as httpclient
from tritonclient.utils import InferenceServerException

from conftest import (FRONTENDS, batch_counts, native_frontends_built, settled_statistics,
                      start_server, tensor, write_python_model)

VECTOR = 4


def add_sub_onnx() -> bytes:
    """INPUT0, INPUT1 FP32 [batch, 4] -> OUTPUT0 = sum, OUTPUT1 = difference."""
    from onnx import TensorProto, helper

    shape = ["batch", VECTOR]
    graph = helper.make_graph(
        [helper.make_node("Add", ["INPUT0", "INPUT1"], ["OUTPUT0"]),
         helper.make_node("Sub", ["INPUT0", "INPUT1"], ["OUTPUT1"])], "add_sub",
        [helper.make_tensor_value_info(n, TensorProto.FLOAT, shape) for n in ("INPUT0", "INPUT1")],
        [helper.make_tensor_value_info(n, TensorProto.FLOAT, shape) for n in ("OUTPUT0", "OUTPUT1")])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.checker.check_model(model)
    return model.SerializeToString()


def write_add_sub(repository: Path, name: str, batching: str = "dynamic_batching { }") -> None:
    (repository / name / "1").mkdir(parents=True)
    (repository / name / "1" / "model.onnx").write_bytes(add_sub_onnx())
    io = "".join(f'{kind} {{ name: "{n}" data_type: TYPE_FP32 dims: [ {VECTOR} ] }}\n'
                 for kind, n in (("input", "INPUT0"), ("input", "INPUT1"),
                                 ("output", "OUTPUT0"), ("output", "OUTPUT1")))
    (repository / name / "config.pbtxt").write_text(
        f'name: "{name}"\nplatform: "onnxruntime_onnx"\nmax_batch_size: 8\n{batching}\n{io}'
        "instance_group [ { count: 1 kind: KIND_CPU } ]\n")


SCALE = """import numpy as np
import triton_python_backend_utils as pb_utils


class TritonPythonModel:
    def execute(self, requests):
        responses = []
        for request in requests:
            x = pb_utils.get_input_tensor_by_name(request, "X").as_numpy()
            if (x < -1000).any():
                raise ValueError("scale refuses values below -1000")
            responses.append(pb_utils.InferenceResponse([pb_utils.Tensor("Y", x * 2)]))
        return responses
"""

FP32 = "data_type: TYPE_FP32 dims: [ 4 ]"


def write_ensemble(repository: Path, name: str, body: str, max_batch_size: int = 8) -> None:
    (repository / name / "1").mkdir(parents=True)
    (repository / name / "config.pbtxt").write_text(
        f'name: "{name}"\nplatform: "ensemble"\nmax_batch_size: {max_batch_size}\n{body}')


def step(model: str, inputs: dict[str, str], outputs: dict[str, str], version: int = -1) -> str:
    maps = "".join(f' input_map {{ key: "{k}" value: "{v}" }}' for k, v in inputs.items())
    maps += "".join(f' output_map {{ key: "{k}" value: "{v}" }}' for k, v in outputs.items())
    return f'{{ model_name: "{model}" model_version: {version}{maps} }}'


# pipeline: (A, B) -> add_sub -> sum -> scale -> DOUBLED; DIFF straight from add_sub.
PIPELINE = (f'input [ {{ name: "A" {FP32} }}, {{ name: "B" {FP32} }} ]\n'
            f'output [ {{ name: "DOUBLED" {FP32} }}, {{ name: "DIFF" {FP32} }} ]\n'
            "ensemble_scheduling { step [ "
            + step("add_sub", {"INPUT0": "A", "INPUT1": "B"}, {"OUTPUT0": "sum", "OUTPUT1": "DIFF"})
            + ", " + step("scale", {"X": "sum"}, {"Y": "DOUBLED"}) + " ] }\n")


# A decoupled model: X[0, 0] responses, the i-th Y = X + 10 i, then the final flag alone.
FAN = """import numpy as np
import triton_python_backend_utils as pb_utils


class TritonPythonModel:
    def execute(self, requests):
        for request in requests:
            x = pb_utils.get_input_tensor_by_name(request, "X").as_numpy()
            sender = request.get_response_sender()
            for i in range(int(x[0, 0])):
                sender.send(pb_utils.InferenceResponse([pb_utils.Tensor("Y", x + 10 * i)]))
            sender.send(flags=pb_utils.TRITONSERVER_RESPONSE_COMPLETE_FINAL)
        return None
"""

# fanned: A -> fan (decoupled) -> each response -> scale -> OUT: decoupled itself.
FANNED = (f'input [ {{ name: "A" {FP32} }} ]\noutput [ {{ name: "OUT" {FP32} }} ]\n'
          "ensemble_scheduling { step [ " + step("fan", {"X": "A"}, {"Y": "fanned"}) + ", "
          + step("scale", {"X": "fanned"}, {"Y": "OUT"}) + " ] }\n")


def build_repository(repository: Path) -> None:
    write_add_sub(repository, "add_sub")
    write_python_model(repository, "fan", f'input [ {{ name: "X" {FP32} }} ]\n'
                       f'output [ {{ name: "Y" {FP32} }} ]\n'
                       "model_transaction_policy { decoupled: true }\n", FAN, max_batch_size=8)
    write_ensemble(repository, "fanned", FANNED)
    # Batches of 4 form at once; fewer wait 5 s: the batching test's four requests meet.
    write_add_sub(repository, "add_sub_batched",
                  "dynamic_batching { preferred_batch_size: [ 4 ] "
                  "max_queue_delay_microseconds: 5000000 }")
    write_python_model(repository, "scale", f'input [ {{ name: "X" {FP32} }} ]\n'
                       f'output [ {{ name: "Y" {FP32} }} ]\n', SCALE, max_batch_size=8)
    write_ensemble(repository, "pipeline", PIPELINE)
    write_ensemble(repository, "pipeline_batched", PIPELINE.replace('"add_sub"',
                                                                    '"add_sub_batched"'))
    # An ensemble of an ensemble: its errors carry both names.
    write_ensemble(repository, "outer", PIPELINE.split("ensemble_scheduling")[0]
                   + "ensemble_scheduling { step [ "
                   + step("pipeline", {"A": "A", "B": "B"}, {"DOUBLED": "DOUBLED", "DIFF": "DIFF"})
                   + " ] }\n")


def serve(request, tmp_path_factory, build, *extra: str):
    """A server on a repository `build` writes, with the frontends `request.param` names
    (the module fixtures' body, for the ensemble and BLS tests)."""
    if request.param == "native" and not native_frontends_built():
        pytest.skip("pyserve was built without the native frontends")
    repository = tmp_path_factory.mktemp("repository")
    build(repository)
    server = start_server([repository], tmp_path_factory.mktemp("logs") / "server.log", *extra,
                          "--grpc-frontend", request.param, "--http-frontend", request.param)
    yield server
    server.stop()


@pytest.fixture(scope="module", params=FRONTENDS)
def server(request, tmp_path_factory):
    yield from serve(request, tmp_path_factory, build_repository)


def infer(module, client, model: str, a: np.ndarray, b: np.ndarray, outputs=None):
    requested = None if outputs is None else [module.InferRequestedOutput(o) for o in outputs]
    return client.infer(model, [tensor(module, "A", a, "FP32"), tensor(module, "B", b, "FP32")],
                        outputs=requested)


def by_hand(module, client, a: np.ndarray, b: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The pipeline's steps, called one after the other."""
    first = client.infer("add_sub", [tensor(module, "INPUT0", a, "FP32"),
                                     tensor(module, "INPUT1", b, "FP32")])
    second = client.infer("scale", [tensor(module, "X", first.as_numpy("OUTPUT0"), "FP32")])
    return second.as_numpy("Y"), first.as_numpy("OUTPUT1")


def test_ensemble_answers_as_its_steps_run_by_hand(client):
    module, c = client
    rng = np.random.default_rng(7)
    a, b = (rng.standard_normal((3, VECTOR)).astype(np.float32) for _ in range(2))
    result = infer(module, c, "pipeline", a, b)
    doubled, diff = by_hand(module, c, a, b)
    np.testing.assert_array_equal(result.as_numpy("DOUBLED"), doubled)
    np.testing.assert_array_equal(result.as_numpy("DIFF"), diff)
    np.testing.assert_allclose(result.as_numpy("DOUBLED"), (a + b) * 2, rtol=1e-6)
    # Every output in the ensemble's config order when none is asked for.
    response = result.get_response()
    names = ([o.name for o in response.outputs] if module is grpcclient
             else [o["name"] for o in response["outputs"]])
    assert names == ["DOUBLED", "DIFF"]
    # One asked for: only that one.
    only = infer(module, c, "pipeline", a, b, outputs=["DIFF"])
    assert only.as_numpy("DOUBLED") is None
    np.testing.assert_array_equal(only.as_numpy("DIFF"), diff)


def test_ensemble_of_an_ensemble(client):
    module, c = client
    a = np.arange(VECTOR, dtype=np.float32)[None]
    result = infer(module, c, "outer", a, a)
    np.testing.assert_array_equal(result.as_numpy("DOUBLED"), a * 4)
    np.testing.assert_array_equal(result.as_numpy("DIFF"), np.zeros_like(a))


def test_step_error_is_prefixed_with_the_ensemble(client):
    module, c = client
    a = np.full((1, VECTOR), -2000, dtype=np.float32)
    with pytest.raises(InferenceServerException) as failed:
        infer(module, c, "pipeline", a, a)
    message = failed.value.message()
    assert message.startswith("in ensemble 'pipeline', ")
    assert "scale refuses values below -1000" in message
    with pytest.raises(InferenceServerException) as nested:
        infer(module, c, "outer", a, a)
    assert nested.value.message().startswith("in ensemble 'outer', in ensemble 'pipeline', ")


def test_ensemble_requests_are_checked_as_the_ensemble(client):
    module, c = client
    a = np.zeros((1, VECTOR), dtype=np.float32)
    with pytest.raises(InferenceServerException) as failed:
        c.infer("pipeline", [tensor(module, "A", a, "FP32")])
    assert "expected 2 inputs but got 1 inputs for model 'pipeline'" in failed.value.message()


def test_steps_are_batched_across_ensemble_requests(server):
    """Four ensemble requests at once: add_sub_batched runs them as one batch of 4 (its
    batcher waits up to 5 s for that many), and scale sees them too."""
    with grpcclient.InferenceServerClient(server.grpc_url) as c:
        done: queue.Queue = queue.Queue()
        for i in range(4):
            a = np.full((1, VECTOR), i, dtype=np.float32)
            c.async_infer("pipeline_batched", [tensor(grpcclient, "A", a, "FP32"),
                                               tensor(grpcclient, "B", a, "FP32")],
                          lambda result, error, i=i: done.put((i, result, error)))
        answers = sorted(done.get(timeout=30) for _ in range(4))
        for i, result, error in answers:
            assert error is None
            np.testing.assert_array_equal(result.as_numpy("DOUBLED"),
                                          np.full((1, VECTOR), 4 * i, dtype=np.float32))
        stats = settled_statistics(c, "add_sub_batched", 4)
        assert batch_counts(stats) == {4: 1}
        ensemble = settled_statistics(c, "pipeline_batched", 4)
        assert ensemble.inference_count == 4
        assert ensemble.execution_count == 4
        assert ensemble.inference_stats.success.count == 4
        assert batch_counts(ensemble) == {1: 4}
        # The ensemble's compute is its steps' compute, summed (Triton's statistics).
        steps_infer = (stats.inference_stats.compute_infer.ns
                       + settled_statistics(c, "scale", 1).inference_stats.compute_infer.ns)
        assert 0 < ensemble.inference_stats.compute_infer.ns
        assert ensemble.inference_stats.compute_infer.ns <= 4 * steps_infer


def test_failed_ensemble_is_counted_as_a_failure(server):
    with grpcclient.InferenceServerClient(server.grpc_url) as c:
        before = c.get_inference_statistics("pipeline").model_stats[0].inference_stats.fail.count
        a = np.full((1, VECTOR), -5000, dtype=np.float32)
        with pytest.raises(InferenceServerException):
            infer(grpcclient, c, "pipeline", a, a)
        after = c.get_inference_statistics("pipeline").model_stats[0].inference_stats.fail.count
        assert after == before + 1


def test_a_decoupled_steps_responses_each_run_the_steps_after_it(server):
    """fanned's first step answers three times: scale runs once per response, and the ensemble,
    decoupled as its step is, streams one response each, then the final flag."""
    with grpcclient.InferenceServerClient(server.grpc_url) as c:
        assert c.get_model_config("fanned").config.model_transaction_policy.decoupled
        results: queue.Queue = queue.Queue()
        c.start_stream(lambda result, error: results.put((result, error)))
        a = np.full((1, VECTOR), 3, dtype=np.float32)
        c.async_stream_infer("fanned", [tensor(grpcclient, "A", a, "FP32")], request_id="f",
                             enable_empty_final_response=True)
        outs = []
        while True:
            result, error = results.get(timeout=30)
            assert error is None
            response = result.get_response()
            assert response.id == "f" and response.model_name == "fanned"
            if response.parameters["triton_final_response"].bool_param:
                assert response.outputs == []
                break
            outs.append(result.as_numpy("OUT"))
        c.stop_stream()
        # The responses may arrive in any order: each is (X + 10 i) * 2.
        assert sorted(float(o[0, 0]) for o in outs) == [6, 26, 46]
        with pytest.raises(InferenceServerException) as refused:
            c.infer("fanned", [tensor(grpcclient, "A", a, "FP32")])
        assert refused.value.message() == ("ModelInfer RPC doesn't support models with decoupled "
                                           "transaction policy")


def test_ensemble_metadata_and_config(server):
    with httpclient.InferenceServerClient(server.http_url) as c:
        metadata = c.get_model_metadata("pipeline")
        assert metadata["platform"] == "ensemble"
        assert [i["name"] for i in metadata["inputs"]] == ["A", "B"]
        config = c.get_model_config("pipeline")
        assert [s["model_name"] for s in config["ensemble_scheduling"]["step"]] == [
            "add_sub", "scale"]


# --- loading: dependencies, Triton's refusals (explicit model control) ----------------------

BROKEN = """class TritonPythonModel:
    def initialize(self, args):
        raise RuntimeError("broken on purpose")

    def execute(self, requests):
        return []
"""


def build_lifecycle_repository(repository: Path) -> None:
    build_repository(repository)
    write_python_model(repository, "broken", f'input [ {{ name: "X" {FP32} }} ]\n'
                       f'output [ {{ name: "Y" {FP32} }} ]\n', BROKEN, max_batch_size=8)
    io = PIPELINE.split("ensemble_scheduling")[0]
    write_ensemble(repository, "cycle_a", io + "ensemble_scheduling { step [ "
                   + step("cycle_b", {"A": "A", "B": "B"}, {"DOUBLED": "DOUBLED", "DIFF": "DIFF"})
                   + " ] }\n")
    write_ensemble(repository, "cycle_b", io + "ensemble_scheduling { step [ "
                   + step("cycle_a", {"A": "A", "B": "B"}, {"DOUBLED": "DOUBLED", "DIFF": "DIFF"})
                   + " ] }\n")
    write_ensemble(repository, "unknown_step", PIPELINE.replace('"scale"', '"ghost_model"'))
    write_ensemble(repository, "bad_mapping", PIPELINE.replace('key: "INPUT1"', 'key: "NOPE"'))
    write_ensemble(repository, "broken_step", PIPELINE.replace('"scale"', '"broken"'))
    write_ensemble(repository, "too_wide", PIPELINE, max_batch_size=16)
    # add_sub reads A (the request's lineage) and a decoupled step's output.
    write_ensemble(repository, "mixed_lineage",
                   f'input [ {{ name: "A" {FP32} }} ]\n'
                   f'output [ {{ name: "SUM" {FP32} }}, {{ name: "DIFF" {FP32} }} ]\n'
                   "ensemble_scheduling { step [ " + step("fan", {"X": "A"}, {"Y": "fanned"})
                   + ", " + step("add_sub", {"INPUT0": "A", "INPUT1": "fanned"},
                                 {"OUTPUT0": "SUM", "OUTPUT1": "DIFF"}) + " ] }\n")


@pytest.fixture(scope="module", params=FRONTENDS)
def explicit_server(request, tmp_path_factory):
    yield from serve(request, tmp_path_factory, build_lifecycle_repository,
                     "--model-control-mode", "explicit")


def test_loading_an_ensemble_loads_its_models_and_unload_dependents_unloads_them(explicit_server):
    with grpcclient.InferenceServerClient(explicit_server.grpc_url) as c:
        c.load_model("pipeline")
        assert all(c.is_model_ready(m) for m in ("pipeline", "add_sub", "scale"))
        a = np.ones((1, VECTOR), dtype=np.float32)
        np.testing.assert_array_equal(infer(grpcclient, c, "pipeline", a, a).as_numpy("DOUBLED"),
                                      a * 4)
        c.unload_model("pipeline")  # alone: its models stay
        assert not c.is_model_ready("pipeline")
        assert c.is_model_ready("add_sub") and c.is_model_ready("scale")
        c.load_model("pipeline")
        c.unload_model("pipeline", unload_dependents=True)
        assert not any(c.is_model_ready(m) for m in ("pipeline", "add_sub", "scale"))


@pytest.mark.parametrize("model, text", [
    ("cycle_a", "circular dependency between ensembles: cycle_a -> ... -> cycle_b -> cycle_a"),
    ("unknown_step", "ensemble unknown_step contains models that are not available or "
                     "ambiguous: ghost_model"),
    ("bad_mapping", "in ensemble bad_mapping, ensemble tensor B is mapping to non-existing input "
                    "NOPE in model add_sub"),
    ("broken_step", "ensemble 'broken_step' depends on 'broken' which has no loaded version. "
                    "Model 'broken' loading failed with error: "),
    ("too_wide", "ensemble too_wide allows maximum batch size 16, but it contains model add_sub "
                 "which only allows maximum batch size to be 8"),
    ("mixed_lineage", "in ensemble mixed_lineage, step of model 'add_sub' receives inputs "
                      "originated from different decoupled models"),
])
def test_invalid_ensembles_are_refused_with_tritons_text(explicit_server, model, text):
    with httpclient.InferenceServerClient(explicit_server.http_url) as c:
        with pytest.raises(InferenceServerException) as failed:
            c.load_model(model)
        assert text in failed.value.message()
        assert not c.is_model_ready(model)


def test_polling_loads_a_new_ensemble_after_its_new_models(tmp_path):
    """An ensemble and the model it composes appear together: the model loads once, and the
    ensemble is served (retried, should a poll see it before its model)."""
    import shutil
    import time

    repository = tmp_path / "repo"
    repository.mkdir()
    write_python_model(repository, "scale", f'input [ {{ name: "X" {FP32} }} ]\n'
                       f'output [ {{ name: "Y" {FP32} }} ]\n', SCALE, max_batch_size=8)
    server = start_server([repository], tmp_path / "server.log", "--model-control-mode", "poll",
                          "--repository-poll-secs", "0.5")
    try:
        staging = tmp_path / "staging"
        staging.mkdir()
        write_add_sub(staging, "add_sub")
        write_ensemble(staging, "pipeline", PIPELINE)
        for name in ("pipeline", "add_sub"):
            shutil.move(staging / name, repository / name)
        with grpcclient.InferenceServerClient(server.grpc_url) as c:
            deadline = time.monotonic() + 30
            while not c.is_model_ready("pipeline") and time.monotonic() < deadline:
                time.sleep(0.1)
            a = np.ones((1, VECTOR), dtype=np.float32)
            np.testing.assert_array_equal(infer(grpcclient, c, "pipeline", a, a).as_numpy("DIFF"),
                                          np.zeros_like(a))
        assert server.log().count("successfully loaded 'add_sub'") == 1
    finally:
        server.stop()
