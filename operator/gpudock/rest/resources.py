"""/api/v1/resources: the GPUs and host ports of a node, from its GpuNode."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

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


def gpus(ctx: ApiContext, caller: Caller, query: Mapping[str, str]) -> dict[str, Any]:
    status = _node_status(ctx, query)
    found = {str(g.get("uuid")): 0 if g.get("holder") is None else 1
             for g in status.get("gpus") or ()}
    return {"gpus": dict(sorted(found.items()))}  # Go writes a map's keys sorted


def ports(ctx: ApiContext, caller: Caller, query: Mapping[str, str]) -> dict[str, Any]:
    held = _node_status(ctx, query).get("ports") or {}
    first, _, last = str(held.get("range") or "0-0").partition("-")
    # Go writes a map's keys sorted (as strings).
    used: dict[str, dict[str, Any]] = {
        port: {} for port in sorted({str(b.get("hostPort")) for b in held.get("bindings") or ()})}
    start, end = int(first or 0), int(last or 0)
    return {"ports": {"StartPort": start, "EndPort": end,
                      "AvailableCount": end - start + 1 - len(used), "UsedPortSet": used}}
