"""Run a command in a running container, with a deadline, stdout and stderr apart.

The output is read on a thread of its own while the caller waits for the deadline.
The command runs with ``MARK_VARIABLE`` set to a mark of the caller's (the request's
UID). When the deadline passes, everything it started is killed from the host: its
process tree, session and process group, and every process of the container that
carries the mark, so double-forked and setsid'd processes too (process_table.py).
An agent that restarted while a command ran kills the same way (:func:`kill_marked`).
That needs the agent in the host's PID namespace (the DaemonSet sets hostPID; the
local stack's agent is a host process).
"""

from __future__ import annotations

import contextlib
import threading
from collections.abc import Iterator, Sequence
from dataclasses import dataclass

import docker
import docker.errors
import requests.exceptions

from gpudock.adapters.docker.errors import ContainerGoneError, DockerUnavailableError
from gpudock.adapters.process_table import MARK_VARIABLE, kill_started
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


def _client(docker_host: str | None, timeout: int) -> docker.APIClient:
    return (docker.APIClient(base_url=docker_host, timeout=timeout) if docker_host
            else docker.from_env(timeout=timeout).api)


def _init_pid(api: docker.APIClient, container: str) -> int:
    """The host PID of the container's init; 0 when it does not run."""
    with _translated(f"inspect {container}"):
        state = api.inspect_container(container).get("State") or {}
    return int(state.get("Pid") or 0) if state.get("Running") else 0


def run_in_container(docker_host: str | None, container_id: str, command: Sequence[str],
                     *, working_dir: str | None, env: dict[str, str], timeout: float,
                     limit: int, mark: str) -> ExecResult:
    api = _client(docker_host, int(timeout + 60))
    variables = {**env, MARK_VARIABLE: mark}
    try:
        with _translated("exec"):
            exec_id = api.exec_create(container_id, list(command), stdout=True, stderr=True,
                                      workdir=working_dir,
                                      environment=[f"{k}={v}" for k, v in variables.items()]
                                      )["Id"]
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
            kill_started(pid, _init_pid(api, container_id), mark)
            reader.join(KILL_GRACE_SECONDS)
        with _translated("exec inspect"):
            code = api.exec_inspect(exec_id).get("ExitCode")
        if failure and not timed_out:
            raise DockerUnavailableError(f"exec: the output stream broke: {failure[0]}")
        return ExecResult(None if timed_out else int(code or 0), bytes(out.data),
                          bytes(err.data), out.cut, err.cut, timed_out)
    finally:
        api.close()


def kill_marked(docker_host: str | None, container: str, mark: str) -> int:
    """Kill every process of ``container`` (name or ID) that a command run with
    ``mark`` started; how many. A container that is gone or stopped has none left."""
    api = _client(docker_host, 60)
    try:
        try:
            init = _init_pid(api, container)
        except ContainerGoneError:
            return 0
        return kill_started(0, init, mark) if init else 0
    finally:
        api.close()
