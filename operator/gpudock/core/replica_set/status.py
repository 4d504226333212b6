"""The GpuReplicaSet status a plan reports: phase, conditions, current revision,
GPUs, ports, how the container's process fares, and the revision history.

The rules, once (docs/gpu-replica-set.md has them as a table):

* **Ready** is about the instance serving: True only while the container runs and
  is not crash-looping under spec.state Running.
* **Progressing** is about a change being applied: True while the agent works on
  one or waits for the node (GPUs, a volume); False when done (ReconcileComplete) or
  when the change cannot be applied (the reason says why).
* **Degraded** is about what needs the user: True for a change that cannot be
  applied, a failed update, a crash loop; False otherwise (DriftRepaired notes what
  the agent put right).
* **phase** says what the container does: Running, CrashLoop, Paused, Stopped, or
  a step under way (Creating, Updating, Stopping, Reconciling); Pending or Failed only
  while nothing serves.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, replace
from typing import Any

from gpudock.api.conditions import Condition, ConditionType
from gpudock.api.gpu_replica_set import (
    GpuReplicaSetStatus,
    PortBinding,
    ProcessStatus,
    RevisionSummary,
)
from gpudock.api.reasons import Reason
from gpudock.core.conditions import condition
from gpudock.core.observed import ObservedContainer
from gpudock.core.revision import Revision
from gpudock.core.times import seconds_between
from gpudock.errors import UserError

# Waiting for the node, not for the user: the change is applied by itself later.
WAITING_REASONS = (Reason.INSUFFICIENT_GPUS, Reason.VOLUME_NOT_READY,
                   Reason.ADDRESSES_EXHAUSTED)
# A container must run this long after a restart by Docker before it counts as
# serving again (the kubelet's rule for restarted containers, about).
STABLE_SECONDS = 10
IDLE: dict[str, tuple[Reason, str]] = {  # by spec.state
    "Paused": (Reason.PAUSED, "spec.state is Paused: the container is stopped; its GPUs "
               "and host ports stay reserved"),
    "Stopped": (Reason.STOPPED, "spec.state is Stopped: the disk is saved; GPUs and host "
                "ports are released"),
}
_COMPLETE = (Reason.RECONCILE_COMPLETE, "the container matches the spec")
_AS_EXPECTED = (Reason.AS_EXPECTED, "nothing to report")


@dataclass(frozen=True)
class Seen:
    """What a status is made from: the records, the current container and its
    record, the status last written (only for what it cannot observe: nothing a
    decision rests on) and the time of the observation."""

    history: Sequence[Revision]
    generation: int | None
    current: ObservedContainer | None
    record: Revision | None
    previous_status: Mapping[str, Any]
    now: str = ""


def bindings_of(container: ObservedContainer) -> tuple[PortBinding, ...]:
    return tuple(sorted((PortBinding(c, h, p) for (c, p), h in container.port_bindings.items()),
                        key=lambda b: (b.container_port, b.protocol)))


def unsettled_for(container: ObservedContainer, now: str) -> float | None:
    """Seconds until a container restarted by Docker counts as serving again; None
    when it is not in that window."""
    if container.status != "running" or container.restart_count == 0:
        return None
    since = seconds_between(container.started_at, now)
    if since is None or since >= STABLE_SECONDS:
        return None
    return STABLE_SECONDS - max(since, 0.0)


def crash_looping(container: ObservedContainer | None, now: str) -> bool:
    return container is not None and (container.status == "restarting" or unsettled_for(
        container, now) is not None)


def serving(container: ObservedContainer | None, now: str) -> bool:
    return container is not None and container.status == "running" and not crash_looping(
        container, now)


def _crash_message(container: ObservedContainer) -> str:
    how = "was killed for memory (OOMKilled)" if container.oom_killed else \
        f"exited with code {container.exit_code}"
    return (f"container {container.name} {how} and was restarted {container.restart_count} "
            f"time(s) by Docker; last start {container.started_at or 'unknown'}")


def _ready(seen: Seen, idle: str | None = None,
           otherwise: tuple[Reason, str] | None = None) -> Condition:
    current = seen.current
    if serving(current, seen.now):
        assert current is not None
        return condition(ConditionType.READY, True, Reason.CONTAINER_RUNNING,
                         f"container {current.name} is running")
    if idle in IDLE:
        return condition(ConditionType.READY, False, *IDLE[idle])
    if current is not None and crash_looping(current, seen.now):
        return condition(ConditionType.READY, False, Reason.CRASH_LOOP,
                         _crash_message(current))
    if otherwise is not None:
        return condition(ConditionType.READY, False, *otherwise)
    return condition(ConditionType.READY, False, Reason.CONTAINER_NOT_RUNNING,
                     f"container {current.name} is {current.status}" if current
                     else "no container")


def _container_phase(seen: Seen) -> str | None:
    if serving(seen.current, seen.now):
        return "Running"
    if crash_looping(seen.current, seen.now):
        return "CrashLoop"
    return None


def settled(seen: Seen, state: str) -> GpuReplicaSetStatus:
    """Nothing left to do: the container is in spec.state (Running, Paused, Stopped)."""
    current = seen.current
    degraded = condition(ConditionType.DEGRADED, False, *_AS_EXPECTED)
    phase = state
    if state == "Running" and crash_looping(current, seen.now):
        assert current is not None
        degraded = condition(ConditionType.DEGRADED, True, Reason.CRASH_LOOP,
                             _crash_message(current))
        phase = "CrashLoop"
    conditions = (_ready(seen, idle=state),
                  condition(ConditionType.PROGRESSING, False, *_COMPLETE), degraded)
    return _assembled(seen, phase, conditions)


def progressing(seen: Seen, phase: str, reason: Reason,
                message: str) -> GpuReplicaSetStatus:
    """A step is being applied."""
    conditions = (_ready(seen, otherwise=(reason, message)),
                  condition(ConditionType.PROGRESSING, True, reason, message),
                  condition(ConditionType.DEGRADED, False, *_AS_EXPECTED))
    return _assembled(seen, phase, conditions)


def blocked(seen: Seen, error: UserError) -> GpuReplicaSetStatus:
    """The change cannot be applied now: waiting for the node (GPUs, a volume), or
    the user must change something. A serving instance keeps serving and says so."""
    waiting = error.reason in WAITING_REASONS
    conditions = (
        _ready(seen, otherwise=(error.reason, error.message)),
        condition(ConditionType.PROGRESSING, waiting, error.reason, error.message),
        condition(ConditionType.DEGRADED, not waiting,
                  *((error.reason, error.message) if not waiting else _AS_EXPECTED)),
    )
    phase = _container_phase(seen) or ("Pending" if waiting else "Failed")
    return _assembled(seen, phase, conditions)


def _assembled(seen: Seen, phase: str,
               conditions: Sequence[Condition]) -> GpuReplicaSetStatus:
    current, record = seen.current, seen.record
    revision = (current.revision if current else record.revision if record
                else seen.previous_status.get("revision"))
    return GpuReplicaSetStatus(
        phase=phase,
        observed_generation=seen.generation,
        revision=revision,
        container_name=current.name if current else None,
        container_id=current.id if current else None,
        gpus=current.gpus if current else (),
        ports=bindings_of(current) if current else (),
        ip=(current.address or None) if current else None,
        conditions=tuple(conditions),
        history=tuple(r.summary() for r in seen.history),
        reason=headline(conditions, phase),
        process=_process(current),
    )


def _process(current: ObservedContainer | None) -> ProcessStatus | None:
    if current is None:
        return None
    exited = bool(current.finished_at) or current.restart_count > 0
    return ProcessStatus(current.restart_count, current.exit_code if exited else None,
                         current.oom_killed, current.started_at or None)


def headline(conditions: Sequence[Condition], phase: str) -> Reason | None:
    """The one reason worth a column: what needs the user, else the change under
    way, else why it does not serve (not for Paused or Stopped: asked for)."""
    by_type = {c.type: c for c in conditions}
    degraded = by_type.get(ConditionType.DEGRADED)
    progress = by_type.get(ConditionType.PROGRESSING)
    ready = by_type.get(ConditionType.READY)
    if degraded is not None and degraded.status:
        return degraded.reason
    if progress is not None and progress.status:
        return progress.reason
    if ready is not None and not ready.status and phase not in IDLE:
        return ready.reason
    return None


def invalid_spec_status(generation: int | None, previous_status: Mapping[str, Any],
                        error: UserError,
                        containers: Sequence[ObservedContainer]) -> GpuReplicaSetStatus:
    """The spec cannot be parsed: say so and change nothing. Whether the instance
    still serves is observed, never carried from the last status written:
    ``containers`` are the resource's containers on the node now; the one the status
    named (else the newest revision's) is the one that serves, and only while it
    runs. The rest of the status (history, GPUs, ports) is kept as it was."""
    serving = _serving_of(previous_status, containers)
    running = serving is not None and serving.status == "running"
    if running:
        assert serving is not None
        ready = condition(ConditionType.READY, True, Reason.CONTAINER_RUNNING,
                          f"container {serving.name} keeps running as before")
    elif serving is None:
        ready = condition(ConditionType.READY, False, error.reason, error.message)
    else:
        ready = condition(ConditionType.READY, False, error.reason,
                          f"container {serving.name} is {serving.status}; {error.message}")
    conditions = (
        ready,
        condition(ConditionType.PROGRESSING, False, error.reason, error.message),
        condition(ConditionType.DEGRADED, True, error.reason, error.message),
    )
    return GpuReplicaSetStatus(
        phase="Running" if running else "Failed", observed_generation=generation,
        revision=serving.revision if serving is not None else previous_status.get(
            "revision"),
        container_name=serving.name if serving is not None else None,
        container_id=serving.id if serving is not None else None,
        gpus=tuple(previous_status.get("gpus") or ()) if running else (),
        ports=_raw_ports(previous_status.get("ports") or ()) if running else (),
        ip=(serving.address or None) if serving is not None else None,
        conditions=conditions,
        history=tuple(_raw_history(previous_status.get("history") or ())),
        reason=error.reason)


def _serving_of(previous_status: Mapping[str, Any],
                containers: Sequence[ObservedContainer]) -> ObservedContainer | None:
    """Of the resource's containers on the node, the one that serves: the one the
    status last named, else the newest revision's."""
    named = str(previous_status.get("containerID") or "")
    return next((c for c in containers if named and c.id == named), None) or max(
        containers, key=lambda c: c.revision, default=None)


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


def waiting_on(previous_status: Mapping[str, Any], reason: Reason, message: str,
               now: str) -> dict[str, Any]:
    """A dependency (Docker, the revision store) does not answer: the status last
    written stays, and Progressing says what is awaited."""
    kept = [dict(c) for c in previous_status.get("conditions") or ()
            if isinstance(c, Mapping) and c.get("type") != ConditionType.PROGRESSING]
    waiting = condition(ConditionType.PROGRESSING, False, reason, message)
    return {"conditions": [*kept, {**waiting.to_dict(), "lastTransitionTime": now,
                                   "observedGeneration": previous_status.get(
                                       "observedGeneration")}],
            "reason": reason}


def serving_while_waiting(status: Mapping[str, Any], previous_status: Mapping[str, Any],
                          containers: Sequence[ObservedContainer] | None,
                          now: str) -> dict[str, Any]:
    """``status`` (from :func:`waiting_on`) with Ready observed, never carried from
    the status last written: a step may have stopped the container just before the
    dependency failed. ``containers`` are the resource's containers on the node, None
    when Docker does not answer: then whether it serves is not known (Ready=Unknown,
    as Kubernetes says of a silent node's pods). Ready=True stays only while the
    container that serves runs."""
    conditions = [dict(c) for c in status.get("conditions") or ()]
    ready = next((c for c in conditions if c.get("type") == ConditionType.READY), None)
    if ready is None or ready.get("status") != "True":
        return dict(status)  # not claimed: nothing to take back
    message = _waited(conditions)
    if containers is None:
        ready.update(status="Unknown", reason=Reason.DOCKER_UNAVAILABLE, lastTransitionTime=now,
                     message=f"whether its container runs is not known: {message}")
        return {**status, "conditions": conditions}
    serving = _serving_of(previous_status, containers)
    if serving is not None and serving.status == "running":
        return dict(status)
    ready.update(status="False", reason=Reason.CONTAINER_NOT_RUNNING, lastTransitionTime=now,
                 message=(f"container {serving.name} is {serving.status}" if serving
                          else "no container") + f"; waiting: {message}")
    shown = {**status, "conditions": conditions}
    if previous_status.get("phase") == "Running":
        shown["phase"] = "Reconciling"  # it will be put right once the store answers
    return shown


def _waited(conditions: Sequence[Mapping[str, Any]]) -> str:
    return next((str(c.get("message")) for c in conditions
                 if c.get("type") == ConditionType.PROGRESSING), "")


def note_drift(status: GpuReplicaSetStatus, drift: str | None,
               previous_status: Mapping[str, Any]) -> GpuReplicaSetStatus:
    """Record repaired drift in the Degraded condition (status False, reason
    DriftRepaired), and keep that note while nothing else happens to the resource."""
    degraded = next((c for c in status.conditions if c.type == ConditionType.DEGRADED), None)
    if degraded is None or degraded.status or degraded.reason != Reason.AS_EXPECTED:
        return status
    if drift is None:
        before = next((c for c in previous_status.get("conditions") or ()
                       if isinstance(c, Mapping) and c.get("type") == "Degraded"), None)
        if (before is None or before.get("reason") != Reason.DRIFT_REPAIRED
                or previous_status.get("observedGeneration") != status.observed_generation):
            return status
        drift_message = str(before.get("message", ""))
    else:
        drift_message = f"repaired: {drift}"
    note = condition(ConditionType.DEGRADED, False, Reason.DRIFT_REPAIRED, drift_message)
    return replace(status, conditions=tuple(note if c is degraded else c
                                            for c in status.conditions))
