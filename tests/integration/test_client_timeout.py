"""Triton's test-build environment variables for client timeouts, on both frontends:
TRITONSERVER_SERVER_DELAY_GRPC_RESPONSE_SEC delays the answer of every gRPC call but
inference, so that a client whose timeout is shorter gets DEADLINE_EXCEEDED
(qa/L0_client_timeout); TRITONSERVER_DELAY_GRPC_PROCESS delays taking a ModelInfer call
(qa/L0_request_cancellation)."""

from __future__ import annotations

import time

import numpy as np
import pytest

from conftest import EXAMPLES, FRONTENDS, native_frontends_built, start_server

DELAY_S = 2
SHORT_S, LONG_S = 0.2, 10  # client timeouts: L0_client_timeout's 0.1 s, with room on a busy host


def _start(frontend: str, tmp_path_factory, variable: str, value: int):
    """A server on `simple` with one of the variables set."""
    if frontend == "native" and not native_frontends_built():
        pytest.skip("pyserve was built without the native frontends")
    logs = tmp_path_factory.mktemp(variable.lower())
    return start_server([EXAMPLES], logs / "server.log", "--model-control-mode", "explicit",
                        "--load-model=simple", "--grpc-frontend", frontend,
                        env={variable: str(value)})


@pytest.fixture(scope="module", params=FRONTENDS)
def server(request, tmp_path_factory):
    process = _start(request.param, tmp_path_factory,
                     "TRITONSERVER_SERVER_DELAY_GRPC_RESPONSE_SEC", DELAY_S)
    yield process
    assert process.stop() == 0


CALLS = {
    "is_server_live": lambda c, t: c.is_server_live(client_timeout=t),
    "is_server_ready": lambda c, t: c.is_server_ready(client_timeout=t),
    "is_model_ready": lambda c, t: c.is_model_ready("simple", client_timeout=t),
    "get_server_metadata": lambda c, t: c.get_server_metadata(client_timeout=t),
    "get_model_metadata": lambda c, t: c.get_model_metadata("simple", client_timeout=t),
    "get_model_config": lambda c, t: c.get_model_config("simple", client_timeout=t),
    "get_inference_statistics": lambda c, t: c.get_inference_statistics("simple", client_timeout=t),
    "get_model_repository_index": lambda c, t: c.get_model_repository_index(client_timeout=t),
    "unknown_model_metadata": lambda c, t: c.get_model_metadata("nothing", client_timeout=t),
}


@pytest.mark.parametrize("call", CALLS)
def test_non_inference_calls_are_delayed(server, call):
    import tritonclient.grpc as grpcclient
    from tritonclient.utils import InferenceServerException

    client = grpcclient.InferenceServerClient(server.grpc_url)
    with pytest.raises(InferenceServerException) as info:
        CALLS[call](client, SHORT_S)
    assert "Deadline Exceeded" in str(info.value)
    started = time.monotonic()
    try:
        CALLS[call](client, LONG_S)
    except InferenceServerException as e:  # the unknown model's refusal, delayed as well
        assert "nothing" in e.message()
    assert time.monotonic() - started >= DELAY_S - 0.1
    client.close()


def test_inference_is_not_delayed(server):
    import tritonclient.grpc as grpcclient

    client = grpcclient.InferenceServerClient(server.grpc_url)
    inputs = []
    for name in ("INPUT0", "INPUT1"):
        inputs.append(grpcclient.InferInput(name, [1, 16], "INT32"))
        inputs[-1].set_data_from_numpy(np.ones((1, 16), np.int32))
    result = client.infer("simple", inputs, client_timeout=DELAY_S / 2)
    np.testing.assert_array_equal(result.as_numpy("OUTPUT0"), np.full((1, 16), 2))
    client.close()


PROCESS_DELAY_S = 2


@pytest.fixture(scope="module", params=FRONTENDS)
def late_server(request, tmp_path_factory):
    process = _start(request.param, tmp_path_factory,
                     "TRITONSERVER_DELAY_GRPC_PROCESS", PROCESS_DELAY_S * 1000)
    yield process
    assert process.stop() == 0


def test_inference_taken_late_is_not_computed_for_a_client_gone(late_server):
    """TRITONSERVER_DELAY_GRPC_PROCESS (qa/L0_request_cancellation): a ModelInfer call is taken
    that many milliseconds after it arrives; one whose client gave up meanwhile is never run."""
    import tritonclient.grpc as grpcclient
    from tritonclient.utils import InferenceServerException

    client = grpcclient.InferenceServerClient(late_server.grpc_url)
    inputs = []
    for name in ("INPUT0", "INPUT1"):
        inputs.append(grpcclient.InferInput(name, [1, 16], "INT32"))
        inputs[-1].set_data_from_numpy(np.ones((1, 16), np.int32))
    with pytest.raises(InferenceServerException, match="Deadline Exceeded"):
        client.infer("simple", inputs, client_timeout=SHORT_S)
    started = time.monotonic()
    result = client.infer("simple", inputs, client_timeout=LONG_S)
    assert time.monotonic() - started >= PROCESS_DELAY_S - 0.1
    np.testing.assert_array_equal(result.as_numpy("OUTPUT0"), np.full((1, 16), 2))
    # The first call was taken (and dropped) before the second: only the second ran.
    stats = client.get_inference_statistics("simple", as_json=True)["model_stats"][0]
    assert int(stats["inference_stats"]["success"]["count"]) == 1
    assert client.is_server_live(client_timeout=SHORT_S)  # other calls are not delayed
    client.close()
