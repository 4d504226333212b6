"""POST /replicaSet and the PATCH and DELETE endpoints: each one change of the
GpuReplicaSet's spec, answered when the agent has applied it. A refused change puts
the previous spec back (a refused create deletes what it made), so the resource is
left as the Go service would leave it."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from gpudock.adapters.kube_api import ObjectInvalidError
from gpudock.api.gpu_replica_set import KIND, PLURAL, REDEPLOY_ANNOTATION
from gpudock.api.reasons import Reason
from gpudock.api.sized_volume import PLURAL as VOLUMES
from gpudock.core.replica_set.redeploy import fresh_token
from gpudock.rest import revisions
from gpudock.rest.auth import Caller
from gpudock.rest.codes import Code, RefusalError
from gpudock.rest.context import ApiContext, caller_patch, generation, log, new_object
from gpudock.rest.names import base_name, object_name, versioned
from gpudock.rest.replica_set_requests import committed_image
from gpudock.rest.replica_set_shapes import (
    ShapeError,
    env_list,
    info,
    mount,
    port_list,
)
from gpudock.rest.waiting import DONE, gone, replica_set_settled, wait_for

REVERT_SECONDS = 30.0


def _code_for(reason: str, failure: Code) -> Code:
    if reason in (Reason.INSUFFICIENT_GPUS, Reason.EXCEEDS_NODE_CAPACITY):
        return Code.GPU_NOT_ENOUGH if failure == Code.CONTAINER_RUN_FAILED else failure
    if reason == Reason.NO_FREE_HOST_PORT:
        return Code.PORT_NOT_ENOUGH if failure == Code.CONTAINER_RUN_FAILED else failure
    return failure


def volume_versions(ctx: ApiContext, namespace: str,
                    spec: Mapping[str, Any]) -> dict[str, str]:
    """Mounted SizedVolumes by object name -> their Go name ``bar-<version>``."""
    found: dict[str, str] = {}
    for m in spec.get("mounts") or ():
        if m.get("volume"):
            volume = ctx.find(VOLUMES, namespace, m["volume"]) or {}
            go = ((volume.get("metadata") or {}).get("annotations") or {}).get(
                "gpudock.dev/rest-name") or m["volume"]
            found[m["volume"]] = versioned(go, (volume.get("status") or {}).get("revision"))
    return found


def _mount_of(ctx: ApiContext, namespace: str, bind: Mapping[str, str],
              code: Code) -> dict[str, Any]:
    src = bind.get("src") or ""
    volume = None if src.startswith("/") else object_name(base_name(src))
    try:
        if volume is not None and ctx.find(VOLUMES, namespace, volume) is None:
            raise RefusalError(code, "VolumeNotFound", f"no volume {src}")
        return mount(bind, volume)
    except ShapeError as exc:
        raise RefusalError(code, str(Reason.INVALID_SPEC), str(exc)) from exc


def _record(ctx: ApiContext, namespace: str, go_name: str, obj: Mapping[str, Any]) -> None:
    try:
        revisions.record(ctx, namespace, obj,
                         info(go_name, obj, volume_versions(ctx, namespace, obj["spec"])))
    except Exception:  # history is best effort: the change is done
        log.exception("recording revision of %s/%s", namespace, go_name)


def create(ctx: ApiContext, caller: Caller, body: dict[str, Any],
           query: Mapping[str, str]) -> dict[str, Any]:
    name, failure = body["replicaSetName"], Code.CONTAINER_RUN_FAILED
    if not body["imageName"]:
        raise RefusalError(Code.IMAGE_NAME_EMPTY, "Invalid", "imageName is empty")
    if not name:
        raise RefusalError(Code.CONTAINER_NAME_EMPTY, "Invalid", "replicaSetName is empty")
    if body["gpuCount"] < 0:
        raise RefusalError(Code.GPU_COUNT_NEGATIVE, "Invalid", "gpuCount < 0")
    if "-" in name:
        raise RefusalError(Code.CONTAINER_NAME_DASH, "Invalid", "replicaSetName has a dash")
    namespace, obj_name = caller.namespace, object_name(name)
    if ctx.find(PLURAL, namespace, obj_name) is not None:
        raise RefusalError(Code.CONTAINER_EXISTS, "AlreadyExists", obj_name)
    try:
        spec: dict[str, Any] = {
            "nodeName": ctx.node(query, failure),
            "image": committed_image(ctx, namespace, body["imageName"]),
            "gpuCount": body["gpuCount"], "command": body["cmd"],
            "env": env_list(body["env"]), "ports": port_list(body["containerPorts"]),
            "mounts": [_mount_of(ctx, namespace, b, failure) for b in body["binds"]],
        }
    except ShapeError as exc:
        raise RefusalError(failure, str(Reason.INVALID_SPEC), str(exc)) from exc
    try:
        created = ctx.kube.create(PLURAL, namespace, new_object(KIND, obj_name, name, caller,
                                                                spec))
    except Exception as exc:
        if ctx.find(PLURAL, namespace, obj_name) is not None:
            raise RefusalError(Code.CONTAINER_EXISTS, "AlreadyExists", obj_name) from exc
        raise RefusalError(failure, str(Reason.INVALID_SPEC), str(exc)) from exc
    outcome, obj = wait_for(ctx.kube, PLURAL, namespace, obj_name,
                            replica_set_settled(generation(created), "Running"),
                            ctx.wait_seconds)
    if outcome != DONE or obj is None:
        _remove(ctx, namespace, obj_name, REVERT_SECONDS)
        raise RefusalError(_code_for(outcome, failure), outcome, f"create {obj_name}")
    _record(ctx, namespace, name, obj)
    return {"name": versioned(name, (obj.get("status") or {}).get("revision"))}


def change(ctx: ApiContext, caller: Caller, name: str, failure: Code, state: str,
           spec_patch: Any, new_version: bool = False) -> Mapping[str, Any]:
    """Apply ``spec_patch(spec, status)`` (a merge patch of the spec) and wait until the
    agent has, in ``state``; on a refusal put the previous spec back. ``new_version``:
    a new revision even of the same spec (a fresh gpudock.dev/redeploy value), and
    the wait lasts until it is there."""
    namespace, obj_name = caller.namespace, object_name(name)
    current = ctx.find(PLURAL, namespace, obj_name)
    if current is None or (current.get("metadata") or {}).get("deletionTimestamp"):
        raise RefusalError(failure, "NotFound", obj_name)
    previous = dict(current.get("spec") or {})
    patch = {**spec_patch(previous, current.get("status") or {}), "state": state}
    body = caller_patch(caller, patch)
    status = current.get("status") or {}  # the new revision comes after all of these
    before = max([int(h.get("revision") or 0) for h in status.get("history") or ()]
                 + [int(status.get("revision") or 0)])
    if new_version:
        body["metadata"]["annotations"][REDEPLOY_ANNOTATION] = fresh_token()
    try:
        patched = ctx.kube.patch(PLURAL, namespace, obj_name, body)
    except ObjectInvalidError as exc:  # the schema refused it (gpuCount 5455): unchanged
        raise RefusalError(failure, "Invalid", exc.message) from exc
    outcome, obj = wait_for(ctx.kube, PLURAL, namespace, obj_name,
                            replica_set_settled(
                                generation(patched), state,
                                after_revision=before if new_version else None,
                                spec_changed=generation(patched) > generation(current)),
                            ctx.wait_seconds)
    if outcome != DONE or obj is None:
        restore = {key: previous.get(key) for key in patch if key != "rollbackTo"}
        token = ((current.get("metadata") or {}).get("annotations") or {}).get(
            REDEPLOY_ANNOTATION)  # its previous value back too: no redeploy after
        restored = ctx.kube.patch(PLURAL, namespace, obj_name, {
            "spec": {**restore, "rollbackTo": None},
            **({"metadata": {"annotations": {REDEPLOY_ANNOTATION: token}}}
               if new_version else {})})
        wait_for(ctx.kube, PLURAL, namespace, obj_name,
                 replica_set_settled(generation(restored), str(previous.get("state")
                                                              or "Running")),
                 REVERT_SECONDS)
        raise RefusalError(failure, outcome, f"change of {obj_name}")
    if (obj.get("status") or {}).get("revision") != (current.get("status") or {}).get(
            "revision"):
        _record(ctx, namespace, name, obj)
    return obj


def patch(ctx: ApiContext, caller: Caller, name: str, body: dict[str, Any]) -> dict[str, Any]:
    failure = Code.CONTAINER_PATCH_FAILED
    gpu_patch, volume_patch = body["gpuPatch"], body["volumePatch"]
    if gpu_patch is not None and gpu_patch["gpuCount"] < 0:
        raise RefusalError(Code.GPU_COUNT_NEGATIVE, "Invalid", "gpuCount < 0")
    if volume_patch is not None and not all(
            bind and bind["src"] and bind["dest"]
            for bind in (volume_patch["oldBind"], volume_patch["newBind"])):
        raise RefusalError(Code.INVALID_PARAMS, "Invalid", "volumePatch needs oldBind and newBind")
    namespace = caller.namespace

    def spec_patch(spec: Mapping[str, Any], status: Mapping[str, Any]) -> dict[str, Any]:
        result: dict[str, Any] = {}
        if gpu_patch is not None:
            result["gpuCount"] = gpu_patch["gpuCount"]
        if volume_patch is not None:
            old = _mount_of(ctx, namespace, volume_patch["oldBind"], failure)
            new = _mount_of(ctx, namespace, volume_patch["newBind"], failure)
            mounts = [dict(m) for m in spec.get("mounts") or ()]
            same = [i for i, m in enumerate(mounts) if m.get("mountPath") == old["mountPath"]
                    and m.get("volume") == old.get("volume")
                    and m.get("hostPath") == old.get("hostPath")]
            if not same:
                raise RefusalError(failure, "BindNotFound", "oldBind is not a bind of it")
            mounts[same[0]] = new
            result["mounts"] = mounts
        return result

    obj = change(ctx, caller, name, failure, "Running", spec_patch, new_version=True)
    return {"containerName": versioned(name, (obj.get("status") or {}).get("revision"))}


def rollback(ctx: ApiContext, caller: Caller, name: str,
             body: dict[str, Any]) -> dict[str, Any]:
    version, failure = body["version"], Code.ROLLBACK_FAILED
    if version < 0:
        raise RefusalError(Code.VERSION_NEGATIVE, "Invalid", "version < 0")
    current = ctx.find(PLURAL, caller.namespace, object_name(name))
    status = (current or {}).get("status") or {}
    if current is None:
        raise RefusalError(failure, "NotFound", name)
    if version == status.get("revision"):
        raise RefusalError(Code.NO_NEED_ROLLBACK, str(Reason.ROLLBACK_TO_CURRENT), name)
    if not any(h.get("revision") == version and not h.get("failed")
               for h in status.get("history") or ()):
        raise RefusalError(failure, str(Reason.REVISION_NOT_FOUND), f"{name} has no {version}")
    obj = change(ctx, caller, name, failure, "Running",
                 lambda spec, status: {"rollbackTo": {"revision": version}})
    return {"containerName": versioned(name, (obj.get("status") or {}).get("revision"))}


def set_state(state: str, failure: Code, new_version: bool) -> Any:
    """/stop (Stopped), /pause (Paused), /continue (Running), /restart (Running, a new
    version)."""
    def operation(ctx: ApiContext, caller: Caller, name: str) -> dict[str, Any] | None:
        obj = change(ctx, caller, name, failure, state, lambda spec, status: {},
                     new_version=new_version)
        if not new_version:
            return None
        return {"containerName": versioned(name, (obj.get("status") or {}).get("revision"))}
    return operation


def _remove(ctx: ApiContext, namespace: str, obj_name: str, seconds: float) -> str:
    """Delete with history purged; the outcome of waiting until it is gone."""
    ctx.kube.patch(PLURAL, namespace, obj_name, {"spec": {"historyPolicy": "Purge"}})
    ctx.kube.delete(PLURAL, namespace, obj_name)
    outcome, _ = wait_for(ctx.kube, PLURAL, namespace, obj_name, gone, seconds)
    revisions.purge(ctx, namespace, obj_name)
    return outcome


def delete(ctx: ApiContext, caller: Caller, name: str) -> None:
    obj_name = object_name(name)
    if ctx.find(PLURAL, caller.namespace, obj_name) is None:
        raise RefusalError(Code.CONTAINER_DELETE_FAILED, "NotFound", obj_name)
    outcome = _remove(ctx, caller.namespace, obj_name, ctx.wait_seconds)
    if outcome != DONE:
        raise RefusalError(Code.CONTAINER_DELETE_FAILED, outcome, obj_name)
