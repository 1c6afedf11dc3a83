"""Triton's logging extension on both frontends and both protocols: the settings read and
changed (LogSettings, /v2/logging), taking effect at once, refused with Triton's texts."""

from __future__ import annotations

import re

import pytest
import requests
import tritonclient.grpc as grpcclient
import tritonclient.http as httpclient
from tritonclient.utils import InferenceServerException

from conftest import EXAMPLES, FRONTENDS, start_server


@pytest.fixture(scope="module", params=FRONTENDS)
def server(request, tmp_path_factory):
    logs = tmp_path_factory.mktemp("logging")
    process = start_server([EXAMPLES], logs / "stdout.log", "--model-control-mode", "explicit",
                           "--grpc-frontend", request.param, "--http-frontend", request.param)
    process.log_file = logs / "server.log"
    yield process
    assert process.stop() == 0


def settings(protocol: str, server, changes: dict | None = None) -> dict:
    if protocol == "http":
        with httpclient.InferenceServerClient(server.http_url) as client:
            return (client.update_log_settings(changes) if changes is not None
                    else client.get_log_settings())
    with grpcclient.InferenceServerClient(server.grpc_url) as client:
        answer = (client.update_log_settings(changes, as_json=True) if changes is not None
                  else client.get_log_settings(as_json=True))
    return {key: next(iter(value.values())) for key, value in answer["settings"].items()}


DEFAULTS = {"log_file": "", "log_info": True, "log_warning": True, "log_error": True,
            "log_verbose_level": 0, "log_format": "default"}


@pytest.mark.parametrize("protocol", ["grpc", "http"])
def test_settings_are_read_changed_and_take_effect(server, protocol):
    assert settings(protocol, server) == DEFAULTS
    assert "logging" in requests.get(f"http://{server.http_url}/v2").json()["extensions"]
    try:
        changed = settings(protocol, server, {"log_format": "ISO8601", "log_verbose_level": 1})
        assert changed == {**DEFAULTS, "log_format": "ISO8601", "log_verbose_level": 1}
        before = len(server.log())
        with httpclient.InferenceServerClient(server.http_url) as client:
            client.load_model("simple")  # logs "successfully loaded" at INFO
            client.unload_model("simple")
        lines = server.log()[before:].splitlines()
        loaded = next(line for line in lines if "successfully loaded 'simple'" in line)
        assert re.match(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ I \d+ ", loaded), loaded
        settings(protocol, server, {"log_info": False})
        before = len(server.log())
        with httpclient.InferenceServerClient(server.http_url) as client:
            client.load_model("simple")
            client.unload_model("simple")
        assert "successfully loaded" not in server.log()[before:]
    finally:
        assert settings(protocol, server, {k: v for k, v in DEFAULTS.items()
                                           if k != "log_file"}) == DEFAULTS


@pytest.mark.parametrize("changes, grpc_answer, http_answer", [
    ({"log_file": "/tmp/elsewhere.log"},
     ("StatusCode.UNIMPLEMENTED", "log file location can not be updated through network protocol"),
     ("501", "log file location can not be updated through network protocol")),
    ({"log_format": "bad"},
     ("StatusCode.INVALID_ARGUMENT", "invalid argument for log_format, got: bad"),
     ("503", "invalid argument for --log_format, got: bad")),
])
@pytest.mark.parametrize("protocol", ["grpc", "http"])
def test_refusals_are_tritons(server, protocol, changes, grpc_answer, http_answer):
    with pytest.raises(InferenceServerException) as refused:
        settings(protocol, server, changes)
    assert (refused.value.status(), refused.value.message()) == (
        grpc_answer if protocol == "grpc" else http_answer)
    assert settings(protocol, server) == DEFAULTS


def test_http_type_errors_are_tritons(server):
    url = f"http://{server.http_url}/v2/logging"
    answer = requests.post(url, json={"log_info": "yes"}, timeout=10)
    assert (answer.status_code, answer.json()) == (
        500, {"error": "attempt to access JSON non-boolean as boolean"})
    assert requests.post(url, json=[1], timeout=10).json() == DEFAULTS  # not an object: ignored
