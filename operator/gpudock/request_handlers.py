"""kopf registration of the one-shot request kinds (ExecRequest, ImageCommit): wires
events to exec_requests.py and image_commits.py. No decisions are made here.

Requests are followed with kopf's event handler, not its create handler: every
agent sees every request, and kopf's record of what it handled is one annotation
shared by all agents, so the first agent to look would mark a request handled for
the one that holds its GpuReplicaSet. The event handler keeps no record (and adds no
finalizer); which requests this agent runs or is running is kept in memory, and a
request it was running when it restarted is failed as such.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import kopf

from gpudock import exec_requests, image_commits
from gpudock.adapters.kube_api import KubeUnavailableError, ObjectNotFoundError
from gpudock.api import GROUP, VERSION, exec_request, image_commit
from gpudock.errors import GpudockError


@dataclass(frozen=True)
class RequestKind:
    plural: str
    finished: tuple[str, ...]
    run: Callable[..., dict[str, Any]]
    expires: bool  # deleted ttlSecondsAfterFinished after it finished
    # What a run cut short by an agent restart may have left on the node.
    tidy: Callable[..., None] | None = None


EXEC = RequestKind(exec_request.PLURAL, exec_requests.FINISHED, exec_requests.run, True)
COMMIT = RequestKind(image_commit.PLURAL, ("Succeeded", "Failed"), image_commits.run, False,
                     image_commits.forget_scratch)


@kopf.on.startup()
def request_memory(memo: Any, **_: Any) -> None:
    memo.requests_running = set()  # uids this agent runs now
    memo.requests_done = set()  # uids this agent ran (their older events may follow)
    memo.requests_expiring = {}  # uid -> the task that deletes it after its TTL


@kopf.on.event(GROUP, VERSION, exec_request.PLURAL)
async def exec_request_seen(body: kopf.Body, memo: Any, type: str | None,
                            logger: logging.Logger | logging.LoggerAdapter[Any],
                            **_: Any) -> None:
    await _seen(EXEC, body, memo, type, logger)


@kopf.on.event(GROUP, VERSION, image_commit.PLURAL)
async def image_commit_seen(body: kopf.Body, memo: Any, type: str | None,
                            logger: logging.Logger | logging.LoggerAdapter[Any],
                            **_: Any) -> None:
    if type == "DELETED" and (body.get("status") or {}).get("node") == \
            memo.settings.node_name:
        try:
            await asyncio.to_thread(image_commits.remove_on_delete, dict(body), memo.docker)
        except GpudockError as exc:
            logger.warning("image of a deleted ImageCommit not removed: %s", exc)
    await _seen(COMMIT, body, memo, type, logger)


async def _seen(kind: RequestKind, body: kopf.Body, memo: Any, type: str | None,
                logger: logging.Logger | logging.LoggerAdapter[Any]) -> None:
    meta, status = body["metadata"], body.get("status") or {}
    uid, node = meta["uid"], memo.settings.node_name
    if type == "DELETED":
        memo.requests_done.discard(uid)
        memo.requests_expiring.pop(uid, None)
        return
    if meta.get("deletionTimestamp") or uid in memo.requests_running:
        return
    if status.get("phase") in kind.finished:
        if kind.expires and status.get("node") == node and \
                uid not in memo.requests_expiring:
            memo.requests_expiring[uid] = asyncio.create_task(
                _expire(memo, kind, dict(body)))
        return
    if uid in memo.requests_done:
        return  # an event from before this agent's own final status
    if status.get("phase") == "Running":
        if status.get("node") == node:  # this agent ran it and was restarted meanwhile
            if kind.tidy is not None:
                try:
                    await asyncio.to_thread(kind.tidy, dict(body), memo.docker)
                except GpudockError as exc:
                    logger.warning("%s: leftovers not removed: %s", kind.plural, exc)
            await _write(memo, kind, body, exec_requests.failed(
                "AgentRestarted", "the agent restarted while it ran; whether it "
                "finished is not known (run it again if it is safe to)",
                memo.replica_sets.now(), node, status.get("startTime")), logger)
        return
    memo.requests_running.add(uid)
    try:
        if await _run(memo, kind, body, logger):
            memo.requests_done.add(uid)
    finally:
        memo.requests_running.discard(uid)


async def _run(memo: Any, kind: RequestKind, body: kopf.Body,
               logger: logging.Logger | logging.LoggerAdapter[Any]) -> bool:
    """True when this agent wrote the request's final status."""
    node, now = memo.settings.node_name, memo.replica_sets.now
    try:
        target = await asyncio.to_thread(exec_requests.target_of, body, memo.kube)
        if target is None:
            name = (body.get("spec") or {}).get("replicaSetName")
            await _write(memo, kind, body, exec_requests.failed(
                "ReplicaSetNotFound", f"GpuReplicaSet {name} does not exist in namespace "
                f"{body['metadata']['namespace']}", now(), node), logger)
            return True
        if not exec_requests.handled_here(target, node):
            return False  # the agent of its node runs it

        def started(status: dict[str, Any]) -> None:
            memo.kube.patch_status(kind.plural, body["metadata"]["namespace"],
                                   body["metadata"]["name"], status)

        final = await asyncio.to_thread(kind.run, dict(body), target, memo.settings,
                                        memo.docker, now, started)
    except GpudockError as exc:
        logger.warning("%s not run, will retry on its next event: %s", kind.plural, exc)
        return False
    await _write(memo, kind, body, final, logger)
    return True


async def _write(memo: Any, kind: RequestKind, body: kopf.Body, status: dict[str, Any],
                 logger: logging.Logger | logging.LoggerAdapter[Any]) -> None:
    try:
        await asyncio.to_thread(memo.kube.patch_status, kind.plural,
                                body["metadata"]["namespace"], body["metadata"]["name"],
                                status)
    except ObjectNotFoundError:
        return
    except KubeUnavailableError as exc:
        logger.warning("%s status not written: %s", kind.plural, exc)
        return
    reason = status.get("reason") or status.get("phase")
    kopf.event(body, type="Warning" if status.get("phase") == "Failed" else "Normal",
               reason=str(reason), message=str(status["conditions"][0]["message"]))


async def _expire(memo: Any, kind: RequestKind, body: dict[str, Any]) -> None:
    """Delete a finished request once its ttlSecondsAfterFinished has passed."""
    meta = body["metadata"]
    try:
        wait = exec_requests.expires_in(body, memo.replica_sets.now())
        if wait is None:
            return
        await asyncio.sleep(max(wait, 0))
        await asyncio.to_thread(memo.kube.delete, kind.plural, meta["namespace"],
                                meta["name"])
    except GpudockError:
        memo.requests_expiring.pop(meta["uid"], None)  # tried again on its next event
