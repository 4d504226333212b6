"""kopf registration of the one-shot request kinds (ExecRequest, ImageCommit): wires
events to exec_runner.py and image_committer.py. No decisions are made here.

Requests are followed with kopf's event handler, not its create handler: every
agent sees every request, and kopf's record of what it handled is one annotation
shared by all agents, so the first agent to look would mark a request handled for
the one that holds its GpuReplicaSet. The event handler keeps no record; which
requests this agent runs or is running is kept in memory, and a
request it was running when it restarted is failed as such, after what it started is
killed (an ExecRequest's processes, an ImageCommit's scratch image). An ImageCommit's
run puts this node's commit finalizer on it, so its delete waits for this agent to remove
what it made (deletionPolicy Delete), even across an agent restart.

A request runs in a task of its own, on the request pool, once it has a slot
(request_slots.py): until then it is Pending with the reason, holding no thread, and
a delete drops it.
"""

from __future__ import annotations

import asyncio
import functools
import logging
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import kopf

from gpudock.adapters.kube_api import KubeUnavailableError, ObjectNotFoundError
from gpudock.agent import exec_runner, image_committer, wiring
from gpudock.agent.request_slots import Claim
from gpudock.agent.wiring import NodeAgent
from gpudock.api import GROUP, VERSION, exec_request, image_commit
from gpudock.api.reasons import Reason
from gpudock.core.kstatus import with_kstatus
from gpudock.errors import GpudockError, UserError


@dataclass(frozen=True)
class RequestKind:
    plural: str
    finished: tuple[str, ...]
    run: Callable[..., dict[str, Any]]
    expires: bool  # deleted ttlSecondsAfterFinished after it finished
    # What a run cut short by an agent restart may have left on the node (body,
    # settings, docker).
    tidy: Callable[..., None]
    capped: bool  # counted by --max-running-execs-per-namespace
    reads_cluster: bool = False  # run is given the API server (kube=)
    # Its run puts this node's commit finalizer on it; a delete lets go of what it made
    # (image_committer.release), then of the finalizer.
    releases: bool = False


EXEC = RequestKind(exec_request.PLURAL, exec_runner.FINISHED, exec_runner.run, True,
                   exec_runner.kill_leftovers, True)
COMMIT = RequestKind(image_commit.PLURAL, ("Succeeded", "Failed"), image_committer.run, False,
                     image_committer.forget_scratch, False, reads_cluster=True,
                     releases=True)
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
        if uid in agent.requests.waiting:  # no slot yet: nothing runs, nothing will
            agent.requests.running[uid].cancel()
        return
    if meta.get("deletionTimestamp"):
        if kind.releases and uid not in agent.requests.running:
            await _release(agent, dict(body), logger)
        return
    # Before the check of what runs: the event of this agent's own final status write
    # can come while the task that wrote it is still finishing.
    if status.get("phase") in kind.finished:
        if kind.expires and status.get("node") == node and \
                uid not in agent.requests.expiring:
            agent.requests.expiring[uid] = asyncio.create_task(
                _expire(agent, kind, dict(body)))
        return
    if uid in agent.requests.running:
        return
    if uid in agent.requests.done:
        return  # an event from before this agent's own final status
    if status.get("phase") == "Running":
        if status.get("node") == node:  # this agent ran it and was restarted meanwhile
            try:
                await asyncio.to_thread(kind.tidy, dict(body), agent.settings, agent.docker)
            except GpudockError as exc:
                logger.warning("%s: leftovers not removed: %s", kind.plural, exc)
            await _write(agent, kind, body, exec_runner.failed(
                Reason.AGENT_RESTARTED, "the agent restarted while it ran; what it started "
                "was killed, whether it finished is not known (run it again if it is "
                "safe to)", agent.now(), node, status.get("startTime")), logger)
        return
    agent.requests.running[uid] = asyncio.create_task(_handle(agent, kind, body, logger))


async def _handle(agent: NodeAgent, kind: RequestKind, body: kopf.Body, logger: Logger,
                  ) -> None:
    uid = body["metadata"]["uid"]
    try:
        if await _run(agent, kind, body, logger):
            agent.requests.done.add(uid)
    except asyncio.CancelledError:
        logger.info("%s dropped: deleted while it waited for a slot, or the agent "
                    "stops", kind.plural)
    except Exception:  # a bug: logged, and the request tried again on its next event
        logger.exception("%s not run", kind.plural)
    finally:
        agent.requests.running.pop(uid, None)
        agent.requests.waiting.discard(uid)
    if kind.releases:  # a delete that came while it ran waited for it to end
        try:
            fresh = await asyncio.to_thread(agent.kube.get, kind.plural,
                                            body["metadata"]["namespace"],
                                            body["metadata"]["name"])
        except ObjectNotFoundError:
            return
        except GpudockError as exc:
            logger.warning("%s not looked at after its run: %s", kind.plural, exc)
            return
        if (fresh.get("metadata") or {}).get("deletionTimestamp"):
            await _release(agent, fresh, logger)


async def _release(agent: NodeAgent, body: dict[str, Any], logger: Logger) -> None:
    """A deleted ImageCommit holding this node's finalizer (image_committer.release)."""
    if not image_committer.holds_for_delete(body, agent.settings.node_name):
        return
    try:
        await asyncio.to_thread(image_committer.release, body, agent.settings,
                                agent.docker, agent.kube)
    except ObjectNotFoundError:
        return
    except GpudockError as exc:  # tried again on its next event
        logger.warning("deleted ImageCommit not let go of: %s", exc)


async def _target(agent: NodeAgent, kind: RequestKind, body: kopf.Body, logger: Logger,
                  ) -> tuple[dict[str, Any] | None, bool]:
    """The request's GpuReplicaSet when this agent runs it, and whether this agent
    wrote the request's final status (it does when the GpuReplicaSet is gone)."""
    try:
        target = await asyncio.to_thread(exec_runner.target_of, body, agent.kube)
    except UserError as exc:  # no valid name: every agent fails it, writing the same
        await _write(agent, kind, body, exec_runner.failed(
            exc.reason, exc.message, agent.now(), agent.settings.node_name), logger)
        return None, True
    if target is None:
        name = (body.get("spec") or {}).get("replicaSetName")
        await _write(agent, kind, body, exec_runner.failed(
            Reason.REPLICA_SET_NOT_FOUND, f"GpuReplicaSet {name} does not exist in namespace "
            f"{body['metadata']['namespace']}", agent.now(), agent.settings.node_name),
            logger)
        return None, True
    if not exec_runner.handled_here(target, agent.settings.node_name):
        return None, False  # the agent of its node runs it
    return target, False


async def _run(agent: NodeAgent, kind: RequestKind, body: kopf.Body, logger: Logger,
               ) -> bool:
    """True when this agent wrote the request's final status."""
    meta, node, now = body["metadata"], agent.settings.node_name, agent.now
    slots, claim = agent.request_slots, Claim(meta["namespace"], kind.capped)
    try:
        target, written = await _target(agent, kind, body, logger)
        if target is None:
            return written
        wait = slots.try_take(claim)
        if wait is not None:
            agent.requests.waiting.add(meta["uid"])  # from now on a delete drops it
            try:
                await _write(agent, kind, body, exec_runner.pending(
                    wait.reason, wait.message, now(), node), logger)
                await slots.take(claim)
            finally:
                agent.requests.waiting.discard(meta["uid"])
    except GpudockError as exc:
        logger.warning("%s not run, will retry on its next event: %s", kind.plural, exc)
        return False
    begun: list[str] = []  # the start time, once its status says Running
    try:
        if wait is not None:  # it waited: its GpuReplicaSet may have changed meanwhile
            target, written = await _target(agent, kind, body, logger)
            if target is None:
                return written

        def started(status: dict[str, Any]) -> None:
            agent.kube.patch_status(kind.plural, meta["namespace"], meta["name"],
                                    _observed(body, status))
            begun.append(str(status.get("startTime") or now()))

        extra: dict[str, Any] = {"kube": agent.kube,
                                 "holds": agent.replica_sets.commit_holds} \
            if kind.reads_cluster else {}
        final = await asyncio.get_running_loop().run_in_executor(
            agent.request_pool, functools.partial(
                kind.run, dict(body), target, agent.settings, agent.docker, now, started,
                **extra))
    except GpudockError as exc:
        if not begun:
            logger.warning("%s not run, will retry on its next event: %s", kind.plural, exc)
            return False
        # It ran (its status says Running): it failed, with what failed, never left
        # for the next event to call an agent restart.
        final = exec_runner.failed(
            getattr(exc, "reason", Reason.RETRYING), f"failed while it ran: {exc}", now(),
            node, begun[0])
    finally:
        slots.give_back(claim)
    await _write(agent, kind, body, final, logger)
    return True


def _observed(body: kopf.Body, status: dict[str, Any]) -> dict[str, Any]:
    """The status with the generation it answers and kstatus' conditions."""
    return with_kstatus({**status, "observedGeneration": body["metadata"].get("generation")})


async def _write(agent: NodeAgent, kind: RequestKind, body: kopf.Body,
                 status: dict[str, Any], logger: Logger) -> None:
    try:
        await asyncio.to_thread(agent.kube.patch_status, kind.plural,
                                body["metadata"]["namespace"], body["metadata"]["name"],
                                _observed(body, status))
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
