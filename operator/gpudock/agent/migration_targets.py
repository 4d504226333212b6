"""Which node a migration goes to (docs/migration.md): spec.targetNode, else the
ready, schedulable node matching the selectors with the most free GPUs; and its
transfer endpoint (address, port and the certificate it serves). Also the wait for a
node with room, the migration that no node can run (one of a GpuReplicaSet that does
not exist), and telling a target to drop what it received."""

from __future__ import annotations

import logging
from typing import Any

from gpudock.adapters import migration_wire
from gpudock.adapters.kube_api import KubeApi, ObjectNotFoundError
from gpudock.adapters.migration_wire import WireError
from gpudock.agent.migration_context import (
    TRANSFER_FIELD,
    MigrationContext,
    MigrationError,
    Show,
    seconds,
)
from gpudock.api import gpu_migration, gpu_replica_set
from gpudock.api.gpu_migration import GpuMigrationSpec, Phase
from gpudock.api.gpu_replica_set import GpuReplicaSetSpec
from gpudock.api.reasons import Reason
from gpudock.errors import GpudockError

logger = logging.getLogger(__name__)
GPU_NODES = "gpunodes"
GRS = gpu_replica_set.PLURAL


def waits_for_room(agent: MigrationContext, body: dict[str, Any], status: dict[str, Any],
                   error: MigrationError, show: Show) -> bool:
    """No node has room for it (TargetUnschedulable: none can take it, or the one
    asked refused for room) and it was made less than --migration-target-wait ago:
    shown Pending with that reason, to be tried again (True). Past that, the error
    says how long it waited (False)."""
    if error.reason != Reason.TARGET_UNSCHEDULABLE:
        return False
    wait = agent.settings.migration_target_wait
    made = body["metadata"].get("creationTimestamp")
    left = (seconds(str(made)) if made else seconds(agent.now())) + wait - \
        seconds(agent.now())
    if left <= 0:
        error.message += f" (no node had room for {wait:.0f} s)"
        return False
    status.update({"phase": Phase.PENDING, "reason": Reason.TARGET_UNSCHEDULABLE,
                   "message": f"{error.message}; waiting for a node with room, "
                   f"{left:.0f} s more"})
    show(status)
    return True


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


def abort_target(agent: MigrationContext, body: dict[str, Any], status: dict[str, Any],
                 token: str) -> None:
    """Tell the target to drop what it received for this migration (``token``: the
    migration's, which only the source knows, in memory: after a restart the target
    keeps what it got). Best effort: the source's disk and records are untouched
    either way."""
    target = status.get("targetNode")
    if not target:
        return
    try:
        node = agent.kube.get_cluster(GPU_NODES, str(target))
        endpoint = (node.get("status") or {}).get(TRANSFER_FIELD) or {}
        if not token or not endpoint.get("port") or not endpoint.get("caBundle"):
            return
        channel = migration_wire.connect(endpoint["address"], int(endpoint["port"]),
                                         0, lambda: False, str(endpoint["caBundle"]))
    except (GpudockError, WireError) as exc:
        logger.warning("could not tell node %s to drop what it received: %s", target,
                       exc)
        return
    try:
        channel.send({"op": "hello", "token": token, "purpose": "abort",
                      "migration": {"namespace": body["metadata"]["namespace"],
                                    "name": body["metadata"]["name"]}})
        channel.keyed(token)
        channel.receive()
        channel.receive()
    except WireError as exc:
        logger.warning("node %s did not drop what it received: %s", target, exc)
    finally:
        channel.close()
