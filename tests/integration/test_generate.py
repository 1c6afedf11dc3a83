"""Triton's generate extension (POST .../generate and .../generate_stream) on both HTTP
frontends, read with a plain HTTP client: the JSON mapping of Triton's http_server.cc, server-sent
events for decoupled and ordinary models, Triton's errors."""

from __future__ import annotations

import json

import pytest
import requests

from conftest import FRONTENDS, native_frontends_built, start_server, write_python_model
from test_decoupled import REPEAT_MODEL, REPEAT_TENSORS

TIMEOUT_S = 30

# Upper-cases TEXT when the request's `upper` parameter says so, and answers the request's
# parameters as JSON.
GEN_MODEL = '''
import json

import numpy as np
import triton_python_backend_utils as pb_utils


class TritonPythonModel:
    def execute(self, requests):
        responses = []
        for request in requests:
            text = pb_utils.get_input_tensor_by_name(request, "TEXT").as_numpy()
            parameters = json.loads(request.parameters())
            if parameters.get("upper"):
                text = np.array([t.upper() for t in text.flat], dtype=np.object_)
            responses.append(pb_utils.InferenceResponse([
                pb_utils.Tensor("OUT", text),
                pb_utils.Tensor("PARAMETERS", np.array([json.dumps(parameters, sort_keys=True)],
                                                       dtype=np.object_))]))
        return responses
'''

GEN_TENSORS = """
input [ { name: "TEXT" data_type: TYPE_STRING dims: [ -1 ] } ]
output [
  { name: "OUT" data_type: TYPE_STRING dims: [ -1 ] },
  { name: "PARAMETERS" data_type: TYPE_STRING dims: [ 1 ] }
]
"""

# Two-by-something FP32 input: the shape follows the fixed dimension.
PAIRS_MODEL = '''
import triton_python_backend_utils as pb_utils


class TritonPythonModel:
    def execute(self, requests):
        return [pb_utils.InferenceResponse([pb_utils.Tensor(
            "SUM", pb_utils.get_input_tensor_by_name(r, "X").as_numpy().sum(axis=1))])
            for r in requests]
'''

PAIRS_TENSORS = """
input [ { name: "X" data_type: TYPE_FP32 dims: [ -1, 2 ] } ]
output [ { name: "SUM" data_type: TYPE_FP32 dims: [ -1 ] } ]
"""

ONE_RESPONSE = ("generate expects model to produce exactly 1 response, use generate stream for "
                "model that generates various number of responses")


@pytest.fixture(scope="module", params=FRONTENDS)
def server(request, tmp_path_factory):
    if request.param == "native" and not native_frontends_built():
        pytest.skip("pyserve was built without the native frontends")
    root = tmp_path_factory.mktemp("generate_repo")
    write_python_model(root, "gen", GEN_TENSORS, GEN_MODEL)
    write_python_model(root, "pairs", PAIRS_TENSORS, PAIRS_MODEL)
    write_python_model(root, "repeat", REPEAT_TENSORS, REPEAT_MODEL)
    process = start_server([root], tmp_path_factory.mktemp("logs") / "generate.log",
                           "--grpc-frontend", request.param, "--http-frontend", request.param)
    yield process
    process.stop()


def post(server, path: str, body) -> requests.Response:
    data = body if isinstance(body, (str, bytes)) else json.dumps(body)
    return requests.post(f"http://{server.http_url}{path}", data=data, timeout=TIMEOUT_S)


def events(answer: requests.Response) -> list[dict]:
    """The server-sent events of a body, each `data: <json>` and a blank line."""
    text = answer.content.decode()
    assert text.endswith("\n\n") or text == ""
    chunks = [c for c in text.split("\n\n") if c]
    assert all(c.startswith("data: ") for c in chunks), text
    return [json.loads(c[len("data: "):]) for c in chunks]


def test_generate_maps_keys_to_inputs_and_parameters(server):
    answer = post(server, "/v2/models/gen/generate",
                  {"id": "42", "TEXT": "hello", "parameters": {"upper": True, "n": 3}, "x": 1.5})
    assert answer.status_code == 200 and answer.headers["Content-Type"] == "application/json"
    # Triton's compact JSON, keys sorted; one element as a plain value; "id" is a parameter too
    assert answer.text == ('{"OUT":"HELLO","PARAMETERS":"{\\"id\\": \\"42\\", \\"n\\": 3, '
                           '\\"upper\\": true, \\"x\\": 1.5}","id":"42","model_name":"gen",'
                           '"model_version":"1"}')


def test_generate_arrays_and_versions(server):
    answer = post(server, "/v2/models/gen/versions/1/generate", {"TEXT": ["a", "b"]})
    assert answer.status_code == 200
    document = answer.json()
    assert document["OUT"] == ["a", "b"] and document["model_version"] == "1"
    assert "id" not in document
    pairs = post(server, "/v2/models/pairs/generate", {"X": [1, 2, 3, 4, 5, 6]})
    assert pairs.status_code == 200 and pairs.json()["SUM"] == [3.0, 7.0, 11.0]


def test_generate_refuses_what_does_not_fit(server):
    answer = post(server, "/v2/models/pairs/generate", {"X": [1, 2, 3]})
    assert answer.status_code == 400
    assert answer.json() == {"error": "The schema can not convert input 'X' to tensor with "
                                      "proper shape"}
    answer = post(server, "/v2/models/gen/generate", {"TEXT": "a", "bad": [1]})
    assert answer.status_code == 400
    assert answer.json() == {"error": "parameter 'bad' has invalid type. It should be either "
                                      "'int', 'bool', or 'string'."}


def test_generate_stream_sends_each_response_as_an_event(server):
    answer = post(server, "/v2/models/repeat/generate_stream", {"IN": [5, 6, 7], "DELAY": 1,
                                                                "id": "s"})
    assert answer.status_code == 200
    assert answer.headers["Content-Type"] == "text/event-stream; charset=utf-8"
    assert events(answer) == [
        {"IDX": i, "OUT": value, "id": "s", "model_name": "repeat", "model_version": "1"}
        for i, value in enumerate([5, 6, 7])]
    # No response at all: an empty stream.
    empty = post(server, "/v2/models/repeat/generate_stream", {"IN": [], "DELAY": 0})
    assert empty.status_code == 200 and events(empty) == []


def test_generate_stream_of_an_ordinary_model(server):
    answer = post(server, "/v2/models/gen/generate_stream", {"TEXT": "one"})
    assert answer.status_code == 200
    (document,) = events(answer)
    assert document["OUT"] == "one"


def test_generate_needs_exactly_one_response(server):
    answer = post(server, "/v2/models/repeat/generate", {"IN": [1, 2], "DELAY": 0})
    assert answer.status_code == 200  # the status of the first response, as Triton's
    assert answer.json() == {"error": ONE_RESPONSE}
    one = post(server, "/v2/models/repeat/generate", {"IN": [9], "DELAY": 0})
    assert one.status_code == 200 and one.json()["OUT"] == 9
