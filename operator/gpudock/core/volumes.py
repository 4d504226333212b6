"""The SizedVolume decision: (desired size, what the backend and Docker show) ->
actions + status. Pure, level-based, like the GpuReplicaSet plan: every step is
chosen from what is observed, so an agent killed at any step picks up from there.

1. no volume yet: create it (refused when the backing filesystem has not the room);
2. not attached (after an agent or host restart): attach it;
3. no Docker volume: create the Docker volume that binds it;
4. a size change: grow (online), or shrink: refused with ShrinkBelowUsage when the
   data and the filesystem's own overhead do not fit, else its users are stopped,
   the volume shrunk, and they are started again;
5. Ready: capacity and used bytes as measured now.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from gpudock.api.conditions import ConditionType
from gpudock.api.quantity import format_size
from gpudock.core.conditions import condition
from gpudock.core.observed import ObservedContainer, ResourceKey


@dataclass(frozen=True)
class BackendState:
    """What the backend shows of a volume: its size (the hard limit), whether it is
    attached (mounted), and the filesystem's capacity and use when it is."""

    size_bytes: int
    attached: bool
    capacity_bytes: int = 0
    used_bytes: int = 0


@dataclass(frozen=True)
class VolumeObservation:
    key: ResourceKey
    uid: str
    generation: int | None
    size_bytes: int  # spec.size
    backend: str
    volume_id: str  # the backend's and Docker's name for it
    state: BackendState | None
    docker_volume_exists: bool
    consumers: tuple[ObservedContainer, ...] = ()  # containers that mount it
    free_bytes: int | None = None  # room left where volumes live
    minimum_bytes: int | None = None  # the smallest it can shrink to (when asked)


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
class GrowVolume:
    """Online where the backend can; else offline with ``consumers`` stopped."""

    volume_id: str
    size_bytes: int
    consumers: tuple[tuple[str, str], ...] = ()


@dataclass(frozen=True)
class ShrinkVolume:
    volume_id: str
    size_bytes: int
    consumers: tuple[tuple[str, str], ...]  # (container ID, name) to stop and start


VolumeAction = CreateVolume | AttachVolume | CreateDockerVolume | GrowVolume | ShrinkVolume


@dataclass(frozen=True)
class VolumePlan:
    actions: tuple[VolumeAction, ...]
    status: dict[str, Any] = field(default_factory=dict)
    needs_minimum: bool = False  # observe again with minimum_bytes (a shrink is asked)


def plan_volume(obs: VolumeObservation) -> VolumePlan:
    state = obs.state
    if state is None:
        if obs.free_bytes is not None and obs.size_bytes > obs.free_bytes:
            return VolumePlan((), _status(obs, "Failed", problem=(
                "InsufficientSpace", f"{format_size(obs.size_bytes)} asked; "
                f"{format_size(obs.free_bytes)} free where volumes live on the node")))
        return _steps(obs, (CreateVolume(obs.volume_id, obs.size_bytes),), "Pending",
                      "Creating", f"creating a {format_size(obs.size_bytes)} volume")
    if not state.attached:
        return _steps(obs, (AttachVolume(obs.volume_id),), "Pending", "Attaching",
                      "attaching the volume (after a restart it is mounted again)")
    if not obs.docker_volume_exists:
        return _steps(obs, (CreateDockerVolume(obs.volume_id),), "Pending", "Creating",
                      f"creating Docker volume {obs.volume_id}")
    users = tuple((c.id, c.name) for c in obs.consumers if c.running)
    wanted = _block_floor(obs.size_bytes)  # filesystems come in whole blocks
    if wanted > state.size_bytes:
        return _steps(obs, (GrowVolume(obs.volume_id, obs.size_bytes, users),), "Resizing",
                      "Growing", f"growing to {format_size(obs.size_bytes)}")
    if wanted < state.size_bytes:
        if obs.minimum_bytes is None:
            return VolumePlan((), _status(obs, "Ready"), needs_minimum=True)
        if obs.size_bytes < obs.minimum_bytes:
            return VolumePlan((), _status(obs, "Ready", problem=(
                "ShrinkBelowUsage", f"{format_size(obs.size_bytes)} cannot hold what the "
                f"volume has: its data and the filesystem's own need "
                f"{format_size(obs.minimum_bytes)} ({format_size(state.used_bytes)} used); "
                "nothing was changed")))
        return _steps(obs, (ShrinkVolume(obs.volume_id, obs.size_bytes, users),),
                      "Resizing", "Shrinking", f"shrinking to {format_size(obs.size_bytes)}"
                      + (f"; {len(users)} container(s) stopped meanwhile" if users else ""))
    return VolumePlan((), _status(obs, "Ready"))


def refused(obs: VolumeObservation, reason: str, message: str) -> dict[str, Any]:
    """The status when the backend refused a change (nothing was changed)."""
    return _status(obs, "Ready" if obs.state and obs.state.attached else "Failed",
                   problem=(reason, message))


def _block_floor(size: int) -> int:
    return size - size % 4096


def _steps(obs: VolumeObservation, actions: tuple[VolumeAction, ...], phase: str,
           reason: str, message: str) -> VolumePlan:
    return VolumePlan(actions, _status(obs, phase, progress=(reason, message)))


def _status(obs: VolumeObservation, phase: str, *, progress: tuple[str, str] | None = None,
            problem: tuple[str, str] | None = None) -> dict[str, Any]:
    state = obs.state
    ready = phase == "Ready"
    ready_reason = ("VolumeReady", f"Docker volume {obs.volume_id} is ready") if ready \
        else (progress or problem or ("NotReady", "not ready"))
    conditions = (
        condition(ConditionType.READY, ready, *ready_reason),
        condition(ConditionType.PROGRESSING, progress is not None,
                  *(progress or problem or ("ReconcileComplete", "the volume has its size"))),
        condition(ConditionType.DEGRADED, problem is not None,
                  *(problem or ("AsExpected", "nothing to report"))),
    )
    capacity = state.capacity_bytes if state and state.attached else None
    used = state.used_bytes if state and state.attached else None
    return {
        "phase": phase,
        "reason": (problem or progress or (None, None))[0],
        "observedGeneration": obs.generation,
        "backend": obs.backend,
        "volumeName": obs.volume_id if ready or (state and state.attached
                                                 and obs.docker_volume_exists) else None,
        "sizeBytes": state.size_bytes if state else None,
        "capacity": format_size(capacity) if capacity is not None else None,
        "capacityBytes": capacity,
        "used": format_size(used) if used is not None else None,
        "usedBytes": used,
        "consumers": sorted({c.owner.name for c in obs.consumers if c.owner is not None}),
        "conditions": conditions,
    }


def consumers_of(containers: tuple[ObservedContainer, ...],
                 volume_id: str) -> tuple[ObservedContainer, ...]:
    return tuple(c for c in containers if volume_id in c.volumes.values())


def previous_reason(previous: Mapping[str, Any]) -> str | None:
    value = previous.get("reason")
    return str(value) if value else None
