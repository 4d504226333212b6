"""Which node a migration goes to (docs/migration.md): spec.targetNode, else the
node the scheduler's filters and policy pick (core/placement.py); and its
transfer endpoint (address, port and the certificate it serves). Also the wait for a
node with room, the migration that no node can run (one of a GpuReplicaSet that does
not exist), and telling a target to drop what it received."""

from __future__ import annotations

import logging
from dataclasses import replace
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
from gpudock.agent.migration_volumes import MovingVolume
from gpudock.api import gpu_migration, gpu_replica_set, sized_volume
from gpudock.api.gpu_migration import GpuMigrationSpec, Phase
from gpudock.api.placement import SchedulingPolicy
from gpudock.api.reasons import Reason
from gpudock.core.fleet_view import move_demand, node_views, volumes_by_key
from gpudock.core.placement import NO_ENDPOINT, NodeView, Unplaceable, place
from gpudock.errors import GpudockError, SpecError

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


def choose_target(agent: MigrationContext, spec: GpuMigrationSpec, grs: dict[str, Any],
                  moving: list[MovingVolume]) -> tuple[str, dict[str, Any]]:
    """The target node's name and endpoint: spec.targetNode, or the node the
    scheduler would place the instance on (core/placement.py: its filters, with what
    is bound to each node counted, and its policy), among the other nodes that serve
    migrations (a transfer endpoint with TLS). ``moving``: the SizedVolumes that move
    with it (one pinned by its spec.nodeName ties it to that node). A move asked by a
    changed spec.nodeName, like a pod's nodeName, skips the cordon, taints and
    selectors: only readiness and room count. MigrationError TargetUnschedulable with
    kube-scheduler's message when no node can take it."""
    settings = agent.settings
    if spec.target_node == settings.node_name:
        raise MigrationError(Reason.NOT_MIGRATABLE, f"it is on node {spec.target_node} "
                             "already: the target must be another node")
    gpu_nodes = agent.kube.list_cluster(GPU_NODES)
    sized = agent.kube.list_objects(sized_volume.PLURAL, settings.namespaces)
    pinned_move = bool(spec.target_node) and \
        (grs.get("spec") or {}).get("nodeName") == spec.target_node
    views = [replace(view, unschedulable=False, taints=()) if pinned_move else view
             for view in node_views(gpu_nodes, agent.kube.list_objects(
                 GRS, settings.namespaces), sized, agent.now(), settings.heartbeat_seconds)
             if view.name != settings.node_name
             and (not spec.target_node or view.name == spec.target_node)]
    endpoints = {str(node["metadata"]["name"]): (node.get("status") or {}).get(
        TRANSFER_FIELD) or {} for node in gpu_nodes}
    try:
        demand = move_demand(grs, volumes_by_key(sized), [v.name for v in moving],
                             spec.node_selector or {},
                             # (one pinned here fails the move after: check_pins)
                             {v.pinned for v in moving if v.pinned not in ("", settings.node_name)})
    except SpecError as exc:
        raise MigrationError(Reason.INVALID_SPEC, exc.message) from exc
    if pinned_move:
        demand = replace(demand, placement=replace(
            demand.placement, node_selector={}, gpu_models=(), gpu_min_memory_mib=0))

    def serves_migrations(view: NodeView) -> str | None:
        endpoint = endpoints.get(view.name) or {}
        return None if endpoint.get("port") and endpoint.get("caBundle") else NO_ENDPOINT

    placed = place(demand, views, SchedulingPolicy(settings.scheduling_policy),
                   also=serves_migrations)
    if isinstance(placed, Unplaceable):
        if spec.target_node:
            why = placed.message if views else f"no GpuNode {spec.target_node} serves GPUs"
            message = f"node {spec.target_node} cannot take it: {why}"
        else:
            why = placed.message if views else "no other GpuNode serves GPUs"
            message = f"no other node can take it: {why}"
        raise MigrationError(Reason.TARGET_UNSCHEDULABLE, message)
    return placed.node, endpoints[placed.node]


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
