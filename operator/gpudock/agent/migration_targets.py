"""Which node a migration goes to (docs/migration.md): spec.targetNode, else the
ready, schedulable node matching the selectors with the most free GPUs; and its
transfer endpoint (address, port and the certificate it serves). Also the migration
that no node can run: one of a GpuReplicaSet that does not exist."""

from __future__ import annotations

from typing import Any

from gpudock.adapters.kube_api import KubeApi, ObjectNotFoundError
from gpudock.agent.migration_switch import (
    TRANSFER_FIELD,
    MigrationContext,
    MigrationError,
    seconds,
)
from gpudock.api import gpu_migration, gpu_replica_set
from gpudock.api.gpu_migration import GpuMigrationSpec, Phase
from gpudock.api.gpu_replica_set import GpuReplicaSetSpec
from gpudock.api.reasons import Reason

GPU_NODES = "gpunodes"
GRS = gpu_replica_set.PLURAL


def choose_target(agent: MigrationContext, spec: GpuMigrationSpec,
                  rs_spec: GpuReplicaSetSpec,
                  grs: dict[str, Any]) -> tuple[str, dict[str, Any]]:
    """The target node's name and endpoint; MigrationError TargetUnschedulable, with
    why each node cannot take it, when none can."""
    selector = dict(spec.node_selector or (grs.get("spec") or {}).get("nodeSelector") or {})
    fits: list[tuple[int, str, dict[str, Any]]] = []
    why: list[str] = []
    now = seconds(agent.now())
    for node in agent.kube.list_cluster(GPU_NODES):
        name = node["metadata"]["name"]
        status = node.get("status") or {}
        labels = node["metadata"].get("labels") or {}
        if name == agent.settings.node_name or (spec.target_node and
                                                name != spec.target_node):
            continue
        beat = str(status.get("heartbeatTime") or "")
        endpoint = status.get(TRANSFER_FIELD) or {}
        if not beat or now - seconds(beat) > 3 * agent.settings.heartbeat_seconds + 5:
            why.append(f"{name}: not ready")
        elif (node.get("spec") or {}).get("unschedulable"):
            why.append(f"{name}: unschedulable")
        elif any(labels.get(k) != v for k, v in selector.items()):
            why.append(f"{name}: does not match the node selector")
        elif int(status.get("gpusFree") or 0) < rs_spec.gpu_count:
            why.append(f"{name}: {status.get('gpusFree')} free GPUs")
        elif not endpoint.get("port") or not endpoint.get("caBundle"):
            why.append(f"{name}: no migration endpoint (with TLS)")
        else:
            fits.append((-int(status.get("gpusFree") or 0), name, endpoint))
    if not fits:
        wanted = f"node {spec.target_node}" if spec.target_node else "no other node"
        raise MigrationError(Reason.TARGET_UNSCHEDULABLE, f"{wanted} can take it: "
                             + ("; ".join(why) or "no such node"))
    _, name, endpoint = min(fits)
    return name, endpoint


def replica_set_missing(body: dict[str, Any], kube: KubeApi, now: str,
                        ) -> dict[str, Any] | None:
    """The Failed status of a GpuMigration, with no status yet, whose GpuReplicaSet
    does not exist; None when it does (its node's agent runs the migration). No node
    holds such a GpuReplicaSet, so no source would ever answer: any agent writes this,
    every one the same (as an ExecRequest of a missing GpuReplicaSet is failed)."""
    if gpu_migration.phase_of(body) is not Phase.PENDING or body.get("status"):
        return None
    name = (body.get("spec") or {}).get("replicaSetName")
    try:
        kube.get(GRS, body["metadata"]["namespace"], str(name))
    except ObjectNotFoundError:
        return {"phase": Phase.FAILED, "reason": Reason.REPLICA_SET_NOT_FOUND,
                "message": f"GpuReplicaSet {name} does not exist", "completionTime": now}
    return None
