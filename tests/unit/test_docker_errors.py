"""#9.10: Docker's refusals are told apart by status code, by message only where Docker
gives nothing else (the texts are the ones dockerd 20.10 answered on the stack)."""

from __future__ import annotations

import docker.errors
import pytest
import requests

from gpudock.adapters.docker.errors import (
    DiskFullError,
    DockerUnavailableError,
    HostPortBusyError,
    Step,
    _refusal,
)
from gpudock.api.reasons import Reason
from gpudock.errors import UserError


def _api_error(code: int, text: str) -> docker.errors.APIError:
    response = requests.Response()
    response.status_code = code
    return docker.errors.APIError("refused", response=response, explanation=text)


@pytest.mark.parametrize(("code", "text", "step", "reason"), [
    (400, 'OCI runtime create failed: exec: "jupyter": executable file not found in $PATH',
     Step.START, "CommandNotFound"),
    (400, 'OCI runtime create failed: exec: "/nope/x": stat /nope/x: no such file or '
     "directory: unknown", Step.START, "CommandNotFound"),
    (500, "OCI runtime create failed: runc create failed: error mounting to rootfs at "
     '"/proc": cannot be mounted because it is not of type proc', Step.START,
     "ContainerStartFailed"),
    (500, "OCI runtime create failed: environment variable value can't contain null",
     Step.START, "ContainerStartFailed"),
    (400, "Unknown runtime specified nosuch", Step.CREATE, "ContainerCreateFailed"),
    (409, 'Conflict. The container name "/abc" is already in use', Step.CREATE,
     "ContainerCreateFailed"),
    (400, 'invalid mount config for type "bind": bind source path does not exist: /x',
     Step.CREATE, "HostPathMissing"),
    (404, "something odd", Step.OTHER, "DockerRequestFailed"),
])
def test_refusals_are_the_users_with_dockers_words(code: int, text: str, step: Reason,
                                                   reason: str) -> None:
    error = _refusal("start x", step, _api_error(code, text))
    assert isinstance(error, UserError)
    assert error.reason == reason
    assert text in error.message


def test_busy_ports_full_disks_and_failing_dockers_are_told_apart() -> None:
    busy = _refusal("start x", Step.START, _api_error(500, (
        "driver failed programming external connectivity on endpoint x: Error starting "
        "userland proxy: listen tcp4 0.0.0.0:45678: bind: address already in use")))
    assert isinstance(busy, HostPortBusyError)
    assert busy.port == 45678
    assert isinstance(_refusal("commit x", Step.OTHER, _api_error(
        500, "write /var/lib/docker/x: no space left on device")), DiskFullError)
    # A 5xx that is not about the container's config: Docker itself, retried.
    assert isinstance(_refusal("start x", Step.START, _api_error(
        500, "containerd: connection refused")), DockerUnavailableError)
    assert isinstance(_refusal("commit x", Step.OTHER, _api_error(
        500, "OCI runtime create failed")), DockerUnavailableError)
