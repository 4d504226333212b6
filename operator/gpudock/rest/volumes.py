"""/api/v1/volumes: SizedVolumes, a hard size each, resized with their data kept."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from gpudock.api.reasons import Reason
from gpudock.api.sized_volume import KIND, PLURAL
from gpudock.rest.auth import Caller
from gpudock.rest.codes import Code, RefusalError
from gpudock.rest.context import ApiContext, caller_patch, generation, new_object
from gpudock.rest.names import (
    ORIGINAL_NAME,
    go_size,
    go_size_bytes,
    go_time,
    has_go_unit,
    object_name,
    versioned,
)
from gpudock.rest.waiting import DONE, gone, volume_settled, wait_for

REVERT_SECONDS = 30.0


def _go_name(obj: Mapping[str, Any]) -> str:
    meta = obj.get("metadata") or {}
    return str((meta.get("annotations") or {}).get(ORIGINAL_NAME) or meta.get("name"))


def _version_info(name: str, version: int, created: str | None, size: str) -> dict[str, Any]:
    return {"version": version, "createTime": go_time(created),
            "opt": {"Driver": "local", "DriverOpts": {"size": size}, "Labels": None,
                    "Name": versioned(name, version)}}


def create(ctx: ApiContext, caller: Caller, body: dict[str, Any],
           query: Mapping[str, str]) -> dict[str, Any]:
    name, size, failure = body["name"], body["size"], Code.VOLUME_CREATE_FAILED
    if "-" in name:
        raise RefusalError(Code.VOLUME_NAME_DASH, "Invalid", name)
    if name.startswith("/"):
        raise RefusalError(Code.VOLUME_NAME_SLASH, "Invalid", name)
    namespace, obj_name = caller.namespace, object_name(name)
    if name and ctx.find(PLURAL, namespace, obj_name) is not None:
        raise RefusalError(Code.VOLUME_EXISTS, "AlreadyExists", name)
    if not name or go_size_bytes(size) is None:
        # Never a volume without a size (Docker's would be unlimited), nor one unnamed.
        raise RefusalError(failure, str(Reason.INVALID_SPEC), f"name {name!r}, size {size!r}")
    try:
        created = ctx.kube.create(PLURAL, namespace, new_object(
            KIND, obj_name, name, caller, {"nodeName": ctx.node(query, failure),
                                           "size": size.upper()}))
    except RefusalError:
        raise
    except Exception as exc:
        if ctx.find(PLURAL, namespace, obj_name) is not None:
            raise RefusalError(Code.VOLUME_EXISTS, "AlreadyExists", name) from exc
        raise RefusalError(failure, str(Reason.INVALID_SPEC), str(exc)) from exc
    outcome, obj = wait_for(ctx.kube, PLURAL, namespace, obj_name,
                            volume_settled(generation(created)), ctx.wait_seconds)
    if outcome != DONE or obj is None:
        ctx.kube.delete(PLURAL, namespace, obj_name)
        wait_for(ctx.kube, PLURAL, namespace, obj_name, gone, REVERT_SECONDS)
        raise RefusalError(failure, outcome, name)
    return {"name": versioned(name, (obj.get("status") or {}).get("revision")), "size": size}


def resize(ctx: ApiContext, caller: Caller, name: str, body: dict[str, Any]) -> dict[str, Any]:
    size, failure = body["size"].upper(), Code.VOLUME_PATCH_FAILED
    if not has_go_unit(size) or go_size_bytes(size) is None:
        raise RefusalError(Code.VOLUME_UNIT_NOT_SUPPORTED, "Invalid", size)
    namespace, obj_name = caller.namespace, object_name(name)
    current = ctx.find(PLURAL, namespace, obj_name)
    if current is None or (current.get("metadata") or {}).get("deletionTimestamp"):
        raise RefusalError(failure, "NotFound", name)
    wanted = go_size_bytes(size)
    previous = (current.get("spec") or {}).get("size")
    if wanted == go_size_bytes(str(previous)):
        raise RefusalError(Code.VOLUME_SAME_SIZE, "SameSize", size)
    patched = ctx.kube.patch(PLURAL, namespace, obj_name, caller_patch(caller, {"size": size}))
    outcome, obj = wait_for(ctx.kube, PLURAL, namespace, obj_name,
                            volume_settled(generation(patched), wanted), ctx.wait_seconds)
    if outcome != DONE or obj is None:
        ctx.kube.patch(PLURAL, namespace, obj_name, {"spec": {"size": previous}})
        raise RefusalError(failure, outcome, name)
    return {"name": versioned(name, (obj.get("status") or {}).get("revision")), "size": size}


def delete(ctx: ApiContext, caller: Caller, name: str) -> None:
    namespace, obj_name, failure = caller.namespace, object_name(name), \
        Code.VOLUME_DELETE_FAILED
    obj = ctx.find(PLURAL, namespace, obj_name)
    if obj is None:
        raise RefusalError(failure, "NotFound", name)
    if (obj.get("status") or {}).get("consumers"):
        # Never a deletion that waits on its users: the volume stays as it is.
        raise RefusalError(failure, str(Reason.VOLUME_IN_USE),
                           ", ".join(obj["status"]["consumers"]))
    ctx.kube.delete(PLURAL, namespace, obj_name)
    outcome, _ = wait_for(ctx.kube, PLURAL, namespace, obj_name, gone, ctx.wait_seconds)
    if outcome != DONE:
        raise RefusalError(failure, outcome, name)


def info(ctx: ApiContext, caller: Caller, name: str) -> dict[str, Any]:
    obj = ctx.find(PLURAL, caller.namespace, object_name(name))
    status = (obj or {}).get("status") or {}
    if obj is None or not status.get("revision"):
        raise RefusalError(Code.VOLUME_INFO_FAILED, "NotFound", name)
    version = int(status["revision"])
    created = next((h.get("createdAt") for h in status.get("history") or ()
                    if h.get("revision") == version), None)
    return {"Info": _version_info(_go_name(obj), version, created,
                                  str((obj.get("spec") or {}).get("size")))}


def history(ctx: ApiContext, caller: Caller, name: str) -> dict[str, Any]:
    obj = ctx.find(PLURAL, caller.namespace, object_name(name))
    status = (obj or {}).get("status") or {}
    if obj is None or not status.get("revision"):
        raise RefusalError(Code.VOLUME_HISTORY_FAILED, "NotFound", name)
    items = []
    for entry in sorted(status.get("history") or (), key=lambda h: -int(h["revision"])):
        version = int(entry["revision"])
        shape = _version_info(_go_name(obj), version, entry.get("createdAt"),
                              go_size(int(entry.get("sizeBytes") or 0)))
        items.append({"version": version, "createTime": shape["createTime"], "status": shape})
    return {"history": items}
