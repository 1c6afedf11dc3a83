"""Triton's rate limiter (--rate-limit=execution_count): two Python models (one without a
batcher, one with the dynamic batcher) whose instances share a resource of count 1 never
execute at once, and do with --rate-limit=off; two models of priority 1 and 2 sharing it,
both with work queued, execute two to one; bad
--rate-limit and --rate-limit-resource values and configs whose resources cannot be served
are refused with Triton's texts."""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pytest
import tritonclient.grpc as grpcclient
import tritonclient.http as httpclient
from tritonclient.utils import InferenceServerException

from conftest import (FRONTENDS, native_frontends_built, pending_requests, start_server, tensor,
                      wait_until)
from pyserve import cli

# Each execution marks that it started, then holds its instance until the test releases it
# or the other model has started too, and answers whether they overlapped: the other started
# before this one finished, and had not finished before this one started.
MODEL = '''
import time
from pathlib import Path

import numpy as np
import triton_python_backend_utils as pb_utils

MARKS = Path({marks!r})


class TritonPythonModel:
    def initialize(self, args):
        self.name = args["model_name"]
        self.other = "second" if self.name == "first" else "first"

    def execute(self, requests):
        other_done_before = (MARKS / (self.other + ".finished")).exists()
        (MARKS / (self.name + ".started")).touch()
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline and not (MARKS / (self.name + ".release")).exists() \\
                and not (MARKS / (self.other + ".started")).exists():
            time.sleep(0.001)
        overlapped = (MARKS / (self.other + ".started")).exists() and not other_done_before
        (MARKS / (self.name + ".finished")).touch()
        return [pb_utils.InferenceResponse([pb_utils.Tensor("OVERLAPPED", np.full(
                    pb_utils.get_input_tensor_by_name(r, "X").as_numpy().shape, overlapped))])
                for r in requests]
'''

CONFIG = '''name: "{name}"
backend: "python"
{batching}
input [ {{ name: "X" data_type: TYPE_INT32 dims: [ 1 ] }} ]
output [ {{ name: "OVERLAPPED" data_type: TYPE_BOOL dims: [ 1 ] }} ]
instance_group [ {{ kind: KIND_CPU count: 1
                   rate_limiter {{ resources [ {resources} ] priority: {priority} }} }} ]
'''


def _write(repository: Path, name: str, marks: Path, resources: str = '{ name: "R" count: 1 }',
           priority: int = 1, batching: str = "", model: str = MODEL) -> None:
    (repository / name / "1").mkdir(parents=True)
    (repository / name / "1" / "model.py").write_text(model.format(marks=str(marks)))
    (repository / name / "config.pbtxt").write_text(
        CONFIG.format(name=name, resources=resources, priority=priority, batching=batching))


@pytest.fixture(scope="module", params=[(f, m) for f in FRONTENDS
                                        for m in ("execution_count", "off")],
                ids=lambda p: f"{p[0]}-{p[1]}")
def server(request, tmp_path_factory):
    frontend, mode = request.param
    if frontend == "native" and not native_frontends_built():
        pytest.skip("pyserve was built without the native frontends")
    root = tmp_path_factory.mktemp("rate-limiter")
    marks = root / "marks"
    marks.mkdir()
    _write(root / "models", "first", marks)
    _write(root / "models", "second", marks, priority=2,
           batching="max_batch_size: 4\ndynamic_batching { }")
    server = start_server([root / "models"], root / "server.log", "--rate-limit", mode,
                          "--grpc-frontend", frontend, "--http-frontend", frontend)
    server.marks, server.mode = marks, mode
    yield server
    server.stop()


def _infer(module, url: str, model: str) -> bool:
    shape = [1, 1] if model == "second" else [1]  # second batches
    with module.InferenceServerClient(url) as client:
        result = client.infer(model, [tensor(module, "X", np.zeros(shape, np.int32), "INT32")])
        return bool(result.as_numpy("OVERLAPPED").flat[0])


@pytest.mark.parametrize("protocol", ["grpc", "http"])
def test_models_sharing_a_resource_never_execute_at_once(server, protocol):
    module = grpcclient if protocol == "grpc" else httpclient
    url = server.grpc_url if protocol == "grpc" else server.http_url
    for mark in server.marks.iterdir():
        mark.unlink()
    with ThreadPoolExecutor(2) as pool:
        first = pool.submit(_infer, module, url, "first")
        wait_until((server.marks / "first.started").exists, "first to start")
        second = pool.submit(_infer, module, url, "second")
        if server.mode == "off":  # first holds until second has started: they overlap
            assert first.result(timeout=60) and second.result(timeout=60)
            return
        # second's request waits for the resource first holds.
        wait_until(lambda: pending_requests(server, "second") == 1, "second's request to queue")
        assert not (server.marks / "second.started").exists()
        (server.marks / "first.release").touch()
        assert not first.result(timeout=60)
        assert not second.result(timeout=60)
    assert (server.marks / "second.started").stat().st_mtime_ns >= \
        (server.marks / "first.finished").stat().st_mtime_ns


# The first execution holds the resource until the test opens the gate (every request queued
# by then); each execution appends its model's name to the order file.
ORDERED_MODEL = '''
import time
from pathlib import Path

import numpy as np
import triton_python_backend_utils as pb_utils

MARKS = Path({marks!r})


class TritonPythonModel:
    def initialize(self, args):
        self.name = args["model_name"]

    def execute(self, requests):
        gate = MARKS / "gate"
        if not gate.exists():
            (MARKS / "started").touch()
            deadline = time.monotonic() + 60
            while not gate.exists() and time.monotonic() < deadline:
                time.sleep(0.001)
        with open(MARKS / "order", "a") as order:
            order.write(self.name + "\\n")
        return [pb_utils.InferenceResponse([pb_utils.Tensor("OVERLAPPED", np.zeros([1], bool))])
                for _ in requests]
'''


@pytest.fixture(scope="module", params=FRONTENDS)
def priority_server(request, tmp_path_factory):
    if request.param == "native" and not native_frontends_built():
        pytest.skip("pyserve was built without the native frontends")
    root = tmp_path_factory.mktemp("rate-limiter-priority")
    marks = root / "marks"
    marks.mkdir()
    # A pair per protocol: executions count from the model's load, as in Triton.
    for protocol in ("grpc", "http"):
        for name, priority in (("often", 1), ("seldom", 2)):
            _write(root / "models", f"{name}_{protocol}", marks, priority=priority,
                   model=ORDERED_MODEL)
    server = start_server([root / "models"], root / "server.log", "--rate-limit=execution_count",
                          "--grpc-frontend", request.param, "--http-frontend", request.param)
    server.marks = marks
    yield server
    server.stop()


@pytest.mark.parametrize("protocol", ["grpc", "http"])
def test_priority_two_runs_half_as_often_while_both_have_work(priority_server, protocol):
    """often (priority 1) and seldom (priority 2) share R (count 1). With all their requests
    queued before the first execution ends, the limiter serves the lowest executions times
    priority first: when seldom starts its last execution (its N-th), often has run 2N-2 or
    2N-1 times. (Which of the two the limiter saw waiting first may shift that by a turn, so
    one more is allowed either side; ignoring priority would give about N.)"""
    server = priority_server
    module = grpcclient if protocol == "grpc" else httpclient
    url = server.grpc_url if protocol == "grpc" else server.http_url
    for mark in server.marks.iterdir():
        mark.unlink()
    high, low = f"often_{protocol}", f"seldom_{protocol}"
    seldom = 8
    often = 3 * seldom  # often never runs out of work before seldom's last execution
    with ThreadPoolExecutor(often + seldom + 1) as pool:
        first = pool.submit(_infer, module, url, high)
        wait_until((server.marks / "started").exists, "the first execution to hold R")
        rest = [pool.submit(_infer, module, url, model)
                for model in [high] * often + [low] * seldom]
        wait_until(lambda: (pending_requests(server, high),
                            pending_requests(server, low)) == (often, seldom),
                   "every request to queue")
        (server.marks / "gate").touch()
        for future in [first, *rest]:
            future.result(timeout=60)
    order = (server.marks / "order").read_text().split()
    assert order.count(high) == often + 1 and order.count(low) == seldom
    last_seldom = len(order) - 1 - order[::-1].index(low)
    assert 2 * seldom - 3 <= order[:last_seldom].count(high) <= 2 * seldom, order


@pytest.mark.parametrize("frontend", FRONTENDS)
def test_resources_the_server_cannot_give_are_refused_at_load(tmp_path, frontend):
    if frontend == "native" and not native_frontends_built():
        pytest.skip("pyserve was built without the native frontends")
    models = tmp_path / "models"
    _write(models, "greedy", tmp_path, resources='{ name: "R" count: 2 }')
    _write(models, "conflicting", tmp_path,
           resources='{ name: "S" global: true count: 1 }, { name: "S" count: 1 }')
    server = start_server([models], tmp_path / "server.log", "--rate-limit=execution_count",
                          "--rate-limit-resource=R:1", "--rate-limit-resource=S:1",
                          "--model-control-mode=explicit",
                          "--grpc-frontend", frontend, "--http-frontend", frontend)
    try:
        with httpclient.InferenceServerClient(server.http_url) as client:
            with pytest.raises(InferenceServerException) as refused:
                client.load_model("greedy")
            assert 'Resource count for "R" is limited to 1 which will prevent scheduling of ' \
                   'one or more model instances, the minimum required count is 2' \
                   in refused.value.message()
        with grpcclient.InferenceServerClient(server.grpc_url) as client:
            with pytest.raises(InferenceServerException) as refused:
                client.load_model("conflicting")
            assert 'Resource "S" is present as both global and device-specific resource in ' \
                   'the model configuration.' in refused.value.message()
    finally:
        server.stop()


@pytest.mark.parametrize("value,text", [
    ("R", "--rate-limit-resource option format is '<resource_name>:<count>:<device>' or "
          "'<resource_name>:<count>'. Got R"),
    ("R:1:0:2", "--rate-limit-resource option format is '<resource_name>:<count>:<device>' or "
                "'<resource_name>:<count>'. Got R:1:0:2"),
    ("R:many", "Invalid option value. Got many"),
    ("R:1:gpu", "Invalid option value. Got gpu"),
    ("R:-1", "Invalid option value. Got -1"),
    ("R:99999999999", "Provided option value is out of bound. Got 99999999999"),
])
def test_bad_rate_limit_resources_are_refused_with_tritons_text(value, text, capsys):
    with pytest.raises(SystemExit):
        cli._parser().parse_args(["serve", f"--rate-limit-resource={value}"])
    assert text in capsys.readouterr().err


def test_a_bad_rate_limit_mode_is_refused_with_tritons_text(capsys):
    with pytest.raises(SystemExit):
        cli._parser().parse_args(["serve", "--rate-limit=fast"])
    assert "invalid argument for --rate-limit" in capsys.readouterr().err
    args = cli._parser().parse_args(["serve", "--model-repository=.", "--rate-limit=EXECUTION_COUNT",
                                     "--rate-limit-resource=R:2:1", "--rate-limit-resource=S:3"])
    assert (args.rate_limit, args.rate_limit_resource) == ("execution_count",
                                                            [("R", 2, 1), ("S", 3, -1)])
