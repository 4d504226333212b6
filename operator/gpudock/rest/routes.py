"""The 19 endpoints of gpu-docker-api v0.0.3: path, body, the Kubernetes action a
caller must be allowed, the code of any failure, and the operation."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from gpudock.rest import (
    replica_set_changes,
    replica_set_reads,
    replica_set_requests,
    resources,
    volumes,
)
from gpudock.rest.codes import Code
from gpudock.rest.decoding import INT, STRING, STRINGS, Kind, pointer, struct

Operation = Callable[..., Any]  # (ctx, caller, name, body, query) -> data

BIND = struct(src=STRING, dest=STRING)
RUN = struct(imageName=STRING, replicaSetName=STRING, gpuCount=INT,
             binds=Kind("list", item=BIND), env=STRINGS, cmd=STRINGS, containerPorts=STRINGS)
COMMIT = struct(newImageName=STRING)
EXECUTE = struct(workDir=STRING, cmd=STRINGS)
PATCH = struct(gpuPatch=pointer(gpuCount=INT),
               volumePatch=pointer(oldBind=pointer(src=STRING, dest=STRING),
                                   newBind=pointer(src=STRING, dest=STRING)))
ROLLBACK = struct(version=INT)
VOLUME = struct(name=STRING, size=STRING)
SIZE = struct(size=STRING)


@dataclass(frozen=True)
class Route:
    method: str
    path: str
    operation: Operation
    verb: str
    resource: str
    failure: Code
    summary: str
    body: Kind | None = None

    @property
    def operation_id(self) -> str:
        return f"{self.method.lower()}{self.path.replace('/', '_').replace('{name}', 'name')}"

    def openapi_extra(self) -> dict[str, Any]:
        extra: dict[str, Any] = {"responses": {"200": {"description": "the envelope "
                                                       "{code, msg, data}"}}}
        if "{name}" in self.path:
            extra["parameters"] = [{"name": "name", "in": "path", "required": True,
                                    "schema": {"type": "string"},
                                    "description": "the base name (foo, not foo-2)"}]
        if self.body is not None:
            extra["requestBody"] = {"required": True, "content": {
                "application/json": {"schema": self.body.schema()}}}
        return extra


def _named(function: Callable[..., Any]) -> Operation:
    return lambda ctx, caller, name, body, query: function(ctx, caller, name)


def _with_body(function: Callable[..., Any]) -> Operation:
    return lambda ctx, caller, name, body, query: function(ctx, caller, name, body)


def _created(function: Callable[..., Any]) -> Operation:
    return lambda ctx, caller, name, body, query: function(ctx, caller, body, query)


def _queried(function: Callable[..., Any]) -> Operation:
    return lambda ctx, caller, name, body, query: function(ctx, caller, query)


RS, GRS, SVOL = "/api/v1/replicaSet", "gpureplicasets", "sizedvolumes"
ROUTES: tuple[Route, ...] = (
    Route("POST", RS, _created(replica_set_changes.create), "create", GRS,
          Code.CONTAINER_RUN_FAILED, "run a container (a GpuReplicaSet)", RUN),
    Route("POST", RS + "/{name}/commit", _with_body(replica_set_requests.commit), "create",
          "imagecommits", Code.COMMIT_FAILED, "commit the container as an image", COMMIT),
    Route("POST", RS + "/{name}/execute", _with_body(replica_set_requests.execute), "create",
          "execrequests", Code.CONTAINER_EXECUTE_FAILED, "run a command in it", EXECUTE),
    Route("PATCH", RS + "/{name}", _with_body(replica_set_changes.patch), "patch", GRS,
          Code.CONTAINER_PATCH_FAILED, "change GPUs or a bind; {} makes a new version", PATCH),
    Route("PATCH", RS + "/{name}/rollback", _with_body(replica_set_changes.rollback), "patch",
          GRS, Code.ROLLBACK_FAILED, "roll back to a version", ROLLBACK),
    Route("PATCH", RS + "/{name}/stop", _named(replica_set_changes.set_state(
        "Stopped", Code.CONTAINER_STOP_FAILED, False)), "patch", GRS,
        Code.CONTAINER_STOP_FAILED, "stop, releasing GPUs and ports (the disk kept)"),
    Route("PATCH", RS + "/{name}/restart", _named(replica_set_changes.set_state(
        "Running", Code.CONTAINER_RESTART_FAILED, True)), "patch", GRS,
        Code.CONTAINER_RESTART_FAILED, "run again as a new version"),
    Route("PATCH", RS + "/{name}/pause", _named(replica_set_changes.set_state(
        "Paused", Code.CONTAINER_SHUT_DOWN_FAILED, False)), "patch", GRS,
        Code.CONTAINER_SHUT_DOWN_FAILED, "stop, keeping GPUs and ports"),
    Route("PATCH", RS + "/{name}/continue", _named(replica_set_changes.set_state(
        "Running", Code.CONTAINER_RESTART_FAILED, False)), "patch", GRS,
        Code.CONTAINER_RESTART_FAILED, "run again, same version"),
    Route("GET", RS + "/{name}", _named(replica_set_reads.info), "get", GRS,
          Code.CONTAINER_INFO_FAILED, "the current version"),
    Route("GET", RS + "/{name}/history", _named(replica_set_reads.history), "get", GRS,
          Code.CONTAINER_HISTORY_FAILED, "every version, newest first"),
    Route("DELETE", RS + "/{name}", _named(replica_set_changes.delete), "delete", GRS,
          Code.CONTAINER_DELETE_FAILED, "delete it and its history"),
    Route("POST", "/api/v1/volumes", _created(volumes.create), "create", SVOL,
          Code.VOLUME_CREATE_FAILED, "create a volume (a SizedVolume)", VOLUME),
    Route("PATCH", "/api/v1/volumes/{name}/size", _with_body(volumes.resize), "patch", SVOL,
          Code.VOLUME_PATCH_FAILED, "resize it, data kept", SIZE),
    Route("DELETE", "/api/v1/volumes/{name}", _named(volumes.delete), "delete", SVOL,
          Code.VOLUME_DELETE_FAILED, "delete it"),
    Route("GET", "/api/v1/volumes/{name}", _named(volumes.info), "get", SVOL,
          Code.VOLUME_INFO_FAILED, "the current version"),
    Route("GET", "/api/v1/volumes/{name}/history", _named(volumes.history), "get", SVOL,
          Code.VOLUME_HISTORY_FAILED, "every version, newest first"),
    Route("GET", "/api/v1/resources/gpus", _queried(resources.gpus), "get", "gpunodes",
          Code.SERVE_BUSY, "GPUs of the node: 0 free, 1 held"),
    Route("GET", "/api/v1/resources/ports", _queried(resources.ports), "get", "gpunodes",
          Code.SERVE_BUSY, "host ports of the node"),
)
