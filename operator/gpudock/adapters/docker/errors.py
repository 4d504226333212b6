"""Docker's exceptions, translated: the one place that is done.

Every docker/requests exception is translated here: an unreachable engine becomes
:class:`DockerUnavailableError` (transient), a request Docker refuses because of the
spec (a host port in use, a missing bind source) becomes a :class:`UserError` of a
class of its own, so callers catch what they mean by type (an absent image is an
:class:`ImageNotPresentError`, whatever Docker's words were).
"""

from __future__ import annotations

import contextlib
import re
from collections.abc import Iterator

import docker.errors
import requests.exceptions

from gpudock.api.reasons import Reason
from gpudock.errors import TransientError, UserError


class DockerUnavailableError(TransientError):
    """The Docker engine did not answer, or failed on its side."""

    reason = Reason.DOCKER_UNAVAILABLE


class ContainerGoneError(TransientError):
    """The container vanished between observation and action; observe again."""

    def __init__(self, message: str) -> None:
        super().__init__(message, delay=1)


class StaleTaskError(TransientError):
    """Docker's start found a containerd task already there for the container: Docker
    (or containerd) was restarted in the middle of its start, and containerd kept
    the task Docker no longer knows of. Every later start of that container fails
    the same way; a container that never ran is made anew (replica_set_steps.py)."""

    reason = Reason.DOCKER_UNAVAILABLE


class HostPortBusyError(UserError):
    """Docker could not bind a host port: something outside its view holds it."""

    def __init__(self, message: str, port: int | None) -> None:
        super().__init__(Reason.HOST_PORT_IN_USE, message)
        self.port = port


class DiskFullError(UserError):
    """Docker (or the agent) ran out of disk space."""

    def __init__(self, message: str) -> None:
        super().__init__(Reason.DISK_FULL, message)


class ImageNotPresentError(UserError):
    """Docker has no image of that name (gpudock never pulls one)."""

    def __init__(self, message: str) -> None:
        super().__init__(Reason.IMAGE_NOT_PRESENT, message)


class PullRefusedError(UserError):
    """The registry (through Docker) refused a pull or a look at a manifest: its
    words, under ErrImagePull."""

    def __init__(self, message: str) -> None:
        super().__init__(Reason.ERR_IMAGE_PULL, message)


class DockerRefusedError(UserError):
    """Docker refused the request as written (an HTTP 4xx), or the runtime refused the
    container's config: the same request would be refused again. ``reason`` is the
    step's (:class:`Step`)."""


_BUSY_PORT_RE = re.compile(r":(\d+)(?:: bind: address already in use| failed: port is already)")


# Docker gives a status code, not a kind, for most refusals; these few are told
# apart by their message because nothing else names them.
_PORT_BUSY_TEXT = ("port is already allocated", "address already in use")
_EXEC_FAILED_RE = re.compile(r'exec: "[^"]*": (?:executable file not found|stat [^:]*: no '
                             r"such file or directory|permission denied)")
_RUNTIME_REFUSED_TEXT = "OCI runtime create failed"  # runc refused the container's config
# containerd still has a task (or runc a container) of that ID from a start cut short.
_STALE_TASK_RE = re.compile(r"task [0-9a-f]+: already exists|id already in use")


class Step:
    """The condition reason Docker's refusal of a step is reported under."""

    CREATE = Reason.CONTAINER_CREATE_FAILED
    START = Reason.CONTAINER_START_FAILED
    OTHER = Reason.DOCKER_REQUEST_FAILED


def _refusal(what: str, step: Reason, exc: docker.errors.APIError) -> Exception:
    """What an API error means: the user's to fix (a UserError with Docker's own
    words), or Docker being unwell (transient)."""
    text = str(exc.explanation or exc)
    code = exc.status_code or 0
    if any(busy in text for busy in _PORT_BUSY_TEXT):
        match = _BUSY_PORT_RE.search(text)
        return HostPortBusyError(f"{what}: {text}", int(match.group(1)) if match else None)
    if "no space left on device" in text:
        return DiskFullError(f"{what}: {text}")
    if "bind source path does not exist" in text:
        return UserError(Reason.HOST_PATH_MISSING, f"{what}: {text}")
    if step == Step.START and _EXEC_FAILED_RE.search(text):
        return UserError(Reason.COMMAND_NOT_FOUND, f"{what}: the command cannot be run "
                         f"in the image: {text}")
    if 400 <= code < 500:
        return DockerRefusedError(step, f"{what}: {text}")
    if step == Step.START and _STALE_TASK_RE.search(text):
        return StaleTaskError(f"{what}: containerd kept a task of it from a start cut "
                              f"short by a restart of Docker: {text}")
    if step in (Step.CREATE, Step.START) and _RUNTIME_REFUSED_TEXT in text:
        # The runtime refused this container (a mount over /proc, a NUL in an env
        # value): it would refuse it again on every retry.
        return DockerRefusedError(step, f"{what}: {text}")
    return DockerUnavailableError(f"{what}: Docker failed (HTTP {code}): {text}")


@contextlib.contextmanager
def _translated(what: str, step: Reason = Step.OTHER) -> Iterator[None]:
    try:
        yield
    except docker.errors.ImageNotFound as exc:
        raise ImageNotPresentError(f"{what}: {exc.explanation}") from exc
    except docker.errors.NotFound as exc:
        raise ContainerGoneError(f"{what}: {exc.explanation}") from exc
    except docker.errors.APIError as exc:
        raise _refusal(what, step, exc) from exc
    except (docker.errors.DockerException, requests.exceptions.RequestException) as exc:
        raise DockerUnavailableError(f"{what}: cannot reach Docker: {exc}") from exc
