"""The native inference API of `pyserve torchserve`: `GET /ping` answered from what the model
store publishes while a handler holds the GIL (the shell cannot run), over plain HTTP and
HTTPS; server-sent events streamed as the handler sends them, and a client that leaves a
stream."""

from __future__ import annotations

import concurrent.futures
import http.client
import ssl
import sys
import time
import urllib.request
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
sys.path.insert(0, str(Path(__file__).resolve().parent))
from certificates import write_pem  # noqa: E402
from torchserve_archives import make_mar  # noqa: E402
from test_torchserve_server import PROPERTIES, TorchServeProcess, _native_available  # noqa: E402

HOG = '''
import pathlib
import sys
import time


def handle(data, context):
    if data is None:
        return None
    pathlib.Path("started").touch()
    interval = sys.getswitchinterval()
    sys.setswitchinterval(60)  # keep the GIL: no other Python thread runs meanwhile
    try:
        end = time.monotonic() + 5
        while time.monotonic() < end:
            pass
    finally:
        sys.setswitchinterval(interval)
    return ["done" for _ in data]
'''


# Server-sent events through TorchServe's intermediate responses: the second waits for the
# test's "go" file, so the first must reach the client before the handler ends.
EVENTS = '''
import pathlib
import time

from ts.handler_utils.utils import send_intermediate_predict_response


def send(event, context):
    send_intermediate_predict_response([event], context.request_ids, "Intermediate Prediction "
                                       "success", 200, context)


def handle(data, context):
    if data is None:
        return None
    context.set_response_content_type(0, "text/event-stream")
    context.set_response_header(0, "Cache-Control", "no-cache")
    send("data: one\\n\\n", context)
    deadline = time.monotonic() + 30
    while not pathlib.Path("go").exists() and time.monotonic() < deadline:
        time.sleep(0.01)
    pathlib.Path("go").unlink(missing_ok=True)
    send("data: two\\n\\n", context)
    return ["data: three\\n\\n"]
'''


def wait_for(path: Path, timeout: float = 30) -> None:
    deadline = time.monotonic() + timeout
    while not path.exists():
        assert time.monotonic() < deadline, f"{path} never appeared"
        time.sleep(0.01)


@pytest.mark.parametrize("scheme", ["http", "https"])
def test_ping_is_answered_while_the_shell_cannot_run(tmp_path, scheme):
    if not _native_available():
        pytest.skip("pyserve was built without the native HTTP frontend")
    make_mar(tmp_path / "store", "hog", {"hog.py": HOG}, handler="hog.py", work=tmp_path / "src")
    properties = PROPERTIES + "load_models=hog.mar\n"
    context = None
    if scheme == "https":
        cert, key = write_pem(tmp_path, "server")
        properties = properties.replace("inference_address=http:", "inference_address=https:")
        properties += f"private_key_file={key}\ncertificate_file={cert}\n"
        context = ssl.create_default_context(cafile=str(cert))
    process = TorchServeProcess(tmp_path, properties, "--disable-token-auth",
                                "--http-frontend", "native", scheme=scheme)
    try:
        assert "native predictions" in process.log_path.read_text()
        with concurrent.futures.ThreadPoolExecutor(1) as pool:
            prediction = urllib.request.Request(process.url("inference", "/predictions/hog"),
                                                data=b"x")
            hogging = pool.submit(lambda: urllib.request.urlopen(prediction, context=context,
                                                                 timeout=60).read())
            wait_for(tmp_path / "started")
            with urllib.request.urlopen(process.url("inference", "/ping"), context=context,
                                        timeout=10) as reply:
                assert reply.status == 200
                assert reply.read() == b'{\n  "status": "Healthy"\n}'
            assert not hogging.done(), "the ping waited for the handler that holds the GIL"
            assert hogging.result(timeout=60) == b"done"
    finally:
        process.stop()


@pytest.fixture
def events_server(tmp_path):
    if not _native_available():
        pytest.skip("pyserve was built without the native HTTP frontend")
    pytest.importorskip("ts", reason="needs pyserve[torchserve] (the ts package)")
    make_mar(tmp_path / "store", "events", {"events.py": EVENTS}, handler="events.py",
             work=tmp_path / "src")
    process = TorchServeProcess(tmp_path, PROPERTIES + "load_models=events.mar\n",
                                "--disable-token-auth", "--http-frontend", "native")
    yield process
    process.stop()


def read_event(reply) -> bytes:
    event = b""
    while not event.endswith(b"\n\n"):
        line = reply.readline()
        assert line, f"the stream ended within an event: {event!r}"
        event += line
    return event


def test_server_sent_events_arrive_as_they_are_sent(events_server, tmp_path):
    connection = http.client.HTTPConnection("127.0.0.1", events_server.ports["inference"],
                                            timeout=30)
    connection.request("POST", "/predictions/events", body=b"x")
    reply = connection.getresponse()
    assert reply.status == 200
    assert reply.getheader("Content-Type") == "text/event-stream"
    assert reply.getheader("Cache-Control") == "no-cache"
    assert reply.getheader("Transfer-Encoding") == "chunked"
    assert read_event(reply) == b"data: one\n\n"  # while the handler waits for "go"
    (tmp_path / "go").touch()
    assert read_event(reply) == b"data: two\n\n"
    assert read_event(reply) == b"data: three\n\n"
    assert reply.read() == b""
    connection.close()


def test_a_client_that_leaves_a_stream_ends_it(events_server, tmp_path):
    """The rest of the stream is dropped; the handler and the server go on serving."""
    connection = http.client.HTTPConnection("127.0.0.1", events_server.ports["inference"],
                                            timeout=30)
    connection.request("POST", "/predictions/events", body=b"x")
    reply = connection.getresponse()
    assert read_event(reply) == b"data: one\n\n"
    connection.close()  # gone mid-stream
    (tmp_path / "go").touch()
    connection = http.client.HTTPConnection("127.0.0.1", events_server.ports["inference"],
                                            timeout=30)
    connection.request("POST", "/predictions/events", body=b"x")
    reply = connection.getresponse()
    assert read_event(reply) == b"data: one\n\n"
    (tmp_path / "go").touch()
    assert reply.read() == b"data: two\n\ndata: three\n\n"
    connection.close()
