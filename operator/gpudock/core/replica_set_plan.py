"""The GpuReplicaSet decision: (desired, observed) -> actions + status.

Pure: it reads an :class:`Observation` (Docker's containers, the revision records, the
saved disks) and returns a :class:`Plan`. The reconciler runs the actions, observes
again and plans again until nothing is left to do. Every step is chosen from what is
observed, never from memory, so an agent killed at any step picks up where it died:

1. containers of an earlier resource of this name, or of an older revision: stop,
   save the disk if not saved yet, remove;
2. a spec change (or spec.rollbackTo): check GPUs/ports/image first, then stop the
   container and save its disk, then record revision N+1 and create its container
   from that disk (the old one is removed by 1). On overlay2 a saved disk is a copy of
   the container's writable layer (a directory under the layer root) and the new
   container is made from the same image with that copy put in before it first
   starts; elsewhere it is ``docker commit`` to ``gpudock-preserved/<ns>_<name>:rev-N``
   and the new container is made from that image;
3. a finished rollback: write the revision's spec back and clear spec.rollbackTo;
4. state Stopped: save the disk and remove the container (GPUs and ports free);
   Paused: stop it, keep it (GPUs and ports stay reserved); Running: keep it running.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from typing import Any

from gpudock.api.gpu_replica_set import (
    DesiredState,
    GpuReplicaSetSpec,
    GpuReplicaSetStatus,
    HistoryPolicy,
    PortBinding,
)
from gpudock.api.paths import is_under
from gpudock.core import labels
from gpudock.core import replica_set_actions as act
from gpudock.core import replica_set_status as status
from gpudock.core.allocation import Ledger, allocate_gpus, allocate_ports
from gpudock.core.container_config import (
    RESTART_POLICY,
    ContainerConfig,
    build_container_config,
    spec_hash,
)
from gpudock.core.gpu_attach import DEFAULT_ATTACHMENT, GpuAttachment
from gpudock.core.observed import (
    HostPort,
    ImageInfo,
    ObservedContainer,
    ResourceKey,
    current_of,
)
from gpudock.core.replica_set_status import Seen, bindings_of
from gpudock.core.revision import Revision, layers_named
from gpudock.errors import UserError

PRESERVED_REPOSITORY = "gpudock-preserved"


@dataclass(frozen=True)
class Observation:
    key: ResourceKey
    uid: str
    generation: int | None
    spec: GpuReplicaSetSpec
    previous_status: Mapping[str, Any]
    containers: tuple[ObservedContainer, ...]  # every container on the node
    inventory: tuple[str, ...]  # GPU UUIDs of the node, in index order
    port_range: tuple[int, int]
    allowed_host_paths: tuple[str, ...]
    images_present: frozenset[str]  # of the spec's and the records' base images
    records: tuple[Revision, ...] = ()  # this name's revisions, oldest first
    preserved_tags: frozenset[str] = frozenset()  # saved disks that exist
    change_cause: str = ""
    now: str = ""
    volume_names: Mapping[str, str | None] = field(default_factory=dict)  # None: not ready
    # (hostPath, readOnly) -> the real path to mount, or why the node refuses it
    # (adapters/host_paths.py resolved it on the host).
    host_paths: Mapping[tuple[str, bool], str | UserError] = field(default_factory=dict)
    # What Docker says of the spec's image (absent: not on the node).
    images: Mapping[str, ImageInfo] = field(default_factory=dict)
    # Explicit hostPorts must lie here (None: the node's port_range).
    explicit_port_range: tuple[int, int] | None = None
    node_name: str = ""  # this agent's node, labelled on what it creates
    # Host ports Docker could not bind although no container holds them (another
    # process on the node has them): never auto-allocated.
    busy_host_ports: frozenset[HostPort] = frozenset()
    gpu_attach: GpuAttachment = DEFAULT_ATTACHMENT  # how its container gets its GPUs
    # A retained history this resource asked to adopt (the gpudock.dev/adopt-history
    # annotation names the deleted resource's UID), as set aside; its saved disks.
    adoptable: tuple[Revision, ...] = ()
    retained_tags: frozenset[str] = frozenset()
    # The saved writable layers the records name that exist, and where a new one is
    # saved (None: disks are saved with docker commit).
    saved_layers: frozenset[str] = frozenset()
    layer_root: str | None = None

    @property
    def own_records(self) -> tuple[Revision, ...]:
        return tuple(r for r in self.records if r.uid == self.uid)

    @property
    def saved(self) -> SavedDisks:
        return SavedDisks(self.preserved_tags, self.saved_layers, self.layer_root)


@dataclass(frozen=True)
class SavedDisks:
    """A resource's saved disks that exist on the node (committed images by tag,
    writable layers by directory) and where a container's layer is saved (None:
    saves commit)."""

    tags: frozenset[str]
    layers: frozenset[str] = frozenset()
    layer_root: str | None = None


@dataclass(frozen=True)
class Disk:
    """A container's filesystem when it is made: an image, and on overlay2 a saved
    writable layer copied into the container before it first starts."""

    image: str
    layer: str | None = None


@dataclass(frozen=True)
class Plan:
    actions: tuple[act.Action, ...]
    status: GpuReplicaSetStatus
    drift: str | None = None  # what was found changed behind the agent's back
    # The container the next pass creates, when this pass stops a serving one for
    # it: what can be checked of it is checked before the stop.
    next_config: ContainerConfig | None = None
    next_carries_disk: bool = False  # next_config's disk is the serving container's
    recheck_after: float | None = None  # observe again then, even if nothing happens


@dataclass(frozen=True)
class _Target:
    """What the container should become: the spec, or a rollback's revision."""

    spec: GpuReplicaSetSpec
    cause: str
    rollback_of: int | None = None
    source: Disk | None = None  # the saved disk a rollback starts from


def preserved_repository(key: ResourceKey) -> str:
    return f"{PRESERVED_REPOSITORY}/{labels.base_name(key.namespace, key.name)}"


def is_reserved_reference(image: str) -> bool:
    """True for a reference into the agent's own repository, however it is written
    (``docker.io/``, ``library/``, a tag or a digest)."""
    name = image.lower()
    for prefix in ("docker.io/", "index.docker.io/", "registry-1.docker.io/", "library/"):
        name = name.removeprefix(prefix)
    return name.startswith(PRESERVED_REPOSITORY + "/") or name.startswith(
        PRESERVED_REPOSITORY + ":") or name.startswith(PRESERVED_REPOSITORY + "@") or \
        name == PRESERVED_REPOSITORY


def preserved_image(key: ResourceKey, revision: int) -> str:
    """The image that keeps revision ``revision``'s disk."""
    return f"{preserved_repository(key)}:rev-{revision}"


def saved_layer_path(root: str, container: ObservedContainer) -> str:
    """Where a container's writable layer is saved: by the resource's UID (a later
    resource of the same name never meets it), revision and container (a revision
    made again after a stop is saved anew)."""
    return f"{root}/{container.uid}/rev-{container.revision}-{container.id[:12]}"


def retained_repository(key: ResourceKey) -> str:
    """Where the saved disks of deleted resources of this name are kept ("__" never
    occurs in a base name, so no resource's own repository is ever this one)."""
    return f"{preserved_repository(key)}__retained"


def retained_name(name: str, uid: str) -> str:
    """The store name a deleted resource's history is kept under ("@" never occurs
    in a Kubernetes name)."""
    return f"{name}@{uid}"


# --------------------------------------------------------------------------- the flow
def plan_replica_set(obs: Observation) -> Plan:
    mine = [c for c in obs.containers if c.owner == obs.key]
    stale = [c for c in mine if c.uid != obs.uid]  # an earlier resource of this name
    if stale:
        retire = _retire_all(obs.key, obs.records, obs.saved, stale, "RemovedStale")
        return _progress(obs, None, None, retire, "Cleaning",
                         "saving and removing an earlier resource's containers")
    if len(obs.own_records) < len(obs.records):
        return _progress(obs, None, None, (_set_aside(obs),), "Cleaning",
                         "keeping the history of an earlier resource of this name apart")
    if obs.adoptable and not obs.records:
        return _progress(obs, None, None, (_adopt(obs),), "Adopting",
                         "adopting the retained history of the deleted resource")
    if obs.node_name and obs.spec.node_name != obs.node_name:
        return blocked_plan(obs, UserError("NodeNameChanged", (
            f"spec.nodeName was changed to {obs.spec.node_name}, but this resource's "
            f"container and disk are on node {obs.node_name}; moving an instance between "
            f"nodes is not supported yet. Set spec.nodeName back to {obs.node_name} "
            "(nothing was changed meanwhile)")))
    current = current_container(obs)
    older = [c for c in mine if current is not None and c.id != current.id]
    record = _record_of(obs, current)
    if older:  # a rollout whose new container exists: the old one goes
        return _progress(obs, current, record,
                         _retire_all(obs.key, obs.records, obs.saved, older,
                                     "PreviousRevisionRemoved"),
                         "RollingOut", "removing the previous revision's container")
    try:
        target = _target(obs, record)
        if target is None:
            assert record is not None
            assert record.rollback_of is not None
            return _progress(obs, current, record,
                             (act.WriteSpec(record.spec, record.rollback_of),),
                             "RollingBack",
                             f"writing revision {record.rollback_of}'s spec back")
        if current is not None:
            return _with_container(obs, current, record, target)
        return _without_container(obs, record, target)
    except UserError as exc:
        return blocked_plan(obs, exc)


def blocked_plan(obs: Observation, error: UserError) -> Plan:
    """Nothing can be done until the user (or the node) changes something."""
    current = current_container(obs)
    seen = _seen(obs, current, _record_of(obs, current))
    return Plan((), status.blocked(seen, error), recheck_after=_recheck(obs, current))


def _seen(obs: Observation, current: ObservedContainer | None,
          record: Revision | None) -> Seen:
    return Seen(obs.records, obs.generation, current, record, obs.previous_status, obs.now)


def _recheck(obs: Observation, current: ObservedContainer | None) -> float | None:
    """A container restarted by Docker counts as serving once it has run a while:
    look again then."""
    return status.unsettled_for(current, obs.now) if current is not None else None


def current_container(obs: Observation) -> ObservedContainer | None:
    return current_of(obs.containers, obs.key, obs.uid)


def _record_of(obs: Observation, current: ObservedContainer | None) -> Revision | None:
    """The record of the current revision: the container's, else the latest one this
    resource made (a Stopped resource has no container). Failed revisions never ran:
    they are nobody's current record."""
    mine = [r for r in obs.own_records if not r.failed]
    if current is not None:
        return next((r for r in mine if r.revision == current.revision), None)
    return mine[-1] if mine else None


def _target(obs: Observation, record: Revision | None) -> _Target | None:
    """None when the rollback asked for is done (only the spec is left to write)."""
    wanted = obs.spec.rollback_to
    if wanted is None:
        return _Target(obs.spec, obs.change_cause)
    if record is not None and record.rollback_of == wanted and \
            record.generation == obs.generation:
        return None
    source = next((r for r in obs.records if r.revision == wanted), None)
    if source is None or source.failed:
        known = ", ".join(str(r.revision) for r in obs.records if not r.failed) or "none"
        never = " (it never ran)" if source is not None else ""
        raise UserError("RevisionNotFound", f"spec.rollbackTo.revision {wanted} cannot be "
                        f"restored{never}; revisions that can: {known}. Remove "
                        "spec.rollbackTo or pick one of them; nothing was changed")
    if record is not None and wanted == record.revision:
        raise UserError("RollbackToCurrent", f"revision {wanted} is the current revision; "
                        "remove spec.rollbackTo")
    disk = _saved_disk_of(obs, source)
    if disk is None:
        raise UserError("RevisionDiskGone", f"the saved disk of revision {wanted} no "
                        "longer exists; it cannot be restored")
    return _Target(obs.spec.with_shape(source.spec), f"rolled back to revision {wanted}",
                   rollback_of=wanted, source=disk)


def _with_container(obs: Observation, current: ObservedContainer, record: Revision | None,
                    target: _Target) -> Plan:
    if record is None:  # made before revisions were recorded: adopt it first
        return _progress(obs, current, None, (act.RecordRevision(
            _adopted(obs, current), "RevisionAdopted"),), "Recording",
            f"recording {current.name} as revision {current.revision}")
    if obs.spec.state is DesiredState.STOPPED:
        return _progress(obs, current, record, _retire(obs.key, obs.saved, current,
                                                       record, "Stopped"),
                         "Stopping", f"saving the disk of {current.name} and releasing "
                         "its GPUs and ports")
    moved = _moved_volume(obs, current)
    if target.rollback_of is None and target.spec.matches(record.spec):
        if moved is None:
            return _keep(obs, current, record)
        target = replace(target, cause=moved)
    failed = _failed_attempt(obs, record, target)
    if failed is not None:  # the change was tried and Docker refused it
        return _keep(obs, current, record, failed)
    revision = _next_revision(obs, current.revision)
    carries = target.source is None and current.base_image == target.spec.image
    preserved = _is_preserved(obs.saved, current, record)
    disk = target.source
    if carries:  # the disk its save makes, or made
        disk = _saved_disk_of(obs, record) if preserved else _save_target(
            obs.key, obs.saved, current, record)
        if disk is None:  # saved over an image that is gone since: never start bare
            raise UserError("RevisionDiskGone", f"the saved disk of {current.name} is "
                            f"over image {record.image}, which is no longer on the node; "
                            "load it again (nothing was changed)")
    # Everything the new revision needs is checked before the old container stops.
    config = _container_for(obs, target.spec, revision, disk, current.gpus,
                            bindings_of(current), carried_volumes=current.volumes)
    if not preserved:
        plan = _progress(obs, current, record, _save(obs.key, obs.saved, current, record),
                         "RollingOut", f"saving the disk of {current.name} for revision "
                         f"{revision}")
        return replace(plan, next_config=config, next_carries_disk=carries)
    new = _record(obs, target, revision, config.image, config.gpus, config.ports,
                  disk.layer if disk else None)
    return _progress(obs, current, record, (act.StartRevision(
        new, config, start=obs.spec.state is DesiredState.RUNNING, layer=new.layer),),
        "RollingOut", f"starting revision {revision}")


def _without_container(obs: Observation, record: Revision | None, target: _Target) -> Plan:
    running = obs.spec.state is DesiredState.RUNNING
    if record is not None and target.spec.matches(record.spec) and \
            target.rollback_of is None:
        if obs.spec.state is DesiredState.STOPPED:
            return Plan(_prune(obs, record), status.settled(_seen(obs, None, record),
                                                            "Stopped"))
        disk = _disk_of(obs, record)
        config = _container_for(obs, target.spec, record.revision, disk, record.gpus,
                                record.ports)
        # The record says what the new container is made from, as for a new revision.
        again = replace(record, container_name=config.name, gpus=config.gpus,
                        ports=config.ports, image=config.image,
                        layer=disk.layer if disk else None)
        # Whether its container went behind the agent's back is in the record: one
        # that ran and was not saved and removed by the agent (state Stopped).
        ran = record.container_id is not None
        retired = ran and record.preserved_from == record.container_id
        reason = "Resumed" if retired else "Recreated" if ran else "RevisionStarted"
        return _progress(obs, None, record, (act.StartRevision(
            again, config, start=running, reason=reason, layer=again.layer),),
            "Creating", f"creating container {config.name}",
            drift="container was removed" if ran and not retired else None)
    failed = _failed_attempt(obs, record, target)
    if failed is not None:
        return blocked_plan(obs, _failure(failed, None))
    revision = _next_revision(obs, record.revision if record else 0)
    source = target.source
    if source is None and record is not None and record.spec.get("image") == target.spec.image:
        source = _disk_of(obs, record)
    layer = source.layer if source else None
    if obs.spec.state is DesiredState.STOPPED:  # applied now, started when Running
        image = source.image if source else target.spec.image
        new = _record(obs, target, revision, image, record.gpus if record else (),
                      record.ports if record else (), layer)
        return _progress(obs, None, record, (act.RecordRevision(new),), "Recording",
                         f"recording revision {revision} (not started: state Stopped)")
    config = _container_for(obs, target.spec, revision, source, record.gpus if record
                            else (), record.ports if record else ())
    return _progress(obs, None, record, (act.StartRevision(
        _record(obs, target, revision, config.image, config.gpus, config.ports, layer),
        config, start=running,
        reason="Created" if record is None else "RevisionStarted", layer=layer),),
        "Creating", f"creating container {config.name}")


def _keep(obs: Observation, current: ObservedContainer, record: Revision,
          failed: Revision | None = None) -> Plan:
    """The container already is the revision to run (or, after a failed change, the
    one to run again): repair what drifted, bring it to spec.state."""
    expected = labels.object_name(obs.key.namespace, obs.key.name, current.revision)
    actions: list[act.Action] = []
    drift: list[str] = []
    if current.name != expected:
        actions.append(act.RenameContainer(current.id, current.name, expected))
        drift.append(f"container was renamed to {current.name}")
    if current.restart_policy != RESTART_POLICY:
        actions.append(act.SetRestartPolicy(current.id, expected, RESTART_POLICY))
        drift.append(f"restart policy was changed to {current.restart_policy or 'none'}")
    waiting = [m.volume for m in obs.spec.mounts
               if m.volume is not None and not obs.volume_names.get(m.volume)]
    if obs.spec.state is DesiredState.RUNNING and waiting and not current.running:
        # A volume it mounts is being resized (its agent stopped it) or not there.
        return blocked_plan(obs, UserError("VolumeNotReady", f"SizedVolume {waiting[0]} "
                                           "is not ready (being resized?); the container "
                                           "starts when it is"))
    if obs.spec.state is DesiredState.RUNNING:
        if current.status == "paused":
            actions.append(act.UnpauseContainer(current.id, expected))
            drift.append("container was paused")
        elif current.status == "created":  # never started: its saved layer goes in first
            actions.append(act.StartContainer(current.id, expected, layer=record.layer))
        elif not current.running:
            # Stopped by the agent (state Paused, or for a save) or behind its back:
            # the record says which.
            paused = record.paused_container == current.id
            saved = record.preserved_from == current.id
            reason = ("Resumed" if paused else "PreviousRevisionRestored" if failed
                      else "Restarted")
            actions.append(act.StartContainer(current.id, expected, reason, note=replace(
                record, paused_container=None) if paused else None))
            if not (paused or saved):
                drift.append(f"container had {current.status} (exit code "
                             f"{current.exit_code})")
    elif current.running or current.status == "paused":  # Paused
        actions.append(act.StopContainer(current.id, expected, "Paused",
                                         note=replace(record, paused_container=current.id)))
    note = "; ".join(drift) or None
    if failed is not None:
        error = _failure(failed, record)
        if actions:
            return replace(_progress(obs, current, record, tuple(actions), "Reconciling",
                                     error.message), drift=note)
        return blocked_plan(obs, error)
    if actions:
        return _progress(obs, current, record, tuple(actions), "Reconciling",
                         f"bringing {expected} to state {obs.spec.state}", drift=note)
    return Plan(_prune(obs, record), status.settled(_seen(obs, current, record),
                                                    str(obs.spec.state)),
                recheck_after=_recheck(obs, current))


def _moved_volume(obs: Observation, current: ObservedContainer) -> str | None:
    """Why the container must move to a new revision although its spec is the same:
    a SizedVolume it mounts now lives in another Docker volume (the copy backend
    resized it). None when every volume it mounts is where the volume is now."""
    for mount in obs.spec.mounts:
        now = obs.volume_names.get(mount.volume or "")
        mounted = current.volumes.get(mount.mount_path)
        if mount.volume is not None and now and mounted and mounted != now:
            return f"SizedVolume {mount.volume} moved to Docker volume {now}"
    return None


def _failed_attempt(obs: Observation, record: Revision | None,
                    target: _Target) -> Revision | None:
    """The revision that already tried this very change (same spec generation and
    shape) and that Docker refused to run: not tried again until the spec changes."""
    after = record.revision if record is not None else 0
    return next((r for r in reversed(obs.own_records) if r.failed and r.revision > after
                 and r.generation == obs.generation and r.rollback_of == target.rollback_of
                 and target.spec.matches(r.spec)), None)


def _failure(failed: Revision, record: Revision | None) -> UserError:
    reason, _, message = (failed.failed or "").partition(": ")
    keeps = (f"; revision {record.revision} keeps running" if record is not None
             else "")
    return UserError(reason or "ContainerStartFailed",
                     f"revision {failed.revision} could not be started: {message}{keeps}. "
                     "Change the spec to try again")


def _next_revision(obs: Observation, base: int) -> int:
    """The number of a new revision: after ``base`` and after every failed attempt
    (a revision that never ran keeps its number in the history)."""
    failed = (r.revision for r in obs.own_records if r.failed)
    return max(base, *failed, 0) + 1


def _set_aside(obs: Observation) -> act.MoveHistory:
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
                           "HistoryRetainedApart", f"{len(foreign)} revision(s) of an "
                           "earlier resource of this name kept apart (retained history; "
                           "adopt it with the gpudock.dev/adopt-history annotation)")


def _adopt(obs: Observation) -> act.MoveHistory:
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
                           "HistoryAdopted", f"{len(adopted)} revision(s) of the deleted "
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
    return _retire_all(key, records, saved, mine, "Removed")


def _retire_all(key: ResourceKey, records: tuple[Revision, ...], saved: SavedDisks,
                containers: list[ObservedContainer], reason: str) -> tuple[act.Action, ...]:
    actions: list[act.Action] = []
    for container in containers:
        record = next((r for r in records if r.revision == container.revision
                       and r.uid == container.uid), None)
        actions += _retire(key, saved, container, record, reason)
    return tuple(actions)


def _retire(key: ResourceKey, saved: SavedDisks, container: ObservedContainer,
            record: Revision | None, reason: str) -> tuple[act.Action, ...]:
    """Remove a container, its disk saved first unless it already is."""
    save = () if _is_preserved(saved, container, record) else _save(key, saved, container,
                                                                    record)
    return (*save, act.RemoveContainer(container.id, container.name, reason))


def _save(key: ResourceKey, saved: SavedDisks, container: ObservedContainer,
          record: Revision | None) -> tuple[act.Action, ...]:
    stop = (act.StopContainer(container.id, container.name, saving=True),) if (
        container.running or container.status == "paused") else ()
    previous = record.layer if record is not None and record.layer in saved.layers else None
    return (*stop, act.PreserveDisk(container.id, container.name,
                                    preserved_image(key, container.revision), record,
                                    layer=_save_target(key, saved, container, record).layer,
                                    previous=previous))


def _save_target(key: ResourceKey, saved: SavedDisks, container: ObservedContainer,
                 record: Revision | None) -> Disk:
    """The disk saving ``container`` makes: its writable layer copied under the layer
    root, over the image it was made from, when the node allows (overlay2, the agent
    reaches Docker's root) and a record can keep the path; else a committed image."""
    if saved.layer_root and container.upper_dir and container.image and record is not None:
        return Disk(container.image, saved_layer_path(saved.layer_root, container))
    return Disk(preserved_image(key, container.revision))


def _is_preserved(saved: SavedDisks, container: ObservedContainer,
                  record: Revision | None) -> bool:
    if record is None or record.preserved_from != container.id or container.running:
        return False
    if record.saved_layer:
        return record.saved_layer in saved.layers
    return record.preserved_image in saved.tags


def _has_image(obs: Observation, image: str) -> bool:
    return image in obs.preserved_tags or image in obs.images_present


def _saved_disk_of(obs: Observation, record: Revision) -> Disk | None:
    """The disk saved at a revision's end (its last save), if it is still there."""
    if record.saved_layer:
        if record.saved_layer in obs.saved_layers and _has_image(obs, record.image):
            return Disk(record.image, record.saved_layer)
        return None
    if record.preserved_image and record.preserved_image in obs.preserved_tags:
        return Disk(record.preserved_image)
    return None


def _disk_of(obs: Observation, record: Revision) -> Disk | None:
    """Where a revision's disk is: saved at its end, else where it started; None when
    neither is left (start from the spec's image)."""
    saved = _saved_disk_of(obs, record)
    if saved is not None:
        return saved
    if record.image and _has_image(obs, record.image) and (
            record.layer is None or record.layer in obs.saved_layers):
        return Disk(record.image, record.layer)
    return None


def _prune(obs: Observation, record: Revision) -> tuple[act.Action, ...]:
    """Records (and saved disks) past revisionHistoryLimit, oldest first; never the
    disk the current container was made from."""
    older = [r for r in obs.records if r.revision < record.revision]
    excess = older[:max(0, len(older) - obs.spec.revision_history_limit)]
    return tuple(act.PruneRevision(r) for r in excess if r.preserved_image != record.image
                 and (r.saved_layer is None or r.saved_layer != record.layer))


def _container_for(obs: Observation, spec: GpuReplicaSetSpec, revision: int,
                   disk: Disk | None, held_gpus: tuple[str, ...],
                   held_ports: tuple[PortBinding, ...],
                   carried_volumes: Mapping[str, str] | None = None) -> ContainerConfig:
    """The container of a revision, with GPUs and ports allocated (the ones held first);
    raises UserError when it cannot be made now."""
    host_paths = _check_mounts(obs, spec)
    _check_image_owner(obs, spec.image)
    if spec.image not in obs.images_present:
        raise UserError("ImageNotPresent", f"image {spec.image} is not on the node; load it "
                        "there (gpudock never pulls)")
    _check_explicit_ports(obs, spec)
    if spec.gpu_count > len(obs.inventory):
        raise UserError("ExceedsNodeCapacity",
                        f"asks for {_gpus(spec.gpu_count)}; node {spec.node_name} has "
                        f"{_gpus(len(obs.inventory))} in all")
    ledger = Ledger.from_containers(obs.containers)
    taken = ledger.gpus_held_by_others(obs.key)
    gpus = allocate_gpus(spec.gpu_count, obs.inventory, taken, held_gpus)
    if gpus is None:
        free = len(obs.inventory) - len(taken & set(obs.inventory))
        raise UserError("InsufficientGPUs",
                        f"needs {_gpus(spec.gpu_count)}; {free} of {len(obs.inventory)} "
                        f"on node {spec.node_name} are free. Waiting for GPUs to be "
                        "released")
    ports = allocate_ports(spec.ports, ledger.ports_held_by_others(obs.key)
                           | obs.busy_host_ports, *obs.port_range, held=held_ports)
    return build_container_config(
        obs.key, obs.uid, spec, revision=revision, gpus=gpus, ports=ports,
        volume_names={n: v for n, v in obs.volume_names.items() if v},
        host_paths=host_paths, gpu_attach=obs.gpu_attach,
        image=disk.image if disk else None,
        image_volumes=obs.images[spec.image].volumes if spec.image in obs.images else (),
        carried_volumes=dict(carried_volumes or {}), node_name=obs.node_name)


def _gpus(count: int) -> str:
    return f"{count} GPU" if count == 1 else f"{count} GPUs"


def _check_mounts(obs: Observation, spec: GpuReplicaSetSpec) -> dict[str, str]:
    """Each hostPath's real path on the host; raises UserError for the first mount the
    node refuses (outside the allowed roots, missing, ...) or a volume not ready."""
    resolved: dict[str, str] = {}
    for mount in spec.mounts:
        if mount.host_path is not None:
            if not any(is_under(mount.host_path, root) for root in obs.allowed_host_paths):
                allowed = ", ".join(obs.allowed_host_paths) or "none"
                raise UserError("HostPathNotAllowed",
                                f"hostPath {mount.host_path} is not under an allowed root "
                                f"(allowed: {allowed})")
            verdict = obs.host_paths.get((mount.host_path, mount.read_only))
            if isinstance(verdict, UserError):
                raise verdict
            resolved[mount.host_path] = verdict or mount.host_path
        if mount.volume is not None and not obs.volume_names.get(mount.volume):
            raise UserError("VolumeNotReady",
                            f"SizedVolume {mount.volume} does not exist or is not ready yet")
    return resolved


def _check_image_owner(obs: Observation, image: str) -> None:
    """The agent's own images (saved disks) are never a user's image, except for the
    resource they belong to: refused by repository, and by the labels every saved disk
    carries, which also catch an image ID or another tag of the same image."""
    info = obs.images.get(image)
    owner = info.owner if info is not None else None
    mine = owner == (obs.key.namespace, obs.key.name, obs.uid)
    reserved = is_reserved_reference(image) or owner is not None or (
        info is not None and any(is_reserved_reference(t) for t in info.repo_tags))
    if reserved and not mine:
        raise UserError("ReservedImage", f"image {image} is a disk saved by gpudock for "
                        "another resource; only that resource may use it")


def _check_explicit_ports(obs: Observation, spec: GpuReplicaSetSpec) -> None:
    first, last = obs.explicit_port_range or obs.port_range
    for port in spec.ports:
        if port.host_port is not None and not first <= port.host_port <= last:
            raise UserError("HostPortNotAllowed", f"hostPort {port.host_port} is outside "
                            f"the host ports this node allows ({first}-{last}); omit "
                            "hostPort to get one from the node's range")


def _record(obs: Observation, target: _Target, revision: int, image: str,
            gpus: tuple[str, ...], ports: tuple[PortBinding, ...],
            layer: str | None = None) -> Revision:
    return Revision(
        namespace=obs.key.namespace, name=obs.key.name, revision=revision, uid=obs.uid,
        spec=target.spec.shape(), image=image,
        container_name=labels.object_name(obs.key.namespace, obs.key.name, revision),
        gpus=gpus, ports=ports, created_at=obs.now, change_cause=target.cause,
        generation=obs.generation, rollback_of=target.rollback_of, layer=layer)


def _adopted(obs: Observation, container: ObservedContainer) -> Revision:
    matches = container.spec_hash == spec_hash(obs.spec)
    shape = obs.spec.shape() if matches else {"image": container.base_image}
    return Revision(
        namespace=obs.key.namespace, name=obs.key.name, revision=container.revision,
        uid=obs.uid, spec=shape, image=container.image or container.base_image,
        container_name=container.name,
        gpus=container.gpus, ports=bindings_of(container), created_at=obs.now,
        change_cause=obs.change_cause if matches else "", generation=obs.generation)


def _progress(obs: Observation, current: ObservedContainer | None, record: Revision | None,
              actions: tuple[act.Action, ...], reason: str, message: str,
              drift: str | None = None) -> Plan:
    phase = {"RollingOut": "Updating", "RollingBack": "Updating", "Stopping": "Stopping",
             "Recording": "Updating", "Creating": "Creating"}.get(reason, "Reconciling")
    return Plan(actions, status.progressing(_seen(obs, current, record), phase, reason,
                                            message), drift)
