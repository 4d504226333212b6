"""The project's error tree.

Adapters translate their library's exceptions into these, so the layers above never see
a docker, pynvml, aetcd or kubernetes exception, and every caller catches by type, never
by the text of a message::

    GpudockError                          every error the project raises on purpose
    +-- TransientError                    retry later (``delay``); ``reason`` names it
    |   +-- StoreUnavailableError         the revision store (SQLite file, etcd)
    |   +-- DockerUnavailableError        adapters/docker/errors.py
    |   +-- ContainerGoneError            adapters/docker/errors.py: observe again
    |   +-- KubeUnavailableError          adapters/kube_api.py
    |   +-- NvmlUnavailableError          adapters/nvml_gpus.py
    |   +-- VolumeToolError               adapters/volume_backends.py: a storage tool failed
    |       +-- LayerCopyError            adapters/overlay_layers.py
    |           +-- LayerSpaceError       adapters/overlay_layers.py: no space left
    +-- UserError                         the user's to fix: ``reason`` and ``message``
    |   +-- SpecError                     the spec cannot be parsed (InvalidSpec)
    |   +-- HostPortInUseError            core/allocation.py
    |   +-- NoFreeHostPortError           core/allocation.py
    |   +-- HostPortBusyError             adapters/docker/errors.py
    |   +-- DiskFullError                 adapters/docker/errors.py
    |   +-- ImageNotPresentError          adapters/docker/errors.py
    |   +-- ImagePullError                a pull refused or backed off; ``retry_after``
    |   +-- DockerRefusedError            adapters/docker/errors.py: a 4xx, the runtime
    +-- NotFoundError                     what was asked for does not exist (any more)
    |   +-- ObjectNotFoundError           adapters/kube_api.py: a Kubernetes object
    +-- InternalError                     a broken invariant: a bug

* :class:`TransientError` -- something outside is not reachable or busy (Docker, the API
  server, etcd, a storage tool). Retried after ``delay`` seconds; nothing is changed
  meanwhile, and the status says what is awaited with the class's ``reason``.
* :class:`UserError` -- the resource asks for something that cannot be done as written
  (bad spec, missing image, path not allowed). It carries ``reason`` (a
  :class:`~gpudock.api.reasons.Reason`) and ``message`` as fields, shown as a
  condition; not retried until the spec (or the world) changes.
* :class:`NotFoundError` -- a lookup found nothing. Not a UserError: whether a missing
  object is the user's problem, a resource being deleted or simply "none" is the
  caller's decision.
* :class:`InternalError` -- a bug the project detects itself (a plan that does not
  converge). Raised as it is: kopf logs it and retries with backoff. Other bugs are
  raised as whatever Python raised.

Not in the tree: ``settings.SettingsError`` and ``crash_points.UnknownCrashPointError``
are ValueErrors on purpose: they are only raised while the command line is read at
start-up, where argparse reports them (``parser.error``), never while resources are
handled.
"""

from __future__ import annotations

from typing import ClassVar

from gpudock.api.reasons import Reason


class GpudockError(Exception):
    """Base of every error the project raises on purpose."""


class TransientError(GpudockError):
    """A dependency is unreachable or busy; retry later. ``reason`` names it in the
    condition that shows the wait."""

    reason: ClassVar[Reason] = Reason.RETRYING

    def __init__(self, message: str, *, delay: float = 10.0) -> None:
        super().__init__(message)
        self.delay = delay


class UserError(GpudockError):
    """The user must change something; carries the condition's reason and message."""

    def __init__(self, reason: Reason, message: str) -> None:
        super().__init__(f"{reason}: {message}")
        self.reason = reason
        self.message = message


class SpecError(UserError):
    """A resource's spec cannot be parsed or is inconsistent."""

    def __init__(self, message: str, *, reason: Reason = Reason.INVALID_SPEC) -> None:
        super().__init__(reason, message)


class ImagePullError(UserError):
    """A pull the registry refused (ErrImagePull, with its words), or one waiting out
    its backoff (ImagePullBackOff): the user's to fix, looked at again after
    ``retry_after`` seconds (the pull is retried once the backoff has passed)."""

    def __init__(self, reason: Reason, message: str, retry_after: float) -> None:
        super().__init__(reason, message)
        self.retry_after = retry_after


class StoreUnavailableError(TransientError):
    """The revision store (SQLite file or etcd) cannot be read or written right now."""

    reason = Reason.REVISION_STORE_UNAVAILABLE


class NotFoundError(GpudockError):
    """What was looked up does not exist, or no longer does."""


class InternalError(GpudockError):
    """A broken invariant: a bug in gpudock, never the user's or the node's doing."""
