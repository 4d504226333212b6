"""The GpuReplicaSet decision: (desired, observed) -> actions + status.

Pure: it reads an :class:`Observation` and returns a :class:`Plan`. The reconciler runs
the actions, observes again and plans again until nothing is left to do, so the status
it writes always describes what Docker really runs.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, replace
from typing import Any

from gpudock.api.conditions import Condition, ConditionType
from gpudock.api.gpu_replica_set import (
    DesiredState,
    GpuReplicaSetSpec,
    GpuReplicaSetStatus,
    PortBinding,
    Protocol,
)
from gpudock.api.paths import is_under
from gpudock.core import labels
from gpudock.core.allocation import Ledger, allocate_gpus, allocate_ports
from gpudock.core.conditions import condition
from gpudock.core.container_config import (
    RESTART_POLICY,
    ContainerConfig,
    build_container_config,
    spec_hash,
)
from gpudock.core.observed import HostPort, ObservedContainer, ResourceKey
from gpudock.errors import UserError


# ----------------------------------------------------------------------------- actions
@dataclass(frozen=True)
class CreateContainer:
    config: ContainerConfig
    reason: str = "Created"


@dataclass(frozen=True)
class StartContainer:
    container_id: str
    name: str
    reason: str = "Started"


@dataclass(frozen=True)
class StopContainer:
    container_id: str
    name: str


@dataclass(frozen=True)
class CommitContainer:
    """Preserve a stopped container's filesystem (files added, changed and deleted)."""

    container_id: str
    name: str
    image: str


@dataclass(frozen=True)
class RemoveContainer:
    container_id: str
    name: str
    reason: str = "Removed"


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


Action = (CreateContainer | StartContainer | StopContainer | CommitContainer
          | RemoveContainer | RenameContainer | UnpauseContainer | SetRestartPolicy)


# ------------------------------------------------------------------------- input/output
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
    image_present: bool
    volume_names: Mapping[str, str | None] = field(default_factory=dict)  # None: not ready
    # Host ports Docker could not bind although no container holds them (another
    # process on the node has them): never auto-allocated.
    busy_host_ports: frozenset[HostPort] = frozenset()
    use_device_requests: bool = False


@dataclass(frozen=True)
class Plan:
    actions: tuple[Action, ...]
    status: GpuReplicaSetStatus
    drift: str | None = None  # what was found changed behind the agent's back


def preserved_image(key: ResourceKey, revision: int) -> str:
    """The image that keeps revision ``revision``'s disk."""
    return f"gpudock-preserved/{key.namespace}_{key.name}:rev-{revision}"


def plan_replica_set(obs: Observation) -> Plan:
    key, spec = obs.key, obs.spec
    mine = [c for c in obs.containers if c.owner == key]
    stale = [c for c in mine if c.uid != obs.uid]  # left by an earlier, deleted incarnation
    if stale:
        return _progressing(obs, tuple(RemoveContainer(c.id, c.name, "RemovedStale")
                                       for c in stale), "Cleaning", "removing stale containers")
    current = max(mine, key=lambda c: c.revision, default=None)
    older = [c for c in mine if current is not None and c.id != current.id]
    if older:  # a finished rollout whose old container is still there
        return _progressing(obs, tuple(RemoveContainer(c.id, c.name) for c in older),
                            "RollingOut", "removing the previous revision's container")
    try:
        _check_mounts(obs)
        if current is not None and current.spec_hash == spec_hash(spec):
            return _keep_running(obs, current)
        return _create(obs, current)
    except UserError as exc:
        return _blocked(obs, exc, current)


def _check_mounts(obs: Observation) -> None:
    for mount in obs.spec.mounts:
        if mount.host_path is not None and not any(
                is_under(mount.host_path, root) for root in obs.allowed_host_paths):
            allowed = ", ".join(obs.allowed_host_paths) or "none"
            raise UserError("HostPathNotAllowed",
                            f"hostPath {mount.host_path} is not under an allowed root "
                            f"(allowed: {allowed})")
        if mount.volume is not None and not obs.volume_names.get(mount.volume):
            raise UserError("VolumeNotReady",
                            f"SizedVolume {mount.volume} does not exist or is not ready yet")


def _keep_running(obs: Observation, current: ObservedContainer) -> Plan:
    expected = labels.object_name(obs.key.namespace, obs.key.name, current.revision)
    actions: list[Action] = []
    drift: list[str] = []
    if current.name != expected:
        actions.append(RenameContainer(current.id, current.name, expected))
        drift.append(f"container was renamed to {current.name}")
    if current.restart_policy != RESTART_POLICY:
        actions.append(SetRestartPolicy(current.id, expected, RESTART_POLICY))
        drift.append(f"restart policy was changed to {current.restart_policy or 'none'}")
    if obs.spec.state is DesiredState.RUNNING:
        if current.status == "paused":
            actions.append(UnpauseContainer(current.id, expected))
            drift.append("container was paused")
        elif not current.running:
            actions.append(StartContainer(current.id, expected, "Restarted"))
            drift.append(f"container was {current.status}")
    note = "; ".join(drift) or None
    if actions:
        return Plan(tuple(actions), _status(obs, current, "Starting", progressing=(
            "Repairing", f"repairing drift: {note}")), drift=note)
    return Plan((), _status(obs, current, "Running"))


def _create(obs: Observation, current: ObservedContainer | None) -> Plan:
    spec, key = obs.spec, obs.key
    ledger = Ledger.from_containers(obs.containers)
    held_gpus = current.gpus if current else tuple(obs.previous_status.get("gpus") or ())
    gpus = allocate_gpus(spec.gpu_count, obs.inventory, ledger.gpus_held_by_others(key),
                         held_gpus)
    if gpus is None:
        free = len(obs.inventory) - len(ledger.gpus_held_by_others(key) & set(obs.inventory))
        raise UserError("InsufficientGPUs",
                        f"needs {spec.gpu_count} GPUs; {free} of {len(obs.inventory)} on "
                        f"node {spec.node_name} are free. Waiting for GPUs to be released")
    held_ports = _held_ports(current, obs.previous_status)
    ports = allocate_ports(spec.ports, ledger.ports_held_by_others(key) | obs.busy_host_ports,
                           *obs.port_range, held=held_ports)
    if current is None:
        if not obs.image_present:
            raise _image_missing(spec.image)
        revision = int(obs.previous_status.get("revision") or 1)
        config = build_container_config(
            key, obs.uid, spec, revision=revision, gpus=gpus, ports=ports,
            volume_names=_ready_volumes(obs), use_device_requests=obs.use_device_requests)
        reason = "Recreated" if obs.previous_status.get("containerID") else "Created"
        return Plan((CreateContainer(config, reason),),
                    _status(obs, None, "Creating", progressing=("Creating",
                            f"creating container {config.name}")),
                    drift="container was removed" if reason == "Recreated" else None)
    # The spec changed: a new revision that keeps the disk (a new image starts fresh).
    revision = current.revision + 1
    same_image_base = current.base_image == spec.image
    if not same_image_base and not obs.image_present:
        raise _image_missing(spec.image)
    image = preserved_image(key, current.revision)
    config = build_container_config(
        key, obs.uid, spec, revision=revision, gpus=gpus, ports=ports,
        volume_names=_ready_volumes(obs), use_device_requests=obs.use_device_requests,
        image=image if same_image_base else None)
    actions: list[Action] = [StopContainer(current.id, current.name),
                             CommitContainer(current.id, current.name, image)]
    actions += [CreateContainer(config, "RevisionCreated"),
                RemoveContainer(current.id, current.name, "PreviousRevisionRemoved")]
    return Plan(tuple(actions), _status(obs, current, "Updating", progressing=(
        "RollingOut", f"rolling out revision {revision}")))


def _image_missing(image: str) -> UserError:
    return UserError("ImageNotPresent",
                     f"image {image} is not on the node; load it there (gpudock never pulls)")


def _ready_volumes(obs: Observation) -> dict[str, str]:
    return {name: vol for name, vol in obs.volume_names.items() if vol}


def _held_ports(current: ObservedContainer | None,
                previous_status: Mapping[str, Any]) -> tuple[PortBinding, ...]:
    if current is not None:
        return tuple(PortBinding(c, h, p) for (c, p), h in current.port_bindings.items())
    held = []
    for item in previous_status.get("ports") or ():
        try:
            held.append(PortBinding(int(item["containerPort"]), int(item["hostPort"]),
                                    Protocol(item.get("protocol", "TCP"))))
        except (KeyError, TypeError, ValueError):
            continue
    return tuple(held)


# ----------------------------------------------------------------------------- status
def _progressing(obs: Observation, actions: tuple[Action, ...], reason: str,
                 message: str) -> Plan:
    return Plan(actions, _status(obs, None, "Pending", progressing=(reason, message)))


def blocked_plan(obs: Observation, error: UserError) -> Plan:
    """The plan when Docker itself refused an action for a reason the user must fix."""
    current = max((c for c in obs.containers if c.owner == obs.key),
                  key=lambda c: c.revision, default=None)
    return _blocked(obs, error, current)


def invalid_spec_status(generation: int | None, previous_status: Mapping[str, Any],
                        error: UserError) -> GpuReplicaSetStatus:
    """The spec cannot be parsed: say so, keep the rest of the status, change nothing."""
    conditions = (
        condition(ConditionType.READY, previous_status.get("phase") == "Running",
                  error.reason, error.message),
        condition(ConditionType.PROGRESSING, False, error.reason, error.message),
        condition(ConditionType.DEGRADED, True, error.reason, error.message),
    )
    return GpuReplicaSetStatus(
        phase="Failed", observed_generation=generation,
        revision=previous_status.get("revision"),
        container_name=previous_status.get("containerName"),
        container_id=previous_status.get("containerID"),
        gpus=tuple(previous_status.get("gpus") or ()),
        ports=_held_ports(None, previous_status), conditions=conditions)


def note_drift(status: GpuReplicaSetStatus, drift: str | None,
               previous_status: Mapping[str, Any]) -> GpuReplicaSetStatus:
    """Record repaired drift in the Degraded condition (status False, reason
    DriftRepaired), and keep that note while nothing else happens to the resource."""
    degraded = next((c for c in status.conditions if c.type == ConditionType.DEGRADED), None)
    if degraded is None or degraded.status or degraded.reason != "AsExpected":
        return status
    if drift is None:
        before = next((c for c in previous_status.get("conditions") or ()
                       if isinstance(c, Mapping) and c.get("type") == "Degraded"), None)
        if (before is None or before.get("reason") != "DriftRepaired"
                or previous_status.get("observedGeneration") != status.observed_generation):
            return status
        drift_message = str(before.get("message", ""))
    else:
        drift_message = f"repaired: {drift}"
    note = condition(ConditionType.DEGRADED, False, "DriftRepaired", drift_message)
    return replace(status, conditions=tuple(note if c is degraded else c
                                            for c in status.conditions))


def _blocked(obs: Observation, error: UserError,
             current: ObservedContainer | None) -> Plan:
    waiting = error.reason in ("InsufficientGPUs", "VolumeNotReady")
    phase = "Pending" if waiting else "Failed"
    conditions = (
        condition(ConditionType.READY, current is not None and current.running,
                  error.reason, error.message),
        condition(ConditionType.PROGRESSING, False, error.reason, error.message),
        condition(ConditionType.DEGRADED, not waiting, error.reason, error.message),
    )
    return Plan((), _status_from(obs, current, phase, conditions))


def _status(obs: Observation, current: ObservedContainer | None, phase: str,
            progressing: tuple[str, str] | None = None) -> GpuReplicaSetStatus:
    if progressing is None:
        running = current is not None and current.running
        conditions = (
            condition(ConditionType.READY, running, "ContainerRunning" if running
                      else "ContainerNotRunning",
                      f"container {current.name} is {current.status}" if current
                      else "no container"),
            condition(ConditionType.PROGRESSING, False, "ReconcileComplete",
                      "the container matches the spec"),
            condition(ConditionType.DEGRADED, False, "AsExpected", "nothing to report"),
        )
    else:
        reason, message = progressing
        conditions = (
            condition(ConditionType.READY, False, reason, message),
            condition(ConditionType.PROGRESSING, True, reason, message),
            condition(ConditionType.DEGRADED, False, "AsExpected", "nothing to report"),
        )
    return _status_from(obs, current, phase, conditions)


def _status_from(obs: Observation, current: ObservedContainer | None, phase: str,
                 conditions: Sequence[Condition]) -> GpuReplicaSetStatus:
    return GpuReplicaSetStatus(
        phase=phase,
        observed_generation=obs.generation,
        revision=current.revision if current else obs.previous_status.get("revision"),
        container_name=current.name if current else None,
        container_id=current.id if current else None,
        gpus=current.gpus if current else (),
        ports=tuple(sorted(_held_ports(current, {}), key=lambda b: b.container_port)),
        conditions=tuple(conditions),
    )
