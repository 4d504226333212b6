"""An interactive command in a running container (``kubectl gpudock exec -i/-t``):
Docker's exec with a TTY and stdin as asked, its attached socket read and written.

The command runs as the container's user (no other is asked for), in the container
only, with ``MARK_VARIABLE`` set to the session's mark, so that everything it started
can be killed from the host when the session ends early (the caller gone, idle, no
longer permitted): a process under a TTY whose client left is not hung up by Docker.
Every call blocks: the agent makes them on the session's own threads.
"""

from __future__ import annotations

import contextlib
import socket
import struct
from collections.abc import Iterator, Sequence
from typing import Any

import docker
import docker.errors
import requests.exceptions

from gpudock.adapters.container_exec import _client, _init_pid, _translated
from gpudock.adapters.docker.errors import DockerUnavailableError
from gpudock.adapters.process_table import MARK_VARIABLE, kill_started

STDOUT, STDERR = 1, 2  # Docker's streams
_HEADER = struct.Struct(">BxxxL")
READ_SIZE = 32 * 1024


class TtySession:
    """One exec and its socket; :meth:`close` kills what still runs of it."""

    def __init__(self, docker_host: str | None, container_id: str, command: Sequence[str],
                 *, tty: bool, stdin: bool, mark: str) -> None:
        self.tty = tty
        self._container = container_id
        self._mark = mark
        self._api = _client(docker_host, 60)
        try:
            with _translated("exec"):
                self.exec_id = str(self._api.exec_create(
                    container_id, list(command), stdout=True, stderr=True, stdin=stdin,
                    tty=tty, environment=[f"{MARK_VARIABLE}={mark}"])["Id"])
                self._socket: Any = self._api.exec_start(self.exec_id, tty=tty,
                                                         socket=True)
        except BaseException:
            self._api.close()
            raise
        raw: Any = getattr(self._socket, "_sock", None) or self._socket
        self._raw: socket.socket = raw

    def output(self) -> Iterator[tuple[int, bytes]]:
        """(STDOUT or STDERR, bytes) until the command's output ends (it exited, or
        the socket was closed). Without a TTY Docker sends frames of an 8-byte header
        (the stream, 3 zero bytes, the size: 32-bit big-endian) and the bytes."""
        pending = b""
        while True:
            try:
                chunk = self._raw.recv(READ_SIZE)
            except OSError:
                return  # the socket closed under the reader: the session ends
            if not chunk:
                return
            if self.tty:
                yield STDOUT, chunk
                continue
            pending += chunk
            while len(pending) >= _HEADER.size:
                stream, size = _HEADER.unpack_from(pending)
                if len(pending) < _HEADER.size + size:
                    break
                yield (STDERR if stream == STDERR else STDOUT,
                       pending[_HEADER.size:_HEADER.size + size])
                pending = pending[_HEADER.size + size:]

    def write(self, data: bytes) -> None:
        try:
            self._raw.sendall(data)
        except OSError as exc:
            raise DockerUnavailableError(f"exec stdin: {exc}") from exc

    def close_stdin(self) -> None:
        with contextlib.suppress(OSError):
            self._raw.shutdown(socket.SHUT_WR)

    def resize(self, rows: int, columns: int) -> None:
        if self.tty and rows > 0 and columns > 0:
            with _translated("exec resize"):
                self._api.exec_resize(self.exec_id, height=rows, width=columns)

    def state(self) -> tuple[bool, int | None, int]:
        """(still running, exit code, its PID on the host)."""
        with _translated("exec inspect"):
            found = self._api.exec_inspect(self.exec_id)
        code = found.get("ExitCode")
        return (bool(found.get("Running")), None if code is None else int(code),
                int(found.get("Pid") or 0))

    def kill(self) -> int:
        """SIGKILL the command and everything it started (by the mark); how many."""
        running, _, pid = self.state()
        if not running:
            return 0
        init = _init_pid(self._api, self._container)
        return kill_started(pid, init, self._mark) if init else 0

    def close(self) -> None:
        """Kill what still runs, then close the socket and the client."""
        try:
            with contextlib.suppress(DockerUnavailableError, docker.errors.DockerException,
                                     requests.exceptions.RequestException):
                self.kill()
        finally:
            with contextlib.suppress(OSError):
                self._raw.close()
            with contextlib.suppress(OSError):
                self._socket.close()
            self._api.close()
