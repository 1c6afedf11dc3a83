"""--model-namespacing on real servers, through tritonclient, on both frontends: Triton's QA
L0_model_namespacing (its four repository pairs, in poll and explicit modes) and L0_metrics'
namespace label.

Each case has two repositories, addsub_repo and subadd_repo. An `addsub` model answers
OUTPUT0 = INPUT0 + INPUT1 and OUTPUT1 = INPUT0 - INPUT1, a `subadd` one the other way round;
`simple_*` ensembles call one such model in one step.
"""

from __future__ import annotations

import shutil
import time
import urllib.request
from pathlib import Path

import numpy as np
import pytest
import tritonclient.grpc as grpcclient
import tritonclient.http as httpclient
from tritonclient.utils import InferenceServerException

from conftest import FRONTENDS, native_frontends_built, start_server, write_python_model

TENSORS = "".join(f'{kind} {{ name: "{name}" data_type: TYPE_INT32 dims: [ 16 ] }}\n'
                  for kind, name in (("input", "INPUT0"), ("input", "INPUT1"),
                                     ("output", "OUTPUT0"), ("output", "OUTPUT1")))

SOURCE = """import triton_python_backend_utils as pb_utils


class TritonPythonModel:
    def execute(self, requests):
        responses = []
        for request in requests:
            a = pb_utils.get_input_tensor_by_name(request, "INPUT0").as_numpy()
            b = pb_utils.get_input_tensor_by_name(request, "INPUT1").as_numpy()
            responses.append(pb_utils.InferenceResponse(
                [pb_utils.Tensor("OUTPUT0", FIRST), pb_utils.Tensor("OUTPUT1", SECOND)]))
        return responses
"""
KINDS = {"addsub": SOURCE.replace("FIRST", "a + b").replace("SECOND", "a - b"),
         "subadd": SOURCE.replace("FIRST", "a - b").replace("SECOND", "a + b")}


def write_composing(repository: Path, name: str, kind: str) -> None:
    write_python_model(repository, name, TENSORS, KINDS[kind])


def write_simple_ensemble(repository: Path, name: str, step_model: str) -> None:
    (repository / name / "1").mkdir(parents=True)
    maps = "".join(f' {kind}_map {{ key: "{t}" value: "{t}" }}'
                   for kind, t in (("input", "INPUT0"), ("input", "INPUT1"),
                                   ("output", "OUTPUT0"), ("output", "OUTPUT1")))
    (repository / name / "config.pbtxt").write_text(
        f'name: "{name}"\nplatform: "ensemble"\nmax_batch_size: 0\n{TENSORS}'
        f'ensemble_scheduling {{ step [ {{ model_name: "{step_model}" model_version: -1'
        f'{maps} }} ] }}\n')


def build_no_duplication(root: Path) -> None:
    write_composing(root / "addsub_repo", "composing_addsub", "addsub")
    write_simple_ensemble(root / "addsub_repo", "simple_addsub", "composing_addsub")
    write_composing(root / "subadd_repo", "composing_subadd", "subadd")
    write_simple_ensemble(root / "subadd_repo", "simple_subadd", "composing_subadd")


def build_duplication(root: Path) -> None:
    """Each repository's ensemble calls `composing_model`, which both repositories hold."""
    write_composing(root / "addsub_repo", "composing_model", "addsub")
    write_simple_ensemble(root / "addsub_repo", "simple_addsub", "composing_model")
    write_composing(root / "subadd_repo", "composing_model", "subadd")
    write_simple_ensemble(root / "subadd_repo", "simple_subadd", "composing_model")


def build_ensemble_duplication(root: Path) -> None:
    """Both repositories hold an ensemble `simple_ensemble`, each calling its own model."""
    write_composing(root / "addsub_repo", "composing_addsub", "addsub")
    write_simple_ensemble(root / "addsub_repo", "simple_ensemble", "composing_addsub")
    write_composing(root / "subadd_repo", "composing_subadd", "subadd")
    write_simple_ensemble(root / "subadd_repo", "simple_ensemble", "composing_subadd")


A = np.arange(16, dtype=np.int32)
B = np.full(16, 3, dtype=np.int32)
EXPECTED = {"addsub": (A + B, A - B), "subadd": (A - B, A + B)}


def ambiguity(name: str, count: int = 2) -> str:
    return (f"There are {count} identifiers of model '{name}' in global map, model namespace "
            "must be provided to resolve ambiguity.")


class Clients:
    """One HTTP and one gRPC client of a server: every check is made through both."""

    def __init__(self, server) -> None:
        self.server = server
        self.http = httpclient.InferenceServerClient(server.http_url)
        self.grpc = grpcclient.InferenceServerClient(server.grpc_url)

    def close(self) -> None:
        self.http.close()
        self.grpc.close()

    def infer(self, module, client, model: str):
        inputs = []
        for name, data in (("INPUT0", A), ("INPUT1", B)):
            tensor = module.InferInput(name, [16], "INT32")
            tensor.set_data_from_numpy(data)
            inputs.append(tensor)
        result = client.infer(model, inputs)
        return result.as_numpy("OUTPUT0"), result.as_numpy("OUTPUT1")

    def answers(self, model: str) -> str | None:
        """'addsub' or 'subadd', as both protocols agree the model answers; None if not."""
        kinds = set()
        for module, client in ((httpclient, self.http), (grpcclient, self.grpc)):
            try:
                first, second = self.infer(module, client, model)
            except InferenceServerException:
                return None
            kinds |= {kind for kind, (o0, o1) in EXPECTED.items()
                      if np.array_equal(first, o0) and np.array_equal(second, o1)}
        return kinds.pop() if len(kinds) == 1 else None

    def check(self, expected: dict[str, str]) -> None:
        for model, kind in expected.items():
            for module, client in ((httpclient, self.http), (grpcclient, self.grpc)):
                first, second = self.infer(module, client, model)
                np.testing.assert_array_equal(first, EXPECTED[kind][0], err_msg=model)
                np.testing.assert_array_equal(second, EXPECTED[kind][1], err_msg=model)

    def check_ambiguous(self, model: str) -> None:
        """Triton's refusal, code and text, for every request naming `model`."""
        with pytest.raises(InferenceServerException) as refused:
            self.infer(httpclient, self.http, model)
        assert refused.value.message() == ambiguity(model)
        assert refused.value.status() == "400"  # INVALID_ARG
        with pytest.raises(InferenceServerException) as refused:
            self.infer(grpcclient, self.grpc, model)
        assert refused.value.message() == ambiguity(model)
        assert refused.value.status() == "StatusCode.INVALID_ARGUMENT"
        assert not self.http.is_model_ready(model) and not self.grpc.is_model_ready(model)
        with pytest.raises(InferenceServerException, match="ambiguity"):
            self.http.get_model_metadata(model)
        with pytest.raises(InferenceServerException, match="ambiguity"):
            self.grpc.get_model_config(model)

    def wait_for(self, model: str, kind: str, timeout: float = 60) -> None:
        """Until `model` answers as `kind` (a poll has seen the repositories change)."""
        deadline = time.monotonic() + timeout
        while self.answers(model) != kind:
            assert time.monotonic() < deadline, (model, kind, self.server.log())
            time.sleep(0.1)


@pytest.fixture(params=FRONTENDS)
def frontend(request) -> str:
    if request.param == "native" and not native_frontends_built():
        pytest.skip("pyserve was built without the native frontends")
    return request.param


@pytest.fixture(params=["poll", "explicit"])
def mode(request) -> str:
    return request.param


@pytest.fixture
def serve(tmp_path, frontend, mode):
    """serve(build) -> Clients of a server with namespacing on over the two repositories
    `build` writes under tmp_path."""
    started = []

    def start(build) -> Clients:
        build(tmp_path)
        server = start_server(
            [tmp_path / "addsub_repo", tmp_path / "subadd_repo"], tmp_path / "server.log",
            "--model-namespacing=true", "--model-control-mode", mode,
            "--repository-poll-secs", "0.5", "--grpc-frontend", frontend,
            "--http-frontend", frontend)
        clients = Clients(server)
        started.append(clients)
        assert clients.http.is_server_ready() and clients.grpc.is_server_live()
        return clients

    yield start
    for clients in started:
        clients.close()
        clients.server.stop()


def test_no_duplication(serve, mode):
    clients = serve(build_no_duplication)
    if mode == "explicit":  # loading the ensembles loads the models they compose
        for model in ("simple_addsub", "simple_subadd"):
            clients.http.load_model(model)
    clients.check({"simple_addsub": "addsub", "composing_addsub": "addsub",
                   "simple_subadd": "subadd", "composing_subadd": "subadd"})


def test_duplication(serve, mode, tmp_path):
    clients = serve(build_duplication)
    if mode == "explicit":
        for model in ("simple_addsub", "simple_subadd"):
            clients.grpc.load_model(model)
    # Each ensemble calls the composing model of its own repository.
    clients.check({"simple_addsub": "addsub", "simple_subadd": "subadd"})
    clients.check_ambiguous("composing_model")
    # Both load side by side: the repository index lists the name once per namespace, ready.
    entries = [e for e in clients.http.get_model_repository_index()
               if e["name"] == "composing_model"]
    assert [e["state"] for e in entries] == ["READY", "READY"]


def test_ensemble_duplication(serve, mode):
    clients = serve(build_ensemble_duplication)
    if mode == "explicit":  # both repositories' ensembles load, each with its own model
        clients.http.load_model("simple_ensemble")
    clients.check({"composing_addsub": "addsub", "composing_subadd": "subadd"})
    clients.check_ambiguous("simple_ensemble")


def test_dynamic_resolution(serve, mode, tmp_path):
    """addsub_repo's composing_model goes away: both ensembles use subadd_repo's, which is
    then served by its name; it comes back: each ensemble uses its own repository's again."""
    away, home = tmp_path / "composing_model", tmp_path / "addsub_repo" / "composing_model"
    if mode == "poll":
        clients = serve(build_duplication)
        clients.check({"simple_addsub": "addsub", "simple_subadd": "subadd"})
        shutil.move(home, away)
        clients.wait_for("simple_addsub", "subadd")
    else:
        build_duplication(tmp_path)
        shutil.move(home, away)
        clients = serve(lambda root: None)
        for model in ("simple_addsub", "simple_subadd"):
            clients.http.load_model(model)
    clients.check({"simple_subadd": "subadd", "simple_addsub": "subadd",
                   "composing_model": "subadd"})

    shutil.move(away, home)
    if mode == "poll":
        clients.wait_for("simple_addsub", "addsub")
    else:  # loading one ensemble loads the model that came back, and relinks the ensemble
        clients.grpc.load_model("simple_addsub")
    clients.check({"simple_addsub": "addsub", "simple_subadd": "subadd"})
    clients.check_ambiguous("composing_model")


def metrics_text(server) -> str:
    with urllib.request.urlopen(f"http://127.0.0.1:{server.metrics_port}/metrics") as answer:
        return answer.read().decode()


@pytest.mark.parametrize("mode", ["poll"])
def test_metrics_carry_the_namespace_label(serve, tmp_path):
    """L0_metrics' test_model_namespacing_label_with_namespace_on: each version's families
    carry its repository as `namespace`, so the two composing_model series differ."""
    clients = serve(build_duplication)
    clients.check({"simple_addsub": "addsub", "simple_subadd": "subadd"})
    samples = [f'nv_inference_request_success{{model="composing_model",'
               f'namespace="{tmp_path / repository}",version="1"}} 2'
               for repository in ("addsub_repo", "subadd_repo")]
    # A batch is counted right after its responses are handed back: wait for the last one.
    deadline = time.monotonic() + 30
    while not all(sample in metrics_text(clients.server) for sample in samples):
        assert time.monotonic() < deadline, metrics_text(clients.server)
        time.sleep(0.05)


def test_without_namespacing_nothing_changes(tmp_path):
    """L0_metrics' test_model_namespacing_label_with_namespace_off, and a name in two
    repositories still refused as before namespacing existed."""
    build_duplication(tmp_path)
    server = start_server([tmp_path / "addsub_repo", tmp_path / "subadd_repo"],
                          tmp_path / "server.log", "--model-namespacing=false",
                          "--exit-on-error=false")
    try:
        with httpclient.InferenceServerClient(server.http_url) as c:
            assert not c.is_model_ready("composing_model")
            entry, = [e for e in c.get_model_repository_index()
                      if e["name"] == "composing_model"]
            assert "model appears in two or more repositories" in entry["reason"]
        assert 'namespace="' not in metrics_text(server)
    finally:
        server.stop()


@pytest.mark.parametrize("mode", ["explicit"])
def test_unknown_and_unloaded_names_get_tritons_texts(serve):
    """With namespacing, Triton looks a name up in its global map first: a name never loaded
    is INVALID_ARG, one unloaded since is NOT_FOUND, each with Triton's text."""
    clients = serve(build_no_duplication)
    clients.http.load_model("simple_addsub")
    clients.check({"composing_addsub": "addsub"})
    clients.http.unload_model("composing_addsub")
    for model, text, http_status, grpc_status in (
            ("ghost", "Request for unknown model: 'ghost' is not found", "400",
             "StatusCode.INVALID_ARGUMENT"),
            ("composing_addsub", "Identifier of model 'composing_addsub' is not found in "
             "global map", "404", "StatusCode.NOT_FOUND")):
        for module, client, status in ((httpclient, clients.http, http_status),
                                       (grpcclient, clients.grpc, grpc_status)):
            with pytest.raises(InferenceServerException) as refused:
                clients.infer(module, client, model)
            assert (refused.value.message(), refused.value.status()) == (text, status)


@pytest.mark.parametrize("mode", ["explicit"])
def test_unloading_an_ensemble_with_dependents_unloads_the_models_it_used(serve):
    """Triton's UnloadModelAndDependents: the models the ensemble's steps resolved to, not
    the other repository's model of the same name, which its name then reaches."""
    clients = serve(build_duplication)
    for model in ("simple_addsub", "simple_subadd"):
        clients.http.load_model(model)
    clients.check_ambiguous("composing_model")
    clients.grpc.unload_model("simple_addsub", unload_dependents=True)
    assert not clients.http.is_model_ready("simple_addsub")
    clients.check({"composing_model": "subadd", "simple_subadd": "subadd"})
