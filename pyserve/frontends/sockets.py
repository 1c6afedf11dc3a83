"""Listening sockets for the aiohttp-based servers."""

from __future__ import annotations

import errno
import socket

from pyserve.options import LISTEN_BACKLOG


def listen(host: str, port: int, reuse_port: bool = False,
           backlog: int = LISTEN_BACKLOG) -> socket.socket:
    """A listening TCP socket; port 0 picks a free one. `reuse_port`: other sockets that ask
    too may listen on the port (SO_REUSEPORT); `backlog`: connections queued before accept."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    if reuse_port:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
    sock.bind((host, port))
    sock.listen(backlog)
    sock.setblocking(False)
    return sock


def in_use(host: str, port: int) -> bool:
    """Whether another socket listens on host:port (then a bind fails, SO_REUSEADDR or not)."""
    try:
        listen(host, port).close()
    except OSError as e:
        return e.errno == errno.EADDRINUSE
    return False
