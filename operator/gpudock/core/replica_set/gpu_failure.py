"""An instance holding a GPU that turned Unhealthy (core/gpu_health.py): it keeps
running and says so (Degraded=True, GPUUnhealthy, naming the GPU); with
spec.gpuFailurePolicy Replace it moves to a healthy free GPU as a new revision, its
disk kept (the rollout of plan.py, with this as its cause)."""

from __future__ import annotations

from dataclasses import replace

from gpudock.api.conditions import ConditionType
from gpudock.api.gpu_replica_set import DesiredState, GpuFailurePolicy, GpuReplicaSetStatus
from gpudock.api.reasons import Reason
from gpudock.core.allocation import Ledger, allocate_gpus
from gpudock.core.conditions import condition
from gpudock.core.observed import ObservedContainer
from gpudock.core.replica_set.observation import Observation


def unhealthy_held(obs: Observation, current: ObservedContainer | None) -> list[str]:
    """What is wrong with each Unhealthy GPU the current container holds."""
    if current is None:
        return []
    return [obs.unhealthy_gpus[u] for u in current.gpus if u in obs.unhealthy_gpus]


def _replaceable(obs: Observation, current: ObservedContainer) -> bool:
    """Whether healthy free GPUs for the whole spec are there now."""
    taken = Ledger.from_containers(obs.containers).gpus_held_by_others(obs.key) | \
        set(obs.unhealthy_gpus)
    return allocate_gpus(obs.spec.gpu_count, obs.inventory, taken, current.gpus) is not None


def replacement_cause(obs: Observation, current: ObservedContainer) -> str | None:
    """Why the container moves to a new revision under gpuFailurePolicy Replace (the
    change cause it records), or None: not asked for, nothing Unhealthy, not Running,
    or no healthy GPU free yet (it keeps running, Degraded, until one is). A container
    that lost its GPUs (the access probe) is recreated whatever the policy."""
    lost = obs.access_lost.get(current.id)
    if lost is not None and obs.spec.state is DesiredState.RUNNING:
        return f"{Reason.GPU_ACCESS_LOST}: {lost}"
    if obs.spec.gpu_failure_policy is not GpuFailurePolicy.REPLACE or \
            obs.spec.state is not DesiredState.RUNNING:
        return None
    sick = unhealthy_held(obs, current)
    if not sick or not _replaceable(obs, current):
        return None
    return f"replacing an Unhealthy GPU (spec.gpuFailurePolicy Replace): {'; '.join(sick)}"


def degraded(obs: Observation, current: ObservedContainer | None,
             status: GpuReplicaSetStatus) -> GpuReplicaSetStatus:
    """The status, Degraded GPUUnhealthy when the container holds an Unhealthy GPU
    and nothing else makes it Degraded already."""
    sick = unhealthy_held(obs, current)
    if not sick or any(c.type == ConditionType.DEGRADED and c.status
                       for c in status.conditions):
        return status
    if obs.spec.gpu_failure_policy is GpuFailurePolicy.REPLACE:
        then = ("spec.gpuFailurePolicy is Replace: it moves to a healthy GPU, its disk "
                "kept, when one is free")
    else:
        then = ("spec.gpuFailurePolicy is Keep: set it to Replace to move to a healthy "
                "GPU, its disk kept")
    message = f"{'; '.join(sick)}. The container keeps running; {then}"
    conditions = tuple(condition(ConditionType.DEGRADED, True, Reason.GPU_UNHEALTHY, message)
                       if c.type == ConditionType.DEGRADED else c for c in status.conditions)
    return replace(status, conditions=conditions)
