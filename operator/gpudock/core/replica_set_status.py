"""The GpuReplicaSet status a plan reports: phase, conditions, current revision,
GPUs, ports and the revision history (for ``gpudock history``)."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import replace
from typing import Any

from gpudock.api.conditions import Condition, ConditionType
from gpudock.api.gpu_replica_set import (
    GpuReplicaSetStatus,
    PortBinding,
    RevisionSummary,
)
from gpudock.core.conditions import condition
from gpudock.core.observed import ObservedContainer
from gpudock.core.revision import Revision
from gpudock.errors import UserError

WAITING_REASONS = ("InsufficientGPUs", "VolumeNotReady")
IDLE_READY = {
    "Paused": ("Paused", "spec.state is Paused: the container is stopped; its GPUs and "
               "host ports stay reserved"),
    "Stopped": ("Stopped", "spec.state is Stopped: the disk is saved; GPUs and host ports "
                "are released"),
}


def bindings_of(container: ObservedContainer) -> tuple[PortBinding, ...]:
    return tuple(sorted((PortBinding(c, h, p) for (c, p), h in container.port_bindings.items()),
                        key=lambda b: (b.container_port, b.protocol)))


def status(history: Sequence[Revision], generation: int | None,
           current: ObservedContainer | None, record: Revision | None,
           previous_status: Mapping[str, Any], phase: str,
           progressing: tuple[str, str] | None = None) -> GpuReplicaSetStatus:
    if progressing is not None:
        reason, message = progressing
        conditions = (
            condition(ConditionType.READY, False, reason, message),
            condition(ConditionType.PROGRESSING, True, reason, message),
            condition(ConditionType.DEGRADED, False, "AsExpected", "nothing to report"),
        )
    else:
        running = current is not None and current.running
        if current is not None and running:
            ready = ("ContainerRunning", f"container {current.name} is running")
        elif phase in IDLE_READY:
            ready = IDLE_READY[phase]
        else:
            ready = ("ContainerNotRunning", f"container {current.name} is {current.status}"
                     if current else "no container")
        conditions = (
            condition(ConditionType.READY, running, *ready),
            condition(ConditionType.PROGRESSING, False, "ReconcileComplete",
                      "the container matches the spec"),
            condition(ConditionType.DEGRADED, False, "AsExpected", "nothing to report"),
        )
    return status_with(history, generation, current, record, previous_status, phase,
                       conditions)


def blocked_status(history: Sequence[Revision], generation: int | None,
                   current: ObservedContainer | None, record: Revision | None,
                   previous_status: Mapping[str, Any], error: UserError) -> GpuReplicaSetStatus:
    waiting = error.reason in WAITING_REASONS
    serving = current is not None and current.running
    conditions = (
        condition(ConditionType.READY, current is not None and current.running,
                  error.reason, error.message),
        condition(ConditionType.PROGRESSING, False, error.reason, error.message),
        condition(ConditionType.DEGRADED, not waiting, error.reason, error.message),
    )
    # A change that cannot be applied does not make a serving instance look down.
    phase = "Running" if serving else "Pending" if waiting else "Failed"
    return status_with(history, generation, current, record, previous_status, phase,
                       conditions)


def status_with(history: Sequence[Revision], generation: int | None,
                current: ObservedContainer | None, record: Revision | None,
                previous_status: Mapping[str, Any], phase: str,
                conditions: Sequence[Condition]) -> GpuReplicaSetStatus:
    revision = (current.revision if current else record.revision if record
                else previous_status.get("revision"))
    return GpuReplicaSetStatus(
        phase=phase,
        observed_generation=generation,
        revision=revision,
        container_name=current.name if current else None,
        container_id=current.id if current else None,
        gpus=current.gpus if current else (),
        ports=bindings_of(current) if current else (),
        conditions=tuple(conditions),
        history=tuple(r.summary() for r in history),
    )


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
        ports=_raw_ports(previous_status.get("ports") or ()), conditions=conditions,
        history=tuple(_raw_history(previous_status.get("history") or ())))


def _raw_ports(items: Sequence[Any]) -> tuple[PortBinding, ...]:
    held = []
    for item in items:
        try:
            held.append(PortBinding.from_dict(item))
        except (KeyError, TypeError, ValueError):
            continue
    return tuple(held)


def _raw_history(items: Sequence[Any]) -> list[RevisionSummary]:
    result = []
    for item in items:
        try:
            result.append(RevisionSummary.from_dict(item))
        except (KeyError, TypeError, ValueError):
            continue
    return result


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
