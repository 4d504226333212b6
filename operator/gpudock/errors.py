"""The project's error tiers.

Adapters translate their library's exceptions into these, so the layers above never see
a docker, pynvml, aetcd or kubernetes exception:

* :class:`TransientError` -- something outside is not reachable or busy (Docker, the API
  server, etcd). Retried later with backoff; nothing is changed meanwhile.
* :class:`UserError` -- the resource asks for something that cannot be done as written
  (bad spec, missing image, path not allowed). Shown as a condition with ``reason`` and
  ``message``; not retried until the spec (or the world) changes.
* anything else is a bug and is raised as it is.
"""

from __future__ import annotations


class GpudockError(Exception):
    """Base of every error the project raises on purpose."""


class TransientError(GpudockError):
    """A dependency is unreachable or busy; retry later. ``reason`` names it in the
    condition that shows the wait."""

    reason = "Retrying"

    def __init__(self, message: str, *, delay: float = 10.0) -> None:
        super().__init__(message)
        self.delay = delay


class UserError(GpudockError):
    """The user must change something; carries a CamelCase condition reason."""

    def __init__(self, reason: str, message: str) -> None:
        super().__init__(f"{reason}: {message}")
        self.reason = reason
        self.message = message


class SpecError(UserError):
    """A resource's spec cannot be parsed or is inconsistent."""

    def __init__(self, message: str) -> None:
        super().__init__("InvalidSpec", message)


class StoreUnavailableError(TransientError):
    """The revision store (SQLite file or etcd) cannot be read or written right now."""

    reason = "RevisionStoreUnavailable"
