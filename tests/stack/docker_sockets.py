"""docker-py (7.2) leaves the socket of a failed connect to a Unix socket open:
``UnixHTTPConnection.connect`` makes the socket and connects it, and when dockerd is
not there (stopped, restarting, its socket file not listening yet) the exception
leaves the socket to the garbage collector, which warns (``ResourceWarning:
unclosed <socket.socket fd=.., family=1, type=1, proto=0>``). The suite turns
warnings into errors, so such a warning, raised wherever the collector ran, failed
the suite's soak (its sampler asks every node's dockerd each second, also while the
soak restarts one). The stack's Docker clients connect through :func:`connect`
instead, which closes the socket when the connect fails.

Applied once, on import of ``tests.stack``; the agent (the product) keeps docker-py
as it is: there the socket is collected at once and the warning is ignored."""

from __future__ import annotations

import socket

from docker.transport import unixconn


def connect(self: unixconn.UnixHTTPConnection) -> None:
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        sock.settimeout(self.timeout)
        sock.connect(self.unix_socket)
    except BaseException:
        sock.close()
        raise
    self.sock = sock


def close_failed_connects() -> None:
    unixconn.UnixHTTPConnection.connect = connect  # type: ignore[method-assign]
