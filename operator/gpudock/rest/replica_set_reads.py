"""GET /replicaSet/:name and /history: the Go service's Info, built from the
resource (the current revision) and its ControllerRevisions (earlier ones)."""

from __future__ import annotations

from typing import Any

from gpudock.api.gpu_replica_set import PLURAL
from gpudock.rest import revisions
from gpudock.rest.auth import Caller
from gpudock.rest.codes import Code, RefusalError
from gpudock.rest.context import ApiContext
from gpudock.rest.names import go_time, object_name
from gpudock.rest.replica_set_changes import volume_versions
from gpudock.rest.replica_set_shapes import info as current_info
from gpudock.rest.replica_set_shapes import shape_info


def info(ctx: ApiContext, caller: Caller, name: str) -> dict[str, Any]:
    obj = ctx.find(PLURAL, caller.namespace, object_name(name))
    if obj is None or not (obj.get("status") or {}).get("revision"):
        raise RefusalError(Code.CONTAINER_INFO_FAILED, "NotFound", name)
    spec = obj.get("spec") or {}
    return {"Info": current_info(name, obj, volume_versions(ctx, caller.namespace, spec))}


def history(ctx: ApiContext, caller: Caller, name: str) -> dict[str, Any]:
    obj_name = object_name(name)
    obj = ctx.find(PLURAL, caller.namespace, obj_name)
    if obj is None or not (obj.get("status") or {}).get("revision"):
        raise RefusalError(Code.CONTAINER_HISTORY_FAILED, "NotFound", name)
    uid = str((obj.get("metadata") or {}).get("uid"))
    kept = revisions.recorded(ctx, caller.namespace, obj_name, uid)
    status = obj.get("status") or {}
    current = int(status.get("revision") or 0)
    kept[current] = current_info(name, obj, volume_versions(ctx, caller.namespace,
                                                            obj.get("spec") or {}))
    items = []
    for summary in status.get("history") or ():
        version = int(summary.get("revision") or 0)
        shape = kept.get(version) or shape_info(
            name, {"image": summary.get("image"), "gpuCount": summary.get("gpuCount")},
            {}, version, go_time(summary.get("createdAt")), {})
        items.append({"version": version, "createTime": shape.get("createTime", ""),
                      "status": shape})
    if not any(item["version"] == current for item in items):
        items.append({"version": current, "createTime": kept[current]["createTime"],
                      "status": kept[current]})
    items.sort(key=lambda item: -int(item["version"]))
    return {"history": items}
