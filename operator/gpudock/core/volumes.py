"""The SizedVolume decision: (desired size, the records, what the backend and Docker
show) -> actions + status. Pure, level-based, like the GpuReplicaSet plan: every
step is chosen from what is observed and recorded, so an agent killed at any step
picks up from there.

0. no record yet: record revision 1 (the backend, its root, the Docker volume);
1. no volume yet: create it (refused when the backing filesystem has not the room,
   InsufficientSpace), then mark revision 1 made; a volume marked made that is not there is lost
   (VolumeLost), never made again empty;
2. not attached (after an agent or host restart): attach it;
3. its filesystem read-only or with errors recorded: not Ready
   (VolumeFilesystemFailed), nothing done; else no Docker volume: create the Docker
   volume that serves it;
4. a size change, refused with ShrinkBelowUsage when what the volume holds does not
   fit, and a grow with InsufficientSpace when it asks for more than is free where
   volumes live (nothing is changed: the volume serves on at its size); else a
   resize in place (online, or with its users stopped where the backend needs
   that), or for the copy backend a move: a new Docker volume, the data copied and
   checked, the record switched to it (the GpuReplicaSets that mount it
   roll to a new revision on the new volume);
5. a size that is real but not recorded: record it as the next revision;
6. an earlier volume of the copy backend nobody mounts any more: remove it;
7. Ready: capacity and used bytes as measured now.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from typing import Any

from gpudock.api.conditions import ConditionType
from gpudock.api.quantity import format_size, format_size_approx
from gpudock.api.reasons import Reason
from gpudock.core.conditions import condition
from gpudock.core.labels import base_name
from gpudock.core.observed import ObservedContainer, ResourceKey
from gpudock.core.volume_revision import VolumeRevision


@dataclass(frozen=True)
class BackendState:
    """What the backend shows of a volume: its size (the hard limit), whether it is
    attached (mounted), and the filesystem's capacity and use when it is."""

    size_bytes: int
    attached: bool
    capacity_bytes: int = 0
    used_bytes: int = 0
    # Why its filesystem cannot be trusted with writes now (read-only, errors
    # recorded); None when it is sound. Not Ready while set.
    fault: str | None = None


@dataclass(frozen=True)
class Backend:
    """The backend that holds (or will hold) the volume, and what it can do."""

    name: str
    root: str
    online_shrink: bool = False  # a shrink is a limit change (no consumer stopped)
    moves_on_resize: bool = False  # a resize is a copy into a new Docker volume


@dataclass(frozen=True)
class VolumeObservation:
    key: ResourceKey
    uid: str
    generation: int | None
    size_bytes: int  # spec.size
    backend: Backend  # the recorded one; the node's --volume-backend for a new volume
    records: tuple[VolumeRevision, ...]  # this volume's (this UID's), oldest first
    volume_id: str  # the current Docker volume (and the backend's name for it)
    state: BackendState | None
    docker_volume_exists: bool
    consumers: tuple[ObservedContainer, ...] = ()  # containers that mount it
    # Earlier Docker volumes of the copy backend still there, with the containers
    # that mount them.
    earlier: tuple[tuple[str, tuple[ObservedContainer, ...]], ...] = ()
    free_bytes: int | None = None  # room left where volumes live (to create or grow)
    minimum_bytes: int | None = None  # the smallest it can shrink to (when asked)
    now: str = ""


@dataclass(frozen=True)
class RecordVolume:
    record: VolumeRevision


@dataclass(frozen=True)
class CreateVolume:
    volume_id: str
    size_bytes: int


@dataclass(frozen=True)
class AttachVolume:
    volume_id: str


@dataclass(frozen=True)
class CreateDockerVolume:
    volume_id: str


@dataclass(frozen=True)
class ResizeVolume:
    """In place: online when ``online`` (and the backend manages it), else with the
    running ``consumers`` (container ID, name) stopped and started again."""

    volume_id: str
    size_bytes: int
    online: bool
    consumers: tuple[tuple[str, str], ...] = ()


@dataclass(frozen=True)
class MoveVolume:
    """The copy backend's resize: make ``target``, stop the running ``consumers``,
    copy and check, then ``record`` (which names ``target``) switches to it. The
    consumers are left stopped: their GpuReplicaSets roll to the new volume."""

    source: str
    target: str
    size_bytes: int
    consumers: tuple[tuple[str, str], ...]
    record: VolumeRevision


@dataclass(frozen=True)
class RemoveDockerVolume:
    volume_id: str  # an earlier volume of the copy backend that nobody mounts


VolumeAction = (RecordVolume | CreateVolume | AttachVolume | CreateDockerVolume
                | ResizeVolume | MoveVolume | RemoveDockerVolume)


@dataclass(frozen=True)
class VolumePlan:
    actions: tuple[VolumeAction, ...]
    status: dict[str, Any] = field(default_factory=dict)
    needs_minimum: bool = False  # observe again with minimum_bytes (a shrink is asked)


def volume_id(key: ResourceKey, uid: str, backend: str, revision: int = 1) -> str:
    """The Docker volume of a volume's revision: ``<ns>_<name>-<revision>`` for the
    copy backend (a new one per size), else one per incarnation (UID)."""
    if backend == "copy":
        return moved_volume_id(key, revision)
    return f"{base_name(key.namespace, key.name)}-svol-{uid[:8]}"


def moved_volume_id(key: ResourceKey, revision: int) -> str:
    """The new volume a backend that moves on resize copies into for ``revision``:
    never the one it copies from (which is revision 1's, or another revision's)."""
    return f"{base_name(key.namespace, key.name)}-{revision}"


def current_record(records: tuple[VolumeRevision, ...]) -> VolumeRevision | None:
    return records[-1] if records else None


def _next_record(obs: VolumeObservation, cause: str, volume: str | None = None,
                 made: bool = True) -> VolumeRevision:
    latest = current_record(obs.records)
    revision = latest.revision + 1 if latest else 1
    return VolumeRevision(
        namespace=obs.key.namespace, name=obs.key.name, revision=revision, uid=obs.uid,
        backend=obs.backend.name, root=obs.backend.root,
        volume_id=volume or obs.volume_id, size_bytes=obs.size_bytes, created_at=obs.now,
        change_cause=cause, generation=obs.generation, made=made)


def plan_volume(obs: VolumeObservation) -> VolumePlan:
    state = obs.state
    latest = current_record(obs.records)
    if latest is None:
        if obs.free_bytes is not None and obs.size_bytes > obs.free_bytes:
            return VolumePlan((), _status(obs, "Failed", problem=_no_room(obs)))
        return _steps(obs, (RecordVolume(_next_record(obs, "created", made=False)),),
                      "Pending",
                      Reason.CREATING, f"recording a {format_size(obs.size_bytes)} volume on "
                      f"the {obs.backend.name} backend")
    if state is None:
        if latest.made:
            return VolumePlan((), _status(obs, "Failed", problem=(
                Reason.VOLUME_LOST, f"{obs.volume_id} was made on the {obs.backend.name} backend "
                f"(under {obs.backend.root}) and is not there now: removed outside gpudock,"
                " or its filesystem is not mounted. Nothing is made in its place (that "
                "would be an empty volume); when it is back it is used again")))
        if obs.free_bytes is not None and obs.size_bytes > obs.free_bytes:
            return VolumePlan((), _status(obs, "Failed", problem=_no_room(obs)))
        return _steps(obs, (CreateVolume(obs.volume_id, obs.size_bytes),), "Pending",
                      Reason.CREATING, f"creating a {format_size(obs.size_bytes)} volume")
    if not latest.made:
        return _steps(obs, (RecordVolume(replace(latest, made=True)),), "Pending",
                      Reason.CREATING, "noting that the volume was made")
    if not state.attached:
        return _steps(obs, (AttachVolume(obs.volume_id),), "Pending", Reason.ATTACHING,
                      "attaching the volume (after a restart it is mounted again)")
    if state.fault is not None:
        return VolumePlan((), _status(obs, "Failed", problem=(
            Reason.VOLUME_FILESYSTEM_FAILED, f"{obs.volume_id}: {state.fault}. Its "
            "containers keep running, none starts on it and it is not resized until its "
            "filesystem is checked and mounted read-write again (docs/sized-volumes.md)")))
    if not obs.docker_volume_exists:
        return _steps(obs, (CreateDockerVolume(obs.volume_id),), "Pending", Reason.CREATING,
                      f"creating Docker volume {obs.volume_id}")
    users = tuple((c.id, c.name) for c in obs.consumers if c.running)
    wanted = _block_floor(obs.size_bytes)  # filesystems come in whole blocks
    have = _block_floor(state.size_bytes)
    if wanted != have:
        grow = wanted > have
        if grow and obs.free_bytes is not None and \
                obs.size_bytes - state.size_bytes > obs.free_bytes:
            return VolumePlan((), _status(obs, "Ready", problem=(
                Reason.INSUFFICIENT_SPACE, f"{format_size(obs.size_bytes)} asked: growing "
                f"from {format_size(state.size_bytes)} needs "
                f"{format_size_approx(obs.size_bytes - state.size_bytes)} more, and "
                f"{format_size_approx(obs.free_bytes)} is left where volumes live on the "
                "node (free space less what the volumes there are promised); nothing was "
                "changed")))
        if not grow or obs.backend.moves_on_resize:
            if obs.minimum_bytes is None:
                return VolumePlan((), _status(obs, "Ready"), needs_minimum=True)
            if obs.size_bytes < obs.minimum_bytes:
                return VolumePlan((), _status(obs, "Ready", problem=(
                    Reason.SHRINK_BELOW_USAGE, f"{format_size(obs.size_bytes)} cannot hold what "
                    f"the volume has: its data and the filesystem's own need "
                    f"{format_size_approx(obs.minimum_bytes)} "
                    f"({format_size_approx(state.used_bytes)} used); nothing was changed")))
        verb = "growing" if grow else "shrinking"
        if obs.backend.moves_on_resize:
            target = moved_volume_id(obs.key, latest.revision + 1)
            return _steps(obs, (MoveVolume(obs.volume_id, target, obs.size_bytes, users,
                                           _next_record(obs, _cause(obs), target)),),
                          "Resizing", Reason.COPYING, f"{verb} to {format_size(obs.size_bytes)}:"
                          f" copying into Docker volume {target}"
                          + (f"; {len(users)} container(s) stopped meanwhile"
                             if users else ""))
        online = grow or obs.backend.online_shrink
        return _steps(obs, (ResizeVolume(obs.volume_id, obs.size_bytes, online, users),),
                      "Resizing", Reason.GROWING if grow else Reason.SHRINKING,
                      f"{verb} to {format_size(obs.size_bytes)}"
                      + ("" if online or not users
                         else f"; {len(users)} container(s) stopped meanwhile"))
    if _block_floor(latest.size_bytes) != have:  # resized, not recorded yet
        return _steps(obs, (RecordVolume(_next_record(obs, _cause(obs))),), "Ready",
                      Reason.RECORDING, "recording the new size")
    unused = tuple(RemoveDockerVolume(v) for v, users in obs.earlier if not users)
    if unused:
        return _steps(obs, unused, "Ready", Reason.REMOVING_EARLIER_VOLUME,
                      f"removing earlier Docker volume(s) "
                      f"{', '.join(a.volume_id for a in unused)}")
    return VolumePlan((), _status(obs, "Ready"))


def _no_room(obs: VolumeObservation) -> tuple[Reason, str]:
    return (Reason.INSUFFICIENT_SPACE, f"{format_size(obs.size_bytes)} asked; "
            f"{format_size_approx(obs.free_bytes or 0)} left where volumes live on the "
            "node (free space less what the volumes there are promised); nothing was "
            "created")


def describe(action: VolumeAction) -> tuple[Reason, str]:
    """The Kubernetes Event (reason, message) a step done posts."""
    match action:
        case RecordVolume(record=r):
            return Reason.REVISION_RECORDED, (f"revision {r.revision}: {r.change_cause} "
                                              f"({format_size(r.size_bytes)} on {r.backend})")
        case CreateVolume(volume_id=v, size_bytes=size):
            return Reason.VOLUME_CREATED, f"created {v} ({format_size(size)})"
        case AttachVolume(volume_id=v):
            return Reason.VOLUME_ATTACHED, f"attached {v} again"
        case CreateDockerVolume(volume_id=v):
            return Reason.DOCKER_VOLUME_CREATED, f"created Docker volume {v}"
        case ResizeVolume(size_bytes=size, online=online, consumers=users):
            how = "online" if online or not users else \
                f"with {len(users)} container(s) stopped meanwhile"
            return Reason.VOLUME_RESIZED, f"resized to {format_size(size)} ({how})"
        case MoveVolume(source=old, target=new, size_bytes=size):
            return Reason.VOLUME_MOVED, (f"copied {old} into {new} ({format_size(size)}) and "
                                         "checked the copy; its users move to the new volume")
        case RemoveDockerVolume(volume_id=v):
            return Reason.EARLIER_VOLUME_REMOVED, f"removed {v} (nothing mounts it any more)"
    raise AssertionError(action)  # pragma: no cover - every action is matched


def _cause(obs: VolumeObservation) -> str:
    return f"resized to {format_size(obs.size_bytes)}"


def refused(obs: VolumeObservation, reason: Reason, message: str) -> dict[str, Any]:
    """The status when the backend refused a change (nothing was changed)."""
    return _status(obs, "Ready" if obs.state and obs.state.attached else "Failed",
                   problem=(reason, message))


def unusable(previous: Mapping[str, Any], reason: Reason, message: str,
             now: str) -> dict[str, Any]:
    """The volume's backend cannot serve it now (its root gone, not btrfs any more):
    not Ready, Degraded with the reason; the rest of the last status is kept."""
    kept = {k: v for k, v in previous.items() if k != "conditions"}
    conditions = (condition(ConditionType.READY, False, reason, message),
                  condition(ConditionType.PROGRESSING, False, reason, message),
                  condition(ConditionType.DEGRADED, True, reason, message))
    return {**kept, "phase": "Failed", "reason": reason, "conditions": [
        {**c.to_dict(), "lastTransitionTime": now} for c in conditions]}


def _block_floor(size: int) -> int:
    return size - size % 4096


def _steps(obs: VolumeObservation, actions: tuple[VolumeAction, ...], phase: str,
           reason: Reason, message: str) -> VolumePlan:
    return VolumePlan(actions, _status(obs, phase, progress=(reason, message)))


def _status(obs: VolumeObservation, phase: str, *,
            progress: tuple[Reason, str] | None = None,
            problem: tuple[Reason, str] | None = None) -> dict[str, Any]:
    state = obs.state
    ready = phase == "Ready"
    ready_reason = (Reason.VOLUME_READY, f"Docker volume {obs.volume_id} is ready") if ready \
        else (progress or problem or (Reason.NOT_READY, "not ready"))
    conditions = (
        condition(ConditionType.READY, ready, *ready_reason),
        condition(ConditionType.PROGRESSING, progress is not None,
                  *(progress or problem or (Reason.RECONCILE_COMPLETE,
                                            "the volume has its size"))),
        condition(ConditionType.DEGRADED, problem is not None,
                  *(problem or (Reason.AS_EXPECTED, "nothing to report"))),
    )
    attached = state is not None and state.attached
    capacity = state.capacity_bytes if state and attached else None
    used = state.used_bytes if state and attached else None
    latest = current_record(obs.records)
    return {
        "phase": phase,
        "reason": (problem or progress or (None, None))[0],
        "observedGeneration": obs.generation,
        "backend": obs.backend.name,
        "volumeName": obs.volume_id if ready or (attached and obs.docker_volume_exists)
        else None,
        "revision": latest.revision if latest else None,
        "history": [r.summary() for r in obs.records],
        "sizeBytes": state.size_bytes if state else None,
        "capacity": format_size(capacity) if capacity is not None else None,
        "capacityBytes": capacity,
        "used": format_size(used) if used is not None else None,
        "usedBytes": used,
        "consumers": sorted({c.owner.name for c in obs.consumers if c.owner is not None}),
        "conditions": conditions,
    }


def consumers_of(containers: tuple[ObservedContainer, ...],
                 volume: str) -> tuple[ObservedContainer, ...]:
    return tuple(c for c in containers if volume in c.volumes.values())
