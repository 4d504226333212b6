"""A GpuReplicaSet's revision history: the records a plan writes (a new revision, an
adopted container), their numbering, failed attempts, an earlier resource's history
set aside or adopted, records pruned past revisionHistoryLimit, and containers
retired (disk saved, then removed) when replaced or deleted."""

from __future__ import annotations

from dataclasses import replace

from gpudock.api.gpu_replica_set import HistoryPolicy, PortBinding
from gpudock.api.reasons import Reason
from gpudock.core import labels
from gpudock.core.container_config import spec_hash
from gpudock.core.observed import ObservedContainer, ResourceKey
from gpudock.core.replica_set import actions as act
from gpudock.core.replica_set.observation import Observation, Target
from gpudock.core.replica_set.saved_disks import (
    SavedDisks,
    is_preserved,
    preserved_image,
    retained_name,
    retained_repository,
    save,
)
from gpudock.core.replica_set.status import bindings_of
from gpudock.core.revision import Revision, layers_named
from gpudock.errors import UserError


# ---------------------------------------------------------------------------- records
def new_record(obs: Observation, target: Target, revision: int, image: str,
               gpus: tuple[str, ...], ports: tuple[PortBinding, ...],
               layer: str | None = None, image_id: str | None = None,
               address: str = "") -> Revision:
    """A new revision's record; ``image_id`` is the ID of ``image`` its disk was made
    over (by default what the name points to now)."""
    if image_id is None and image in obs.images:
        image_id = obs.images[image].id
    return Revision(
        namespace=obs.key.namespace, name=obs.key.name, revision=revision, uid=obs.uid,
        spec=target.spec.shape(), image=image,
        container_name=labels.object_name(obs.key.namespace, obs.key.name, revision),
        gpus=gpus, ports=ports, created_at=obs.now, change_cause=target.cause,
        generation=obs.generation, rollback_of=target.rollback_of, layer=layer,
        image_id=image_id, address=address)


def adopted_record(obs: Observation, container: ObservedContainer) -> Revision:
    matches = container.spec_hash == spec_hash(obs.spec)
    shape = obs.spec.shape() if matches else {"image": container.base_image}
    return Revision(
        namespace=obs.key.namespace, name=obs.key.name, revision=container.revision,
        uid=obs.uid, spec=shape, image=container.image or container.base_image,
        container_name=container.name,
        gpus=container.gpus, ports=bindings_of(container), created_at=obs.now,
        change_cause=obs.change_cause if matches else "", generation=obs.generation,
        address=container.address)


def next_revision(obs: Observation, base: int) -> int:
    """The number of a new revision: after ``base`` and after every failed attempt
    (a revision that never ran keeps its number in the history)."""
    failed = (r.revision for r in obs.own_records if r.failed)
    return max(base, *failed, 0) + 1


def failed_attempt(obs: Observation, record: Revision | None,
                   target: Target) -> Revision | None:
    """The revision that already tried this very change (same spec generation and
    shape) and that Docker refused to run: not tried again until the spec changes."""
    after = record.revision if record is not None else 0
    return next((r for r in reversed(obs.own_records) if r.failed and r.revision > after
                 and r.generation == obs.generation and r.rollback_of == target.rollback_of
                 and target.spec.matches(r.spec)), None)


def failure(failed: Revision, record: Revision | None) -> UserError:
    """The condition of a change Docker refused: the failed revision's reason."""
    keeps = (f"; revision {record.revision} keeps running" if record is not None
             else "")
    return UserError(failed.failed_reason or Reason.CONTAINER_START_FAILED,
                     f"revision {failed.revision} could not be started: "
                     f"{failed.failed_message}{keeps}. Change the spec to try again")


# ------------------------------------------------------------- an earlier resource's
def set_aside(obs: Observation) -> act.MoveHistory:
    """An earlier resource's records (it was deleted with historyPolicy Retain) go
    under ``<name>@<uid>`` and its saved disks into the retained repository, so this
    resource starts at revision 1 and never sees them unless it adopts them."""
    foreign = [r for r in obs.records if r.uid != obs.uid]
    repository = retained_repository(obs.key)
    retags = {tag: f"{repository}:{r.uid}-rev-{tag.rsplit('rev-', 1)[-1]}"
              for r in foreign for tag in (r.preserved_image, r.image)
              if tag and tag in obs.preserved_tags}
    moved = tuple(replace(r, name=retained_name(r.name, r.uid),
                          preserved_image=retags.get(r.preserved_image or "",
                                                     r.preserved_image),
                          image=retags.get(r.image, r.image)) for r in foreign)
    return act.MoveHistory(tuple(sorted(retags.items())), moved, tuple(foreign),
                           Reason.HISTORY_RETAINED_APART, f"{len(foreign)} revision(s) of an "
                           f"earlier resource of this name (uid {_uids(foreign)}) kept apart "
                           "(retained history: kubectl gpudock history --retained NAME; to "
                           "continue it, create this resource with the annotation "
                           "gpudock.dev/adopt-history set to that uid)")


def _uids(records: list[Revision]) -> str:
    return ", ".join(sorted({r.uid for r in records}))


def adopt(obs: Observation) -> act.MoveHistory:
    """The retained history named by the annotation becomes this resource's own: its
    records under this name and UID, its saved disks under this resource's tags."""
    retags = {tag: preserved_image(obs.key, int(tag.rsplit("rev-", 1)[-1]))
              for r in obs.adoptable for tag in (r.preserved_image, r.image)
              if tag and tag in obs.retained_tags}
    adopted = tuple(replace(r, name=obs.key.name, uid=obs.uid,
                            preserved_image=retags.get(r.preserved_image or "",
                                                       r.preserved_image),
                            image=retags.get(r.image, r.image), container_id=None,
                            paused_container=None) for r in obs.adoptable)
    return act.MoveHistory(tuple(sorted(retags.items())), adopted, obs.adoptable,
                           Reason.HISTORY_ADOPTED, f"{len(adopted)} revision(s) of the deleted "
                           f"resource (uid {obs.adoptable[0].uid}) adopted")


# ------------------------------------------------------------------------------ steps
def plan_delete(key: ResourceKey, containers: tuple[ObservedContainer, ...],
                records: tuple[Revision, ...], saved: SavedDisks,
                policy: HistoryPolicy) -> tuple[act.Action, ...]:
    """Deleting the resource: Retain saves each container's disk (a later resource of
    the same name can roll back to it) before removing it; Purge removes containers,
    saved disks and records."""
    mine = [c for c in containers if c.owner == key]
    if policy is HistoryPolicy.PURGE:
        return (*(act.RemoveContainer(c.id, c.name) for c in mine),
                act.PurgeHistory(key.namespace, key.name, tuple(sorted(saved.tags)),
                                 tuple(sorted(layers_named(records)))))
    return retire_all(key, records, saved, mine, Reason.REMOVED)


def retire_all(key: ResourceKey, records: tuple[Revision, ...], saved: SavedDisks,
               containers: list[ObservedContainer],
               reason: Reason) -> tuple[act.Action, ...]:
    actions: list[act.Action] = []
    for container in containers:
        record = next((r for r in records if r.revision == container.revision
                       and r.uid == container.uid), None)
        actions += retire(key, saved, container, record, reason)
    return tuple(actions)


def retire(key: ResourceKey, saved: SavedDisks, container: ObservedContainer,
           record: Revision | None, reason: Reason) -> tuple[act.Action, ...]:
    """Remove a container, its disk saved first unless it already is."""
    steps = () if is_preserved(saved, container, record) else save(key, saved, container,
                                                                   record)
    return (*steps, act.RemoveContainer(container.id, container.name, reason))


def prune(obs: Observation, record: Revision) -> tuple[act.Action, ...]:
    """Records (and saved disks) past revisionHistoryLimit, oldest first; never the
    disk the current container was made from."""
    older = [r for r in obs.records if r.revision < record.revision]
    excess = older[:max(0, len(older) - obs.spec.revision_history_limit)]
    return tuple(act.PruneRevision(r) for r in excess if r.preserved_image != record.image
                 and (r.saved_layer is None or r.saved_layer != record.layer))
