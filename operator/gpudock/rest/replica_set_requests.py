"""POST /replicaSet/:name/commit (an ImageCommit) and /execute (an ExecRequest),
answered when the request has finished; and the image a later create means by a
committed name."""

from __future__ import annotations

import contextlib
from typing import Any

from gpudock.api import exec_request, image_commit
from gpudock.api.gpu_replica_set import PLURAL
from gpudock.api.image_commit import repository_prefix
from gpudock.api.reasons import Reason
from gpudock.errors import GpudockError
from gpudock.rest.auth import Caller
from gpudock.rest.codes import Code, RefusalError
from gpudock.rest.context import ApiContext, new_object
from gpudock.rest.names import ORIGINAL_NAME, object_name
from gpudock.rest.waiting import DONE, request_finished, wait_for

EXEC_TIMEOUT_SECONDS = 3600


def committed_image(ctx: ApiContext, namespace: str, image: str) -> str:
    """The image a commit through this API wrote under the name ``image`` (its
    ImageCommit keeps that name), else ``image`` itself."""
    for item in ctx.kube.list_objects(image_commit.PLURAL, (namespace,)):
        annotations = (item.get("metadata") or {}).get("annotations") or {}
        if annotations.get(ORIGINAL_NAME) == image and \
                (item.get("status") or {}).get("phase") == "Succeeded":
            return str(item["spec"]["image"])
    return image


def _generated(ctx: ApiContext, plural: str, namespace: str, kind: str, base: str,
               caller: Caller, original: str, spec: dict[str, Any]) -> str:
    body = new_object(kind, "", original, caller, spec)
    del body["metadata"]["name"]
    body["metadata"]["generateName"] = f"{base[:40]}-"
    return str(ctx.kube.create(plural, namespace, body)["metadata"]["name"])


def commit(ctx: ApiContext, caller: Caller, name: str, body: dict[str, Any]) -> dict[str, Any]:
    wanted, namespace = body["newImageName"], caller.namespace
    obj_name = object_name(name)
    if not wanted or ctx.find(PLURAL, namespace, obj_name) is None:
        raise RefusalError(Code.COMMIT_FAILED, "NotFound" if wanted else "Invalid", name)
    prefix = repository_prefix(ctx.settings.commit_repository_template, namespace)
    image = wanted if wanted.startswith(prefix) else prefix + wanted
    if ":" not in image.rsplit("/", 1)[-1]:
        image += ":latest"
    try:
        request = _generated(ctx, image_commit.PLURAL, namespace, image_commit.KIND,
                             f"{obj_name}-commit", caller, wanted,
                             {"replicaSetName": obj_name, "image": image})
    except GpudockError as exc:
        raise RefusalError(Code.COMMIT_FAILED, str(Reason.INVALID_SPEC), str(exc)) from exc
    except Exception as exc:  # the schema refused the name
        raise RefusalError(Code.COMMIT_FAILED, str(Reason.INVALID_SPEC), str(exc)) from exc
    outcome, _ = wait_for(ctx.kube, image_commit.PLURAL, namespace, request,
                          request_finished(("Succeeded",)), ctx.wait_seconds)
    if outcome != DONE:
        raise RefusalError(Code.COMMIT_FAILED, outcome, request)
    return {"imageName": wanted}


def execute(ctx: ApiContext, caller: Caller, name: str,
            body: dict[str, Any]) -> dict[str, Any]:
    namespace, obj_name = caller.namespace, object_name(name)
    failure = Code.CONTAINER_EXECUTE_FAILED
    if not body["cmd"]:
        raise RefusalError(failure, "Invalid", "cmd is empty")
    if ctx.find(PLURAL, namespace, obj_name) is None:
        raise RefusalError(failure, "NotFound", name)
    spec = {"replicaSetName": obj_name, "command": body["cmd"],
            "workingDir": body["workDir"] or "/",
            "timeoutSeconds": min(EXEC_TIMEOUT_SECONDS, max(1, int(ctx.wait_seconds))),
            "ttlSecondsAfterFinished": 60}
    try:
        request = _generated(ctx, exec_request.PLURAL, namespace, exec_request.KIND,
                             f"{obj_name}-exec", caller, name, spec)
    except Exception as exc:
        raise RefusalError(failure, str(Reason.INVALID_SPEC), str(exc)) from exc
    outcome, obj = wait_for(ctx.kube, exec_request.PLURAL, namespace, request,
                            request_finished(("Completed",)), ctx.wait_seconds + 5)
    with contextlib.suppress(Exception):
        ctx.kube.delete(exec_request.PLURAL, namespace, request)
    if outcome != DONE or obj is None:
        raise RefusalError(failure, outcome, request)
    status = obj.get("status") or {}
    return {"stdout": f"{status.get('stdout') or ''}{status.get('stderr') or ''}"}
