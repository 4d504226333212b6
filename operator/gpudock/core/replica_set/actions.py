"""The steps a GpuReplicaSet plan asks for. Each is idempotent: run twice, or resumed
after a crash, it leaves the node as running it once would."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from gpudock.api.reasons import Reason
from gpudock.core.container_config import ContainerConfig
from gpudock.core.limits import ContainerLimits
from gpudock.core.revision import Revision


@dataclass(frozen=True)
class StartRevision:
    """Record the revision, then create its container, copy the saved writable layer
    ``layer`` into it when there is one, and start it unless Paused. With
    ``saved_from`` (the stopped container ``layer`` was saved from, removed by this
    plan once the new one runs) that container's own writable layer is moved into
    the new one instead, when it still holds what was saved; moved back if Docker
    refuses to start the new one."""

    record: Revision
    config: ContainerConfig
    start: bool = True
    reason: Reason = Reason.REVISION_STARTED
    layer: str | None = None
    saved_from: str | None = None


@dataclass(frozen=True)
class PullImage:
    """Before a container is made from ``image``: pull it with the namespace's
    ``secrets`` when ``pull`` (it is absent, or imagePullPolicy is Always); else,
    when a pull with another namespace's credentials brought it, prove this
    namespace's own credentials can pull it (asked of the registry)."""

    image: str
    pull: bool
    secrets: tuple[str, ...] = ()


@dataclass(frozen=True)
class RecordRevision:
    """Write a revision record only (a change made while Stopped, an adopted container)."""

    record: Revision
    reason: Reason = Reason.REVISION_RECORDED


@dataclass(frozen=True)
class PreserveDisk:
    """Save a stopped container's disk and note it in the revision's record, when there
    is one: with ``layer``, a copy of its writable layer at that path (files unchanged
    since ``previous``, the saved layer it started from, shared with it); without, or
    where the copy cannot be made, ``docker commit`` to ``image`` (flattened past the
    layer threshold)."""

    container_id: str
    name: str
    image: str
    record: Revision | None
    layer: str | None = None
    previous: str | None = None


@dataclass(frozen=True)
class StartContainer:
    container_id: str
    name: str
    reason: Reason = Reason.STARTED
    note: Revision | None = None  # the record as it is once the container runs
    # A never-started container's saved layer: copied in first unless it already was
    # (an agent killed between creating the container and starting it).
    layer: str | None = None


@dataclass(frozen=True)
class StopContainer:
    container_id: str
    name: str
    reason: Reason = Reason.STOPPED
    saving: bool = False  # its disk is saved next: check there is room before stopping
    note: Revision | None = None  # the record as it is once the container is stopped
    # Its writable layer is saved there next (``previous``: the saved layer it shares
    # files with): a first copy is made while it still runs (a pre-copy).
    layer: str | None = None
    previous: str | None = None


@dataclass(frozen=True)
class RemoveContainer:
    container_id: str
    name: str
    reason: Reason = Reason.REMOVED


@dataclass(frozen=True)
class RenameContainer:
    container_id: str
    old_name: str
    new_name: str


@dataclass(frozen=True)
class UnpauseContainer:
    container_id: str
    name: str


@dataclass(frozen=True)
class SetRestartPolicy:
    container_id: str
    name: str
    policy: str


@dataclass(frozen=True)
class UpdateLimits:
    """Change the container's CPU, memory and pids limits in place (Docker's update:
    same container, no new revision), then note the spec they came from in its
    revision's record, so a restart or a rollback to it keeps them."""

    container_id: str
    name: str
    limits: ContainerLimits
    note: Revision | None = None


@dataclass(frozen=True)
class WriteSpec:
    """Write a revision's shape into the resource's spec and clear spec.rollbackTo."""

    shape: dict[str, Any]
    revision: int


@dataclass(frozen=True)
class PruneRevision:
    """Forget a revision past revisionHistoryLimit: its saved disk, then its record."""

    record: Revision


@dataclass(frozen=True)
class MoveHistory:
    """Re-key revision records (an earlier resource's history set aside as retained,
    or a retained history adopted): saved disks tagged under their new names first,
    then the records written under their new keys, then the old keys and tags
    removed. Each step is idempotent, so a crash anywhere repeats harmlessly."""

    retags: tuple[tuple[str, str], ...]  # (existing tag, new tag)
    records: tuple[Revision, ...]  # as they are to be stored
    removed: tuple[Revision, ...]  # the records whose keys go
    reason: Reason
    message: str


@dataclass(frozen=True)
class PurgeHistory:
    """historyPolicy Purge on delete: every record and saved disk of the name."""

    namespace: str
    name: str
    images: tuple[str, ...]
    layers: tuple[str, ...] = ()  # saved writable layers


Action = (PullImage | StartRevision | RecordRevision | PreserveDisk | StartContainer | StopContainer
          | RemoveContainer | RenameContainer | UnpauseContainer | SetRestartPolicy
          | UpdateLimits | WriteSpec | PruneRevision | MoveHistory | PurgeHistory)

# Steps after which GPUs or host ports may have become free for another resource (a
# stopped container still holds them: only removing one frees them).
RELEASING = (RemoveContainer,)
# The step that takes GPUs and host ports (a new container carries them in its
# labels): it runs under the node lock, in the same hold as the observation it used.
ALLOCATING = (StartRevision,)
