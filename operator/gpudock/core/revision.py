"""A revision record and the store interface both backends implement.

Every spec change that needs a new container makes a revision. Its record says what
the revision was (the normalized spec shape), where its container's disk started
(``image``, and ``layer`` when a saved writable layer was copied into it) and where its
final disk is kept (``saved_layer`` or ``preserved_image``, once the container was
stopped and saved), and which GPUs and host ports it had.

Records are keyed ``<prefix>/GpuReplicaSet/<namespace>/<name>/<revision>``: one get
reads a revision, one range read lists a resource's history. Nothing depends on a
backend's own change history (etcd's MVCC), so compaction cannot lose a revision.
"""

from __future__ import annotations

import builtins
import json
from collections.abc import Iterable
from dataclasses import asdict, dataclass, fields
from typing import Any, Protocol

from gpudock.api import gpu_replica_set
from gpudock.api.gpu_replica_set import PortBinding, RevisionSummary
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
    # Docker refused to run the revision's container ("Reason: message"): it never
    # ran, is not retried until the spec changes, and cannot be rolled back to.
    failed: str | None = None

    def summary(self) -> RevisionSummary:
        return RevisionSummary(self.revision, self.created_at, self.change_cause,
                               str(self.spec.get("image", "")),
                               int(self.spec.get("gpuCount", 0)), self.rollback_of,
                               self.failed)

    def to_json(self) -> str:
        data = asdict(self)
        data["ports"] = [p.to_dict() for p in self.ports]
        return json.dumps(data, sort_keys=True)

    @classmethod
    def from_json(cls, text: str | bytes) -> Revision:
        data = json.loads(text)
        known = {f.name for f in fields(cls)}
        data = {k: v for k, v in data.items() if k in known}  # a newer agent's record
        data["gpus"] = tuple(data.get("gpus") or ())
        data["ports"] = tuple(PortBinding.from_dict(p) for p in data.get("ports") or ())
        return cls(**data)


def layers_named(records: Iterable[Revision]) -> set[str]:
    """Every saved writable layer the records name: their saved disks and the layers
    their containers started from."""
    return {p for r in records for p in (r.saved_layer, r.layer) if p}


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

    def delete_all(self, namespace: str, name: str) -> None: ...

    def put_volume(self, record: VolumeRevision) -> None: ...

    def list_volume(self, namespace: str, name: str) -> builtins.list[VolumeRevision]:
        """Every record of the SizedVolume name, oldest first."""
        ...

    def delete_volume_all(self, namespace: str, name: str) -> None: ...

    def close(self) -> None: ...
