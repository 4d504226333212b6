"""kopf registration of the one-shot request kinds (ExecRequest, ImageCommit): wires
events to exec_runner.py and image_committer.py. No decisions are made here.

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

from gpudock.adapters.kube_api import KubeUnavailableError, ObjectNotFoundError
from gpudock.agent import exec_runner, image_committer, wiring
from gpudock.agent.wiring import NodeAgent
from gpudock.api import GROUP, VERSION, exec_request, image_commit
from gpudock.api.reasons import Reason
from gpudock.errors import GpudockError, UserError


@dataclass(frozen=True)
class RequestKind:
    plural: str
    finished: tuple[str, ...]
    run: Callable[..., dict[str, Any]]
    expires: bool  # deleted ttlSecondsAfterFinished after it finished
    # What a run cut short by an agent restart may have left on the node.
    tidy: Callable[..., None] | None = None


EXEC = RequestKind(exec_request.PLURAL, exec_runner.FINISHED, exec_runner.run, True)
COMMIT = RequestKind(image_commit.PLURAL, ("Succeeded", "Failed"), image_committer.run, False,
                     image_committer.forget_scratch)
Logger = logging.Logger | logging.LoggerAdapter[Any]


@kopf.on.event(GROUP, VERSION, exec_request.PLURAL)
async def exec_request_seen(body: kopf.Body, memo: kopf.Memo, type: str | None,
                            logger: Logger, **_: Any) -> None:
    await _seen(EXEC, body, wiring.of(memo), type, logger)


@kopf.on.event(GROUP, VERSION, image_commit.PLURAL)
async def image_commit_seen(body: kopf.Body, memo: kopf.Memo, type: str | None,
                            logger: Logger, **_: Any) -> None:
    agent = wiring.of(memo)
    if type == "DELETED" and (body.get("status") or {}).get("node") == \
            agent.settings.node_name:
        try:
            await asyncio.to_thread(image_committer.remove_on_delete, dict(body), agent.docker)
        except GpudockError as exc:
            logger.warning("image of a deleted ImageCommit not removed: %s", exc)
    await _seen(COMMIT, body, agent, type, logger)


async def _seen(kind: RequestKind, body: kopf.Body, agent: NodeAgent, type: str | None,
                logger: Logger) -> None:
    meta, status = body["metadata"], body.get("status") or {}
    uid, node = meta["uid"], agent.settings.node_name
    if type == "DELETED":
        agent.requests.done.discard(uid)
        agent.requests.expiring.pop(uid, None)
        return
    if meta.get("deletionTimestamp") or uid in agent.requests.running:
        return
    if status.get("phase") in kind.finished:
        if kind.expires and status.get("node") == node and \
                uid not in agent.requests.expiring:
            agent.requests.expiring[uid] = asyncio.create_task(
                _expire(agent, kind, dict(body)))
        return
    if uid in agent.requests.done:
        return  # an event from before this agent's own final status
    if status.get("phase") == "Running":
        if status.get("node") == node:  # this agent ran it and was restarted meanwhile
            if kind.tidy is not None:
                try:
                    await asyncio.to_thread(kind.tidy, dict(body), agent.docker)
                except GpudockError as exc:
                    logger.warning("%s: leftovers not removed: %s", kind.plural, exc)
            await _write(agent, kind, body, exec_runner.failed(
                Reason.AGENT_RESTARTED, "the agent restarted while it ran; whether it "
                "finished is not known (run it again if it is safe to)",
                agent.now(), node, status.get("startTime")), logger)
        return
    agent.requests.running.add(uid)
    try:
        if await _run(agent, kind, body, logger):
            agent.requests.done.add(uid)
    finally:
        agent.requests.running.discard(uid)


async def _run(agent: NodeAgent, kind: RequestKind, body: kopf.Body, logger: Logger,
               ) -> bool:
    """True when this agent wrote the request's final status."""
    node, now = agent.settings.node_name, agent.now
    try:
        try:
            target = await asyncio.to_thread(exec_runner.target_of, body, agent.kube)
        except UserError as exc:  # no name: every agent fails it, writing the same
            await _write(agent, kind, body, exec_runner.failed(exc.reason, exc.message,
                                                               now(), node), logger)
            return True
        if target is None:
            name = (body.get("spec") or {}).get("replicaSetName")
            await _write(agent, kind, body, exec_runner.failed(
                Reason.REPLICA_SET_NOT_FOUND, f"GpuReplicaSet {name} does not exist in namespace "
                f"{body['metadata']['namespace']}", now(), node), logger)
            return True
        if not exec_runner.handled_here(target, node):
            return False  # the agent of its node runs it

        def started(status: dict[str, Any]) -> None:
            agent.kube.patch_status(kind.plural, body["metadata"]["namespace"],
                                   body["metadata"]["name"], status)

        final = await asyncio.to_thread(kind.run, dict(body), target, agent.settings,
                                        agent.docker, now, started)
    except GpudockError as exc:
        logger.warning("%s not run, will retry on its next event: %s", kind.plural, exc)
        return False
    await _write(agent, kind, body, final, logger)
    return True


async def _write(agent: NodeAgent, kind: RequestKind, body: kopf.Body,
                 status: dict[str, Any], logger: Logger) -> None:
    try:
        await asyncio.to_thread(agent.kube.patch_status, kind.plural,
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


async def _expire(agent: NodeAgent, kind: RequestKind, body: dict[str, Any]) -> None:
    """Delete a finished request once its ttlSecondsAfterFinished has passed."""
    meta = body["metadata"]
    try:
        wait = exec_runner.expires_in(body, agent.now())
        if wait is None:
            return
        await asyncio.sleep(max(wait, 0))
        await asyncio.to_thread(agent.kube.delete, kind.plural, meta["namespace"],
                                meta["name"])
    except GpudockError:
        agent.requests.expiring.pop(meta["uid"], None)  # tried again on its next event
