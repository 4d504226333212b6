"""Docker's exceptions, translated: the one place that is done.

Every docker/requests exception is translated here: an unreachable engine becomes
:class:`DockerUnavailableError` (transient), a request Docker refuses because of the
spec (a host port in use, a missing bind source) becomes a :class:`UserError`.
"""

from __future__ import annotations

import contextlib
import re
from collections.abc import Iterator

import docker.errors
import requests.exceptions

from gpudock.errors import TransientError, UserError


class DockerUnavailableError(TransientError):
    """The Docker engine did not answer, or failed on its side."""

    reason = "DockerUnavailable"


class ContainerGoneError(TransientError):
    """The container vanished between observation and action; observe again."""

    def __init__(self, message: str) -> None:
        super().__init__(message, delay=1)


class HostPortBusyError(UserError):
    """Docker could not bind a host port: something outside its view holds it."""

    def __init__(self, message: str, port: int | None) -> None:
        super().__init__("HostPortInUse", message)
        self.port = port


class DiskFullError(UserError):
    """Docker (or the agent) ran out of disk space."""

    def __init__(self, message: str) -> None:
        super().__init__("DiskFull", message)


_BUSY_PORT_RE = re.compile(r":(\d+)(?:: bind: address already in use| failed: port is already)")


# Docker gives a status code, not a kind, for most refusals; these few are told
# apart by their message because nothing else names them.
_PORT_BUSY_TEXT = ("port is already allocated", "address already in use")
_EXEC_FAILED_RE = re.compile(r'exec: "[^"]*": (?:executable file not found|stat [^:]*: no '
                             r"such file or directory|permission denied)")
_RUNTIME_REFUSED_TEXT = "OCI runtime create failed"  # runc refused the container's config


class Step:
    """The condition reason Docker's refusal of a step is reported under."""

    CREATE = "ContainerCreateFailed"
    START = "ContainerStartFailed"
    OTHER = "DockerRequestFailed"


def _refusal(what: str, step: str, exc: docker.errors.APIError) -> Exception:
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
        return UserError("HostPathMissing", f"{what}: {text}")
    if step == Step.START and _EXEC_FAILED_RE.search(text):
        return UserError("CommandNotFound", f"{what}: the command cannot be run in the "
                         f"image: {text}")
    if 400 <= code < 500:
        return UserError(step, f"{what}: {text}")
    if step in (Step.CREATE, Step.START) and _RUNTIME_REFUSED_TEXT in text:
        # The runtime refused this container (a mount over /proc, a NUL in an env
        # value): it would refuse it again on every retry.
        return UserError(step, f"{what}: {text}")
    return DockerUnavailableError(f"{what}: Docker failed (HTTP {code}): {text}")


@contextlib.contextmanager
def _translated(what: str, step: str = Step.OTHER) -> Iterator[None]:
    try:
        yield
    except docker.errors.ImageNotFound as exc:
        raise UserError("ImageNotPresent", f"{what}: {exc.explanation}") from exc
    except docker.errors.NotFound as exc:
        raise ContainerGoneError(f"{what}: {exc.explanation}") from exc
    except docker.errors.APIError as exc:
        raise _refusal(what, step, exc) from exc
    except (docker.errors.DockerException, requests.exceptions.RequestException) as exc:
        raise DockerUnavailableError(f"{what}: cannot reach Docker: {exc}") from exc
