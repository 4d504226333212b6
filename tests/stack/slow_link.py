"""A slow network link in front of a real server: ``with SlowLink("127.0.0.1:5000",
1 << 20) as link:`` listens on ``link.host`` (127.0.0.1, a free port) and forwards
every connection to the server, the server's bytes at most ``bytes_per_second`` per
connection. The pull tests use it to make a pull last long enough to show its
progress (the registry behind it is the real one; only its bytes are slowed)."""

from __future__ import annotations

import contextlib
import socket
import threading
import time
from collections.abc import Callable
from types import TracebackType

CHUNK = 16 * 1024


class SlowLink:
    def __init__(self, upstream: str, bytes_per_second: int) -> None:
        host, port = upstream.rsplit(":", 1)
        self._upstream = (host, int(port))
        self._rate = bytes_per_second
        self._listener = socket.create_server(("127.0.0.1", 0))
        self._stopped = threading.Event()
        self._threads: list[threading.Thread] = []
        self._sockets: list[socket.socket] = []
        self._lock = threading.Lock()

    @property
    def host(self) -> str:
        return f"127.0.0.1:{self._listener.getsockname()[1]}"

    def __enter__(self) -> SlowLink:
        self._start(self._accept)
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self._stopped.set()
        self._listener.close()
        with self._lock:
            for sock in self._sockets:
                with contextlib.suppress(OSError):
                    sock.shutdown(socket.SHUT_RDWR)
                sock.close()
        for thread in self._threads:
            thread.join(10)

    def _start(self, target: Callable[..., None], *args: object) -> None:
        thread = threading.Thread(target=target, args=args, daemon=True)
        with self._lock:
            self._threads.append(thread)
        thread.start()

    def _accept(self) -> None:
        while not self._stopped.is_set():
            try:
                client, _ = self._listener.accept()
            except OSError:
                return  # closed
            try:
                server = socket.create_connection(self._upstream, timeout=10)
            except OSError:
                client.close()
                continue
            server.settimeout(None)
            with self._lock:
                self._sockets += [client, server]
            self._start(self._pipe, client, server, 0)  # requests: not slowed
            self._start(self._pipe, server, client, self._rate)

    def _pipe(self, source: socket.socket, sink: socket.socket, rate: int) -> None:
        try:
            while data := source.recv(CHUNK):
                if rate:
                    time.sleep(len(data) / rate)  # each chunk takes its time at the rate
                sink.sendall(data)
        except OSError:
            pass
        finally:
            with contextlib.suppress(OSError):
                sink.shutdown(socket.SHUT_WR)
