"""`pyserve serve` takes tritonserver's command line: every flag of `tritonserver --help`
(2.51) is served, accepted without effect with a line in the log, or refused with one line
naming it; ports are exclusive unless asked; per-service addresses, --id, the gRPC
keepalive and connection-age flags, and Triton's log formats."""

from __future__ import annotations

import re
import subprocess
import threading
from pathlib import Path

import grpc
import pytest
import tritonclient.grpc as grpcclient
import tritonclient.http as httpclient

from conftest import EXAMPLES, FRONTENDS, PYSERVE, OUTSIDE, start_server
from pyserve import cli, triton_flags

FLAGS = [line for line in (Path(__file__).parent.parent / "fixtures" /
                           "tritonserver-2.51-flags.txt").read_text().splitlines()
         if line.startswith("--")]

# A value of the right kind for flags whose value is not a number or a boolean (None: a flag
# without one).
SAMPLES = {"--model-repository": str(EXAMPLES), "--model-store": str(EXAMPLES),
           "--model-control-mode": "explicit", "--load-model": "simple",
           "--log-format": "ISO8601", "--backend-config": "default-max-batch-size=4",
           "--http-address": "127.0.0.1", "--grpc-address": "127.0.0.1",
           "--metrics-address": "127.0.0.1", "--id": "a", "--log-file": "/dev/null",
           "--model-config-name": "a", "--disable-auto-complete-config": None,
           "--grpc-infer-response-compression-level": "HIGH", "--host-policy": "cpu,cpu-cores=0",
           "--model-load-gpu-limit": "0:0.5", "--rate-limit": "execution_count",
           "--rate-limit-resource": "R:1",
           "--trace-config": "level=TIMESTAMPS", "--trace-level": "TIMESTAMPS",
           "--trace-file": "/dev/null"}


@pytest.mark.parametrize("flag", FLAGS)
def test_every_tritonserver_flag_is_taken(flag, capsys):
    value = SAMPLES.get(flag, "1")
    argv = ["serve", "--model-repository", str(EXAMPLES), flag if value is None else f"{flag}={value}"]
    args = cli._parser().parse_args(argv)  # a usage error would exit here
    if flag in triton_flags.UNSERVED:
        with pytest.raises(SystemExit) as refused:
            triton_flags.check_flags(args)
        assert str(refused.value) == f"pyserve: {flag} is not supported: " \
                                     f"{triton_flags.UNSERVED[flag]}"
    else:
        triton_flags.check_flags(args)


def test_a_bad_compression_level_is_refused_with_tritons_text(capsys):
    argv = ["serve", "--grpc-infer-response-compression-level=fast"]
    with pytest.raises(SystemExit):
        cli._parser().parse_args(argv)
    assert "invalid argument for --grpc_infer_response_compression_level" in \
        capsys.readouterr().err


def test_a_gpu_limit_not_of_the_form_is_refused_with_tritons_text(capsys):
    with pytest.raises(SystemExit):
        cli._parser().parse_args(["serve", "--model-load-gpu-limit=0.5"])
    assert "argument requires format <first>:<second>. Found: 0.5" in capsys.readouterr().err


def test_a_host_policy_not_of_the_form_is_refused_with_tritons_text(capsys):
    with pytest.raises(SystemExit):
        cli._parser().parse_args(["serve", "--host-policy=cpu"])
    assert "--host-policy option format is '<policy name>,<setting>=<value>'. Got cpu" in \
        capsys.readouterr().err


def test_the_unserved_flags_are_tritonservers():
    assert set(triton_flags.UNSERVED) | set(triton_flags.NO_COUNTERPART) <= set(FLAGS)


def run_second(*args: str, timeout: float = 60) -> subprocess.CompletedProcess:
    """A second server, expected to stop at start-up."""
    return subprocess.run([*PYSERVE, "serve", "--model-repository", str(EXAMPLES),
                           "--model-control-mode", "explicit", "--host", "127.0.0.1",
                           "--grpc-port", "0", "--http-port", "0", "--metrics-port", "0", *args],
                          capture_output=True, text=True, timeout=timeout, cwd=OUTSIDE)


@pytest.fixture(scope="module", params=FRONTENDS)
def server(request, tmp_path_factory):
    frontend = request.param
    process = start_server([EXAMPLES], tmp_path_factory.mktemp("cli") / f"{frontend}.log",
                           "--model-control-mode", "explicit", "--load-model", "simple",
                           "--grpc-frontend", frontend, "--http-frontend", frontend,
                           "--id", "pyserve-test", "--reuse-grpc-port", "true",
                           "--reuse-http-port", "true")
    process.frontend = frontend
    yield process
    assert process.stop() == 0


def test_a_port_in_use_stops_start_up(server):
    for name, flag, port in (("GRPC", "--grpc-port", server.grpc_port),
                             ("HTTP", "--http-port", server.http_port),
                             ("Metrics", "--metrics-port", server.metrics_port)):
        second = run_second("--grpc-frontend", server.frontend, "--http-frontend",
                            server.frontend, flag, str(port))
        assert second.returncode == 1, second.stderr
        assert (f"failed to start {name} service: Unavailable - Socket '127.0.0.1:{port}' "
                "already in use") in second.stderr


def test_shared_ports_when_both_servers_ask(server, tmp_path):
    second = start_server([EXAMPLES], tmp_path / "second.log", "--model-control-mode",
                          "explicit", "--grpc-frontend", server.frontend, "--http-frontend",
                          server.frontend, "--grpc-port", str(server.grpc_port),
                          "--reuse-grpc-port", "true", "--http-port", str(server.http_port),
                          "--reuse-http-port", "true")
    try:
        assert (second.grpc_port, second.http_port) == (server.grpc_port, server.http_port)
    finally:
        assert second.stop() == 0


def test_the_server_id_names_the_server(server):
    with grpcclient.InferenceServerClient(server.grpc_url) as client:
        assert client.get_server_metadata().name == "pyserve-test"
    with httpclient.InferenceServerClient(server.http_url) as client:
        assert client.get_server_metadata()["name"] == "pyserve-test"


@pytest.mark.parametrize("frontend", FRONTENDS)
def test_each_service_on_its_own_address(frontend, tmp_path):
    """--grpc-address and --http-address; metrics follow the HTTP address, as in Triton."""
    process = start_server([EXAMPLES], tmp_path / "server.log", "--model-control-mode",
                           "explicit", "--grpc-frontend", frontend, "--http-frontend", frontend,
                           "--grpc-address", "127.0.0.1", "--http-address", "127.0.0.2")
    try:
        log = process.log()
        assert re.search(r"Started GRPCInferenceService at 127\.0\.0\.1:\d+", log)
        assert re.search(r"Started HTTPService at 127\.0\.0\.2:\d+", log)
        assert re.search(r"Started Metrics Service at 127\.0\.0\.2:\d+", log)
        with httpclient.InferenceServerClient(f"127.0.0.2:{process.http_port}") as client:
            assert client.is_server_live()
        with grpcclient.InferenceServerClient(f"127.0.0.1:{process.grpc_port}") as client:
            assert client.is_server_live()
    finally:
        assert process.stop() == 0


@pytest.mark.parametrize("frontend", FRONTENDS)
def test_grpc_max_connection_age_closes_a_connection(frontend, tmp_path):
    """--grpc-max-connection-age (with its grace): the server ends a connection that lived
    that long (GOAWAY); the client's channel goes back to IDLE by itself."""
    process = start_server([EXAMPLES], tmp_path / "server.log", "--model-control-mode",
                           "explicit", "--grpc-frontend", frontend, "--grpc-max-connection-age",
                           "300", "--grpc-max-connection-age-grace", "300")
    try:
        states, idle_again = [], threading.Event()

        def seen(state):
            states.append(state)
            if grpc.ChannelConnectivity.READY in states and state == grpc.ChannelConnectivity.IDLE:
                idle_again.set()

        with grpc.insecure_channel(process.grpc_url) as channel:
            channel.subscribe(seen, try_to_connect=True)
            assert idle_again.wait(30), states
            channel.unsubscribe(seen)
    finally:
        assert process.stop() == 0


def test_log_format_iso8601(tmp_path):
    process = start_server([EXAMPLES], tmp_path / "server.log", "--model-control-mode",
                           "explicit", "--log-format", "ISO8601")
    try:
        line = next(line for line in process.log().splitlines() if "Started HTTPService" in line)
        assert re.fullmatch(r'\d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ I \d+ server\.py:\d+\] '
                            r'"Started HTTPService at 127\.0\.0\.1:\d+"', line), line
    finally:
        assert process.stop() == 0
