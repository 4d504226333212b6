"""A node's GpuNode status, and what a resource of a silent or unknown node says.

The GpuNode is the node's heartbeat and inventory, made from the same truth the
allocator uses (the GPUs NVML lists, the labels of the containers Docker runs), never
from a bookkeeping of its own. Any agent can tell from it that another node is gone:
a resource whose node has no GpuNode, or one not written for STALE_HEARTBEATS
periods, gets that said in its status (NodeNotFound, NodeNotReady), so it never
keeps an empty or stale status that looks fine.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from gpudock.api.reasons import Reason
from gpudock.core.gpus import GpuDevice
from gpudock.core.observed import ObservedContainer, ResourceKey
from gpudock.core.times import seconds_between

STALE_HEARTBEATS = 3


# A holder as every tenant may see it where the agent hides names (--hide-holder-names):
# that the GPU or port is held, not by whom.
HIDDEN_HOLDER: dict[str, Any] = {"held": True}


def gpu_node_status(devices: Sequence[GpuDevice], containers: Sequence[ObservedContainer],
                    port_range: tuple[int, int], version: str, now: str,
                    hide_holders: bool = False,
                    arriving: Mapping[str, ResourceKey] | None = None) -> dict[str, Any]:
    """``hide_holders``: a holder is only ``{held: true}``, no namespace, name or
    revision (the GpuNode is cluster-scoped: whoever may read it sees them all).
    ``arriving``: GPUs held for instances a migration brings here (UUID -> the
    instance), shown held by it with ``arriving: true`` while no container holds them."""
    holders = {gpu: c for c in containers if c.owner is not None for gpu in c.gpus}
    gpus = []
    for device in devices:
        holder = holders.get(device.uuid)
        coming = (arriving or {}).get(device.uuid) if holder is None else None
        gpus.append({
            "index": device.index, "uuid": device.uuid, "model": device.name,
            "memoryMiB": device.memory_bytes // 2**20, "health": device.health,
            "reason": device.health_reason or None, "since": device.since or None,
            "utilization": device.utilization,
            "memoryUsedMiB": None if device.memory_used_bytes is None
            else device.memory_used_bytes // 2**20,
            "holder": _arriving(coming, hide_holders) if coming is not None else
            None if holder is None or holder.owner is None else
            dict(HIDDEN_HOLDER) if hide_holders else {
                "namespace": holder.owner.namespace, "name": holder.owner.name,
                "revision": holder.revision},
        })
    first, last = port_range
    used = {p.port for c in containers for p in c.host_ports if first <= p.port <= last}
    bindings = sorted(({"hostPort": p.port, "protocol": str(p.protocol), "holder": dict(
        HIDDEN_HOLDER) if hide_holders else {"namespace": c.owner.namespace,
                                             "name": c.owner.name}}
        for c in containers if c.owner is not None for p in c.host_ports),
        key=lambda b: (b["hostPort"], b["protocol"]))
    allocated = sum(1 for g in gpus if g["holder"] is not None)
    return {
        "gpus": gpus, "gpusTotal": len(gpus), "gpusAllocated": allocated,
        # Free: Healthy and held by no container (what a new instance can get).
        "gpusFree": sum(1 for g in gpus if g["holder"] is None and g["health"] == "Healthy"),
        "ports": {"range": f"{first}-{last}", "used": len(used),
                  "free": last - first + 1 - len(used), "bindings": bindings},
        "agentVersion": version, "heartbeatTime": now,
        "conditions": [{"type": "Ready", "status": "True", "reason": Reason.AGENT_HEARTBEAT,
                        "message": f"the gpudock agent wrote this at {now}",
                        "lastTransitionTime": now}],
    }


def _arriving(key: ResourceKey, hide_holders: bool) -> dict[str, Any]:
    return {**HIDDEN_HOLDER, "arriving": True} if hide_holders else {
        "namespace": key.namespace, "name": key.name, "arriving": True}


def node_verdict(node_name: str, gpu_node: Mapping[str, Any] | None, now: str,
                 heartbeat_seconds: float) -> tuple[Reason, str] | None:
    """Why a resource of ``node_name`` cannot be served now (reason, message), or
    None when the node's agent is alive."""
    if gpu_node is None:
        return (Reason.NODE_NOT_FOUND, f"no gpudock agent runs on node {node_name} (it has no "
                "GpuNode); check spec.nodeName, or install the agent on that node")
    beat = str((gpu_node.get("status") or {}).get("heartbeatTime") or "")
    silent = seconds_between(beat, now)
    if silent is None:
        return (Reason.NODE_NOT_READY, f"the gpudock agent of node {node_name} has not "
                "reported yet")
    if silent > STALE_HEARTBEATS * heartbeat_seconds:
        return (Reason.NODE_NOT_READY, f"the gpudock agent of node {node_name} was last seen "
                f"at {beat} ({silent:.0f}s ago); what its containers do now is unknown")
    return None


def unreachable_status(previous: Mapping[str, Any], reason: Reason, message: str,
                       now: str) -> dict[str, Any] | None:
    """The status of a resource whose node cannot serve it (NodeNotFound: nothing
    was ever made; NodeNotReady: whatever runs there is not known, so Ready is
    Unknown, as Kubernetes says of a silent node's pods). None when it says so."""
    ready_before = next((c for c in previous.get("conditions") or ()
                         if isinstance(c, Mapping) and c.get("type") == "Ready"), {})
    if ready_before.get("reason") == reason:
        return None
    ready = "False" if reason == Reason.NODE_NOT_FOUND else "Unknown"
    conditions = [
        {"type": "Ready", "status": ready, "reason": reason, "message": message},
        {"type": "Progressing", "status": "False", "reason": reason, "message": message},
        {"type": "Degraded", "status": "True", "reason": reason, "message": message},
    ]
    return {"phase": "Pending" if reason == Reason.NODE_NOT_FOUND else "Unknown",
            "reason": reason,
            "conditions": [{**c, "lastTransitionTime": now} for c in conditions]}
