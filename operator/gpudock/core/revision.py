"""A revision record and the store interface both backends implement.

Every spec change that needs a new container makes a revision. Its record says what
the revision was (the normalized spec shape), where its container's disk started
(``image``, and ``layer`` when a saved writable layer was copied into it) and where its
final disk is kept (``saved_layer`` or ``preserved_image``, once the container was
stopped and saved), and which GPUs and host ports it had.

Records are keyed ``<prefix>/GpuReplicaSet/<namespace>/<name>/<revision>``: one get
reads a revision, one range read lists a resource's history. Nothing depends on a
backend's own change history (etcd's MVCC), so compaction cannot lose a revision.

Both stores keep a record as :meth:`Revision.to_json` writes it and read it back with
:meth:`Revision.from_json`, the one decoder, which also reads the records of older
agents (see :func:`legacy_failure`).
"""

from __future__ import annotations

import builtins
import json
from collections.abc import Iterable
from dataclasses import asdict, dataclass, fields
from typing import Any, Protocol

from gpudock.api import gpu_replica_set
from gpudock.api.gpu_replica_set import PortBinding, RevisionSummary
from gpudock.api.reasons import Reason
from gpudock.core.volume_revision import VolumeRevision

KIND = gpu_replica_set.KIND
REVISION_DIGITS = 10  # zero-padded, so keys sort in revision order


@dataclass(frozen=True)
class Revision:
    namespace: str
    name: str
    revision: int
    uid: str  # the incarnation of the resource that made it
    spec: dict[str, Any]  # GpuReplicaSetSpec.shape()
    image: str  # the image the revision's container starts from
    container_name: str
    gpus: tuple[str, ...]
    ports: tuple[PortBinding, ...]
    created_at: str
    change_cause: str = ""  # the kubernetes.io/change-cause annotation
    generation: int | None = None  # metadata.generation it was made for
    rollback_of: int | None = None  # set when it restores revision N
    preserved_image: str | None = None  # the revision's saved disk, committed
    preserved_from: str | None = None  # the container that disk was saved from
    # On overlay2 a saved disk is a copy of the container's writable layer (a
    # directory, adapters/overlay_layers.py) over ``image``, not a committed image;
    # set when the last save was one (a commit clears it).
    saved_layer: str | None = None
    # The saved layer copied into the revision's container before it first started:
    # with ``image``, where its disk started.
    layer: str | None = None
    # The container the agent last started for this revision: when it is gone and was
    # not saved and removed by the agent (preserved_from), it was removed behind the
    # agent's back (drift).
    container_id: str | None = None
    # The container the agent stopped for spec.state Paused (so its being stopped is
    # not drift when the resource runs again).
    paused_container: str | None = None
    # Docker refused to run the revision's container (the condition's reason and
    # message then): it never ran, is not retried until the spec changes, and cannot
    # be rolled back to.
    failed_reason: Reason | None = None
    failed_message: str = ""
    # The ID ``image`` had when the revision's container was made: a saved layer is
    # only ever put back over that image, whatever the name points to later (None in
    # records of agents before 0.3: then the name's image is taken).
    image_id: str | None = None
    # Its container's address on the instance network ("": none): a container made
    # again for the revision (after state Stopped) asks for it first.
    address: str = ""
    # The node a migration brought it from, on the record of the revision that was
    # current there: the target starts the instance as a new revision "migrated from
    # A to B" from its disk (docs/migration.md); None on every other record.
    migrated_from: str | None = None

    @property
    def failed(self) -> bool:
        """Docker refused to run the revision's container: it never ran."""
        return self.failed_reason is not None

    def failure_text(self) -> str | None:
        """Why it never ran as people read it, ``status.history[].failed``:
        ``"Reason: message"``; None when it did not fail."""
        if self.failed_reason is None:
            return None
        return f"{self.failed_reason}: {self.failed_message}"

    def summary(self) -> RevisionSummary:
        return RevisionSummary(self.revision, self.created_at, self.change_cause,
                               str(self.spec.get("image", "")),
                               int(self.spec.get("gpuCount", 0)), self.rollback_of,
                               self.failure_text())

    def to_json(self) -> str:
        data = asdict(self)
        data["ports"] = [p.to_dict() for p in self.ports]
        # For agents older than failed_reason (a downgrade), which know only this
        # text; never read back while failed_reason is there.
        data[LEGACY_FAILED] = self.failure_text()
        return json.dumps(data, sort_keys=True)

    @classmethod
    def from_json(cls, text: str | bytes) -> Revision:
        data = json.loads(text)
        failure: tuple[Reason | None, str] = (None, "")
        if "failed_reason" in data:
            if data["failed_reason"] is not None:
                failure = _failure(str(data["failed_reason"]),
                                   str(data.get("failed_message") or ""))
        else:  # written by an agent older than failed_reason
            failure = legacy_failure(data.get(LEGACY_FAILED))
        known = {f.name for f in fields(cls)}
        data = {k: v for k, v in data.items() if k in known}  # a newer agent's record
        data["gpus"] = tuple(data.get("gpus") or ())
        data["ports"] = tuple(PortBinding.from_dict(p) for p in data.get("ports") or ())
        data["failed_reason"], data["failed_message"] = failure
        return cls(**data)


LEGACY_FAILED = "failed"  # the record's key for "Reason: message" before failed_reason


def legacy_failure(text: object) -> tuple[Reason | None, str]:
    """(failed_reason, failed_message) of a record written before they were fields,
    from its ``failed`` text, ``"Reason: message"`` (None or "": it did not fail).
    The only place that text is parsed, once, when such a record is read."""
    if not isinstance(text, str) or not text:
        return None, ""
    reason, _, message = text.partition(": ")
    if reason not in _REASONS:  # never written so: the text is kept whole
        return Reason.CONTAINER_START_FAILED, text
    return Reason(reason), message


_REASONS = frozenset(Reason)


def _failure(reason: str, message: str) -> tuple[Reason, str]:
    """A stored failure. A reason this agent does not know (a newer agent wrote the
    record) reads as ContainerStartFailed, what a refused start is by default, with
    the reason kept in the message."""
    if reason in _REASONS:
        return Reason(reason), message
    return Reason.CONTAINER_START_FAILED, f"{reason}: {message}"


def layers_named(records: Iterable[Revision]) -> set[str]:
    """Every saved writable layer the records name: their saved disks and the layers
    their containers started from."""
    return {p for r in records for p in (r.saved_layer, r.layer) if p}


def layer_let_go(before: Revision | None, after: Revision,
                 records: Iterable[Revision]) -> str | None:
    """The saved layer a revision's container started from, once the revision is made
    again from another one (resumed from its own saved disk after a stop or a
    migration: ``layer`` becomes that disk) and no record names it any more: nothing
    would ever remove it otherwise, neither pruning nor a Purge, which both go by the
    records (found by the soak: layers piled up past the history limit and outlived
    the resource). None when there is none to remove."""
    old = before.layer if before is not None else None
    if not old or old == after.layer:
        return None
    others = [r for r in records if r.revision != after.revision]
    return None if old in layers_named([*others, after]) else old


def revision_key(prefix: str, namespace: str, name: str, revision: int | None = None,
                 kind: str = KIND) -> str:
    """The key of one revision, or (revision None) the prefix of all of a resource's."""
    base = f"{prefix.rstrip('/')}/{kind}/{namespace}/{name}/"
    return base if revision is None else f"{base}{revision:0{REVISION_DIGITS}d}"


class RevisionStore(Protocol):
    """Where revision records live. Errors reaching the backend are TransientErrors."""

    def put(self, record: Revision) -> None: ...

    def get(self, namespace: str, name: str, revision: int) -> Revision | None: ...

    def list_retained(self, namespace: str, name: str) -> list[Revision]:
        """The records of deleted resources of this name that were set apart
        (stored under ``<name>@<uid>``), by UID then revision."""
        ...

    def list(self, namespace: str, name: str) -> list[Revision]:
        """Every record of the resource name, oldest first."""
        ...

    def delete(self, namespace: str, name: str, revision: int) -> None: ...

    def delete_own(self, namespace: str, name: str, revision: int) -> None:
        """Delete this node's own record of the revision only: what a migration's
        transfer put here. ``delete`` also deletes a record of the same revision an
        agent before the node layout wrote under an etcd prefix that nodes share,
        which may be another node's (the source's, during a migration)."""
        ...

    def delete_all(self, namespace: str, name: str) -> None: ...

    def put_volume(self, record: VolumeRevision) -> None: ...

    def list_volume(self, namespace: str, name: str) -> builtins.list[VolumeRevision]:
        """Every record of the SizedVolume name, oldest first."""
        ...

    def delete_volume_all(self, namespace: str, name: str) -> None: ...

    def close(self) -> None: ...
