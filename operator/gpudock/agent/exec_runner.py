"""Runs ExecRequests: a command in a GpuReplicaSet's running container, its exit code
and output kept in the request's status.

The agent that holds the GpuReplicaSet runs it (api/ownership.py); a request whose
GpuReplicaSet does not exist is failed by any agent (they write the same). Finished
requests are deleted ttlSecondsAfterFinished after completion, by the agent that ran
them. The command carries the request's UID in its environment, so that everything it
started can be found and killed: at its deadline, and by an agent that restarted
while it ran (:func:`kill_leftovers`).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

from gpudock import metrics
from gpudock.adapters.container_exec import kill_marked, run_in_container
from gpudock.adapters.docker.runtime import DockerRuntime
from gpudock.adapters.kube_api import KubeApi, ObjectNotFoundError
from gpudock.api import exec_request, gpu_replica_set, ownership
from gpudock.api.exec_request import OUTPUT_LIMIT, ExecRequestSpec
from gpudock.api.parsing import get_object_name
from gpudock.api.placement import bound_node
from gpudock.api.reasons import Reason
from gpudock.core.observed import ObservedContainer, ResourceKey, current_of
from gpudock.core.times import seconds_between
from gpudock.errors import SpecError, UserError
from gpudock.settings import Settings

FINISHED = ("Completed", "Failed")
Status = dict[str, Any]


def _conditions(ready: bool, reason: Reason, message: str,
                now: str) -> list[dict[str, Any]]:
    return [{"type": "Complete", "status": "True" if ready else "False", "reason": reason,
             "message": message, "lastTransitionTime": now}]


def failed(reason: Reason, message: str, now: str, node: str,
           started: str | None = None) -> Status:
    return {"phase": "Failed", "reason": reason, "node": node, "startTime": started or now,
            "completionTime": now, "conditions": _conditions(False, reason, message, now)}


def pending(reason: Reason, message: str, now: str, node: str) -> Status:
    """Waiting on this node for a slot to run in (request_slots.py)."""
    return {"phase": "Pending", "reason": reason, "node": node,
            "conditions": _conditions(False, reason, message, now)}


def target_of(body: Mapping[str, Any], kube: KubeApi) -> dict[str, Any] | None:
    """The GpuReplicaSet a request names, or None when there is none; SpecError when
    ``replicaSetName`` is no object name (``a/b`` would be a path to something else
    on the API server: it is never looked up)."""
    meta = body["metadata"]
    name = get_object_name(body.get("spec") or {}, "replicaSetName", "spec")
    try:
        return kube.get(gpu_replica_set.PLURAL, meta["namespace"], name)
    except ObjectNotFoundError:
        return None


def handled_here(target: Mapping[str, Any], node: str) -> bool:
    meta = target.get("metadata") or {}
    return ownership.handled_here(bound_node(target), meta.get("finalizers") or (), node)


def current_container(docker: DockerRuntime, target: Mapping[str, Any],
                      ) -> ObservedContainer | None:
    meta = target["metadata"]
    return current_of(tuple(docker.list_containers()),
                      ResourceKey(meta["namespace"], meta["name"]), meta["uid"])


def run(body: Mapping[str, Any], target: Mapping[str, Any], settings: Settings,
        docker: DockerRuntime, now: Callable[[], str],
        started: Callable[[Status], None]) -> Status:
    """Run the request against its (existing, local) target; the final status.
    ``started`` is shown the Running status before the command starts."""
    node = settings.node_name
    try:
        spec = ExecRequestSpec.parse(body.get("spec") or {})
    except SpecError as exc:
        return failed(exc.reason, exc.message, now(), node)
    state = (target.get("spec") or {}).get("state", "Running")
    if state != "Running":
        return failed(Reason.REPLICA_SET_NOT_RUNNING, f"GpuReplicaSet {spec.replica_set_name} is "
                      f"{state}: nothing runs to execute in", now(), node)
    container = current_container(docker, target)
    if container is None or container.status != "running":
        how = container.status if container else "missing"
        return failed(Reason.CONTAINER_NOT_RUNNING, f"the container of GpuReplicaSet "
                      f"{spec.replica_set_name} is {how}", now(), node)
    begun = now()
    started({"phase": "Running", "reason": None, "node": node, "startTime": begun,
             "containerName": container.name,
             "conditions": _conditions(False, Reason.RUNNING, f"running in {container.name}",
                                       begun)})
    try:
        with metrics.timed(metrics.EXEC_SECONDS):
            result = run_in_container(
                settings.docker_host, container.id, spec.command,
                working_dir=spec.working_dir, env={e.name: e.value for e in spec.env},
                timeout=spec.timeout_seconds, limit=OUTPUT_LIMIT,
                mark=str(body["metadata"]["uid"]))
    except UserError as exc:
        return failed(exc.reason, exc.message, now(), node, begun)
    output = {"stdout": result.stdout.decode(errors="replace"),
              "stderr": result.stderr.decode(errors="replace"),
              "stdoutTruncated": result.stdout_cut, "stderrTruncated": result.stderr_cut}
    end = now()
    if result.timed_out:
        message = (f"the command ran past timeoutSeconds {spec.timeout_seconds} and was "
                   "killed with every process it started")
        return {**failed(Reason.DEADLINE_EXCEEDED, message, end, node, begun), **output,
                "exitCode": None}
    return {"phase": "Completed", "reason": None, "node": node, "startTime": begun,
            "completionTime": end, "exitCode": result.exit_code, **output,
            "conditions": _conditions(True, Reason.COMPLETED,
                                      f"the command exited with code {result.exit_code}",
                                      end)}


def kill_leftovers(body: Mapping[str, Any], settings: Settings,
                   docker: DockerRuntime) -> None:
    """A request found Running by a restarted agent: kill whatever its command started
    that still runs in its container (deadline or not: no agent waits for it now)."""
    del docker  # the kill goes through its own client, as the exec did
    container = (body.get("status") or {}).get("containerName")
    if container:
        kill_marked(settings.docker_host, str(container), str(body["metadata"]["uid"]))


def expires_in(body: Mapping[str, Any], now: str) -> float | None:
    """Seconds until a finished request is to be deleted (<= 0: now); None when it
    is not finished."""
    status = body.get("status") or {}
    if status.get("phase") not in FINISHED or not status.get("completionTime"):
        return None
    ttl = (body.get("spec") or {}).get("ttlSecondsAfterFinished",
                                       exec_request.DEFAULT_TTL_SECONDS)
    since = seconds_between(str(status["completionTime"]), now)
    if since is None or not isinstance(ttl, int):
        return None
    return ttl - since
