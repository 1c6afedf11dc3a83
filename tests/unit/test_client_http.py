"""pyserve.client's HTTP/1.1 over sockets: what goes out, how answers are read (httptools),
when a connection is kept."""

from __future__ import annotations

import gzip
import http.server
import socket
import threading

import pytest

from pyserve.client._http import (HttpTransport, ResponseHeaders, _ProtocolError, _Reader,
                                  request_head)
from pyserve.client.errors import InferenceServerError


def read(*pieces: bytes, method: str = "POST"):
    """What _Reader makes of a server's bytes, sent in these pieces (then the socket stays
    open, as a kept-alive connection's would)."""
    ours, theirs = socket.socketpair()
    with ours, theirs:
        sender = threading.Thread(target=lambda: [theirs.sendall(p) for p in pieces])
        sender.start()  # big answers fill the socket's buffer before they are read
        try:
            return _Reader(ours).response(method)
        finally:
            sender.join()


def test_request_in_one_piece_with_automatic_headers():
    head = request_head("POST", "/v2/models/m/infer", "h:8000", {"X-A": "1"}, 5)
    assert head == (b"POST /v2/models/m/infer HTTP/1.1\r\nHost: h:8000\r\n"
                    b"Accept-Encoding: identity\r\nX-A: 1\r\nContent-Length: 5\r\n\r\n")
    # the caller's own take precedence; GETs carry no length
    head = request_head("GET", "/v2", "h:1", {"host": "other", "Accept-Encoding": "gzip"}, None)
    assert head == b"GET /v2 HTTP/1.1\r\nhost: other\r\nAccept-Encoding: gzip\r\n\r\n"


@pytest.mark.parametrize("name,value", [("X", "a\r\nInjected: 1"), ("X\n", "a"), ("X:Y", "a")])
def test_header_injection_is_refused(name, value):
    with pytest.raises(ValueError):
        request_head("GET", "/", "h:1", {name: value}, None)


def test_content_length_body_across_reads():
    status, headers, body, keep = read(b"HTTP/1.1 200 OK\r\nContent-Length: 10\r\nX-Y: a\r\n",
                                       b"X-Y: b\r\n\r\n01234", b"56789")
    assert (status, body, keep) == (200, b"0123456789", True)
    assert headers["x-y"] == "a, b" and headers.get("Content-LENGTH") == "10"
    assert "X-y" in headers and isinstance(headers, ResponseHeaders)


def test_large_body():
    payload = bytes(range(256)) * 20000
    _, _, body, _ = read(b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n" % len(payload)
                         + payload[:1000], payload[1000:])
    assert body == payload


def test_chunked_body_and_trailers():
    status, _, body, keep = read(b"HTTP/1.1 404 Not Found\r\nTransfer-Encoding: chunked\r\n\r\n"
                                 b"5\r\nhello\r\n1;ext=1\r\n \r\n5\r\nworld\r\n0\r\nT: 1\r\n\r\n")
    assert (status, body, keep) == (404, b"hello world", True)


def test_interim_answers_are_skipped_and_empty_statuses_have_no_body():
    status, _, body, _ = read(b"HTTP/1.1 100 Continue\r\n\r\n"
                              b"HTTP/1.1 204 No Content\r\nContent-Length: 3\r\n\r\n")
    assert (status, body) == (204, b"")
    assert read(b"HTTP/1.1 200 OK\r\nContent-Length: 3\r\n\r\n", method="HEAD")[2] == b""


def test_when_a_connection_is_kept():
    assert not read(b"HTTP/1.1 200 OK\r\nConnection: close\r\nContent-Length: 0\r\n\r\n")[3]
    assert not read(b"HTTP/1.0 200 OK\r\nContent-Length: 0\r\n\r\n")[3]
    assert read(b"HTTP/1.0 200 OK\r\nConnection: Keep-Alive\r\nContent-Length: 0\r\n\r\n")[3]
    # bytes beyond the answer: nothing this client asked for, so the connection is not reused
    assert not read(b"HTTP/1.1 200 OK\r\nContent-Length: 1\r\n\r\nab")[3]


def test_body_up_to_the_end_of_the_connection():
    ours, theirs = socket.socketpair()
    with ours:
        theirs.sendall(b"HTTP/1.0 200 OK\r\n\r\nall of")
        theirs.sendall(b" it")
        theirs.close()
        assert _Reader(ours).response("GET")[2:] == (b"all of it", False)


@pytest.mark.parametrize("answer,error", [
    (b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\nab", ConnectionError),
    (b"", ConnectionError),
    (b"SSH-2.0-OpenSSH\r\n\r\n", _ProtocolError),
    (b"HTTP/1.1 200 OK\r\nno colon\r\n\r\n", _ProtocolError),
])
def test_cut_or_foreign_answers_are_errors(answer, error):
    ours, theirs = socket.socketpair()
    with ours:
        theirs.sendall(answer)
        theirs.close()
        with pytest.raises(error):
            _Reader(ours).response("GET")


class _Handler(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    connections: set = set()

    def do_POST(self):
        _Handler.connections.add(self.client_address)
        body = self.rfile.read(int(self.headers["Content-Length"]))
        answer = gzip.compress(body[::-1]) if self.path == "/gzip" else body[::-1]
        self.send_response(200 if self.path != "/missing" else 404)
        if self.path == "/gzip":
            self.send_header("Content-Encoding", "gzip")
        if self.path == "/close":
            self.send_header("Connection", "close")
        self.send_header("Content-Length", str(len(answer)))
        self.end_headers()
        self.wfile.write(answer)

    def log_message(self, *args):
        pass


@pytest.fixture()
def server():
    _Handler.connections = set()
    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Handler)
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    yield httpd.server_address[1]
    httpd.shutdown()
    httpd.server_close()


def test_transport_keeps_connections_alive_and_reopens_closed_ones(server):
    transport = HttpTransport("127.0.0.1", server)
    try:
        for _ in range(3):
            response = transport.send("POST", "/echo", b"abc", {}, 5)
            assert (response.status, response.body) == (200, b"cba")
        assert len(_Handler.connections) == 1
        assert transport.send("POST", "/close", b"xy", {}, 5).body == b"yx"
        assert transport.send("POST", "/gzip", b"zip", {}, 5).body == b"piz"
        assert transport.send("POST", "/missing", b"", {}, 5).status == 404
        assert len(_Handler.connections) == 2
    finally:
        transport.close()


def test_transport_large_bodies_both_ways(server):
    transport = HttpTransport("127.0.0.1", server)
    try:
        payload = bytes(range(256)) * 4000  # past the size sent with the headers in one write
        assert transport.send("POST", "/echo", payload, {}, 5).body == payload[::-1]
        assert transport.send("POST", "/echo", b"small", {}, 5).body == b"llams"
    finally:
        transport.close()


def test_transport_errors():
    with socket.socket() as unused:
        unused.bind(("127.0.0.1", 0))
        port = unused.getsockname()[1]
    with pytest.raises(InferenceServerError) as info:
        HttpTransport("127.0.0.1", port).send("GET", "/", None, {}, 5)
    assert info.value.status == "UNAVAILABLE"
    listener = socket.create_server(("127.0.0.1", 0))  # accepts, never answers
    with listener, pytest.raises(InferenceServerError) as info:
        HttpTransport("127.0.0.1", listener.getsockname()[1]).send("GET", "/", None, {}, 0.2)
    assert info.value.status == "DEADLINE_EXCEEDED"
