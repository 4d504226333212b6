"""/api/v1/resources: the GPUs and host ports of a node, from its GpuNode."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from gpudock.api import gpu_replica_set as replica_sets
from gpudock.api.reasons import Reason
from gpudock.errors import NotFoundError
from gpudock.rest.auth import Caller
from gpudock.rest.codes import Code, RefusalError
from gpudock.rest.context import ApiContext

GPU_NODES = "gpunodes"


def _node_status(ctx: ApiContext, query: Mapping[str, str]) -> dict[str, Any]:
    node = ctx.node(query, Code.SERVE_BUSY)
    try:
        return dict(ctx.kube.get_cluster(GPU_NODES, node).get("status") or {})
    except NotFoundError as exc:
        raise RefusalError(Code.SERVE_BUSY, str(Reason.NODE_NOT_FOUND), node) from exc


def _held(ctx: ApiContext, query: Mapping[str, str]) -> tuple[set[str], set[str]]:
    """GPUs and host ports the node's GpuReplicaSets hold now, from their statuses
    (which the agent writes as each change is done; the GpuNode follows at its next
    heartbeat): an answer after a change reads that change."""
    node = ctx.node(query, Code.SERVE_BUSY)
    gpus: set[str] = set()
    ports: set[str] = set()
    for item in ctx.kube.list_objects(replica_sets.PLURAL):
        status = item.get("status") or {}
        if (item.get("spec") or {}).get("nodeName") == node:
            gpus.update(str(g) for g in status.get("gpus") or ())
            ports.update(str(p.get("hostPort")) for p in status.get("ports") or ())
    return gpus, ports


def gpus(ctx: ApiContext, caller: Caller, query: Mapping[str, str]) -> dict[str, Any]:
    status = _node_status(ctx, query)
    held, _ = _held(ctx, query)
    found = {str(g.get("uuid")): 1 if str(g.get("uuid")) in held else 0
             for g in status.get("gpus") or ()}
    return {"gpus": dict(sorted(found.items()))}  # Go writes a map's keys sorted


def ports(ctx: ApiContext, caller: Caller, query: Mapping[str, str]) -> dict[str, Any]:
    node_ports = _node_status(ctx, query).get("ports") or {}
    first, _, last = str(node_ports.get("range") or "0-0").partition("-")
    _, held = _held(ctx, query)
    used: dict[str, dict[str, Any]] = {port: {} for port in sorted(held)}  # as Go sorts
    start, end = int(first or 0), int(last or 0)
    return {"ports": {"StartPort": start, "EndPort": end,
                      "AvailableCount": end - start + 1 - len(used), "UsedPortSet": used}}
