"""Run a command in a running container, with a deadline, stdout and stderr apart.

The output is read on a thread of its own while the caller waits for the deadline.
When the deadline passes, the command's whole process tree is killed from the host
(the exec's PID as Docker reports it, and every descendant found in /proc): nothing
of it is left running in the container. That needs the agent in the host's PID
namespace (the DaemonSet sets hostPID; the local stack's agent is a host process).
"""

from __future__ import annotations

import contextlib
import os
import signal
import threading
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import docker
import docker.errors
import requests.exceptions

from gpudock.adapters.docker.errors import ContainerGoneError, DockerUnavailableError
from gpudock.api.reasons import Reason
from gpudock.errors import UserError

KILL_GRACE_SECONDS = 10  # for the output stream to end once the tree is killed


@dataclass(frozen=True)
class ExecResult:
    exit_code: int | None  # None: killed at the deadline
    stdout: bytes
    stderr: bytes
    stdout_cut: bool
    stderr_cut: bool
    timed_out: bool


class _Capped:
    def __init__(self, limit: int) -> None:
        self.limit = limit
        self.data = bytearray()
        self.cut = False

    def add(self, chunk: bytes | None) -> None:
        if not chunk:
            return
        room = self.limit - len(self.data)
        if len(chunk) > room:
            self.cut = True
        self.data += chunk[:max(room, 0)]


@contextlib.contextmanager
def _translated(what: str) -> Iterator[None]:
    try:
        yield
    except docker.errors.NotFound as exc:
        raise ContainerGoneError(f"{what}: {exc.explanation}") from exc
    except docker.errors.APIError as exc:
        if exc.status_code == 409:  # not running, paused, restarting
            raise UserError(Reason.CONTAINER_NOT_RUNNING, f"{what}: {exc.explanation}") from exc
        raise DockerUnavailableError(f"{what}: {exc.explanation or exc}") from exc
    except (docker.errors.DockerException, requests.exceptions.RequestException) as exc:
        raise DockerUnavailableError(f"{what}: cannot reach Docker: {exc}") from exc


def run_in_container(docker_host: str | None, container_id: str, command: Sequence[str],
                     *, working_dir: str | None, env: dict[str, str], timeout: float,
                     limit: int) -> ExecResult:
    client_timeout = int(timeout + 60)
    api = (docker.APIClient(base_url=docker_host, timeout=client_timeout) if docker_host
           else docker.from_env(timeout=client_timeout).api)
    try:
        with _translated("exec"):
            exec_id = api.exec_create(container_id, list(command), stdout=True, stderr=True,
                                      workdir=working_dir,
                                      environment=[f"{k}={v}" for k, v in env.items()]
                                      or None)["Id"]
            stream = api.exec_start(exec_id, stream=True, demux=True)
        out, err = _Capped(limit), _Capped(limit)
        failure: list[BaseException] = []

        def read() -> None:
            try:
                for chunk_out, chunk_err in stream:
                    out.add(chunk_out)
                    err.add(chunk_err)
            except (docker.errors.DockerException, requests.exceptions.RequestException,
                    OSError) as exc:
                failure.append(exc)

        reader = threading.Thread(target=read, name=f"exec {exec_id[:12]}", daemon=True)
        reader.start()
        reader.join(timeout)
        timed_out = reader.is_alive()
        if timed_out:
            with _translated("exec inspect"):
                pid = int(api.exec_inspect(exec_id).get("Pid") or 0)
            kill_tree(pid)
            reader.join(KILL_GRACE_SECONDS)
        with _translated("exec inspect"):
            code = api.exec_inspect(exec_id).get("ExitCode")
        if failure and not timed_out:
            raise DockerUnavailableError(f"exec: the output stream broke: {failure[0]}")
        return ExecResult(None if timed_out else int(code or 0), bytes(out.data),
                          bytes(err.data), out.cut, err.cut, timed_out)
    finally:
        api.close()


def kill_tree(pid: int) -> int:
    """SIGKILL a process and all its descendants (host PIDs); returns how many."""
    if pid <= 0:
        return 0
    children: dict[int, list[int]] = {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except (OSError, IndexError):
            continue
        children.setdefault(int(fields[1]), []).append(int(stat.parent.name))
    doomed, queue = [], [pid]
    while queue:
        current = queue.pop()
        doomed.append(current)
        queue += children.get(current, [])
    killed = 0
    for victim in doomed:
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.kill(victim, signal.SIGKILL)
            killed += 1
    return killed
