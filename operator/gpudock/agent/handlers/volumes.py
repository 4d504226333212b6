"""kopf registration for SizedVolumes: a daemon per volume of this node reconciles it
level-based (at start, on a spec change, every --resync-seconds to refresh the used
bytes and re-attach what a restart detached); deletion waits while a container uses
it. No decisions are made here (volume_reconciler.py, core/volumes.py)."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from typing import Any

import kopf

from gpudock.adapters.kube_api import KubeUnavailableError
from gpudock.agent import wiring
from gpudock.agent.wiring import NodeAgent
from gpudock.api import GROUP, VERSION, gpu_replica_set, ownership, sized_volume
from gpudock.api.placement import bound_node
from gpudock.api.reasons import Reason
from gpudock.core.observed import ObservedContainer, ResourceKey
from gpudock.core.replica_set.status import waiting_on
from gpudock.core.volumes import unusable
from gpudock.errors import TransientError, UserError

SVOL = sized_volume.PLURAL
IN_USE_RETRY_SECONDS = 5
# A Ready volume is looked at this often (USED after a write, the containers that
# mount it), at most --resync-seconds; written only when it changed. The copy
# backend, whose USED walks the whole tree, keeps the resync.
USED_REFRESH_SECONDS = 5.0
Logger = logging.Logger | logging.LoggerAdapter[Any]


def _on_this_node(body: kopf.Body, meta: kopf.Meta, memo: kopf.Memo, **_: Any) -> bool:
    """As for GpuReplicaSets: held by this node's finalizer, or pinned or bound here."""
    return ownership.handled_here(bound_node(body), meta.get("finalizers") or (),
                                  wiring.settings_of(memo).node_name)


def _write(agent: NodeAgent, body: kopf.Body, status: dict[str, Any],
           logger: Logger) -> None:
    """Patch the volume's status; a status equal to the one the body shows is not
    written again (the body may lag by a write: then it is written once more). Not
    while a migration moves it away (the target's agent writes it then)."""
    meta = body["metadata"]
    if ownership.moved_away(body, agent.settings.node_name):
        return
    agent.volumes.while_served(ResourceKey(meta["namespace"], meta["name"]), meta["uid"],
                               lambda: _patch(agent, body, status, logger))


def _served_here(agent: NodeAgent, body: kopf.Body) -> bool:
    """Not moved away by a migration (the binding names another node: after an agent
    restart too), nor being moved now."""
    meta = body["metadata"]
    return not ownership.moved_away(body, agent.settings.node_name) and \
        agent.volumes.served_here(ResourceKey(meta["namespace"], meta["name"]), meta["uid"])


def _patch(agent: NodeAgent, body: kopf.Body, status: dict[str, Any],
           logger: Logger) -> None:
    try:
        agent.volume_status.write(body["metadata"]["namespace"], body["metadata"]["name"],
                                  agent.volume_status.bound(status, body.get("status") or {}),
                                  {})
    except KubeUnavailableError as exc:
        logger.warning("volume status not written: %s", exc)


def _progress(agent: NodeAgent, body: kopf.Body, status: dict[str, Any],
               logger: Logger) -> None:
    """A status written during a reconcile (which holds the volume's lock already)."""
    if _served_here(agent, body):
        _patch(agent, body, status, logger)


def _replica_set_of(container: ObservedContainer) -> kopf.Body:
    """What kopf needs to post an Event on the GpuReplicaSet a container is of."""
    owner = container.owner
    assert owner is not None
    return kopf.Body({"apiVersion": f"{GROUP}/{VERSION}", "kind": gpu_replica_set.KIND,
                      "metadata": {"namespace": owner.namespace, "name": owner.name,
                                   "uid": container.uid}})


@kopf.daemon(GROUP, VERSION, SVOL, when=_on_this_node, cancellation_timeout=600)
async def run_sized_volume(body: kopf.Body, stopped: kopf.DaemonStopped, memo: kopf.Memo,
                           logger: Logger, **_: Any) -> None:
    agent = wiring.of(memo)
    uid = body["metadata"]["uid"]
    wakeup = agent.wakeups.event(uid)
    first = True  # after a restart it may have been attached again: wake its users
    try:
        while not stopped:
            wakeup.clear()
            delay = agent.settings.resync_seconds
            if body["metadata"].get("deletionTimestamp"):
                return
            before = (body.get("status") or {}).get("phase")
            status: dict[str, Any] = {}
            if not _served_here(agent, body):  # a migration moves it: wait
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(wakeup.wait(), timeout=delay)
                continue
            try:
                status = await asyncio.to_thread(
                    agent.volumes.reconcile, dict(body),
                    lambda now: _progress(agent, body, now, logger),
                    lambda kind, reason, message: kopf.event(
                        body, type=kind, reason=reason, message=message),
                    lambda user, kind, reason, message: kopf.event(
                        _replica_set_of(user), type=kind, reason=reason, message=message))
                await asyncio.to_thread(_write, agent, body, status, logger)
                if status.get("phase") == "Ready" and (before != "Ready" or first):
                    agent.wakeups.wake_all()  # instances that mount it may start or move
                first = False
            except TransientError as exc:
                logger.warning("volume: will retry in %.0fs: %s", exc.delay, exc)
                delay = min(delay, exc.delay)
                await asyncio.to_thread(_write, agent, body, waiting_on(
                    body.get("status") or {}, exc.reason, str(exc),
                    agent.now()), logger)
            except UserError as exc:  # e.g. its backend's root is not mounted any more
                logger.warning("volume: %s", exc)
                await asyncio.to_thread(_write, agent, body, unusable(
                    body.get("status") or {}, exc.reason, exc.message,
                    agent.now()), logger)
            if status.get("phase") == "Ready" and status.get("backend") != "copy":
                delay = min(delay, USED_REFRESH_SECONDS)  # USED and users follow
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(wakeup.wait(), timeout=delay)
    finally:
        agent.wakeups.forget(uid)


@kopf.on.update(GROUP, VERSION, SVOL, when=_on_this_node)
def wake_volume(body: kopf.Body, memo: kopf.Memo, **_: Any) -> None:
    wiring.of(memo).wakeups.wake(body["metadata"]["uid"])


@kopf.on.delete(GROUP, VERSION, SVOL, when=_on_this_node)
async def delete_sized_volume(body: kopf.Body, memo: kopf.Memo, logger: Logger,
                              **_: Any) -> None:
    agent = wiring.of(memo)
    try:
        users = await asyncio.to_thread(agent.volumes.delete, dict(body))
    except TransientError as exc:
        raise kopf.TemporaryError(str(exc), delay=exc.delay) from exc
    if users:
        message = (f"in use by container(s) {', '.join(users)}: delete or change the "
                   "GpuReplicaSets that mount it first")
        await asyncio.to_thread(_write, agent, body, {
            "phase": "Deleting", "reason": Reason.VOLUME_IN_USE, "conditions": [
                {"type": "Ready", "status": "False", "reason": Reason.VOLUME_IN_USE,
                 "message": message},
                {"type": "Progressing", "status": "True", "reason": Reason.VOLUME_IN_USE,
                 "message": message},
                {"type": "Degraded", "status": "False", "reason": Reason.AS_EXPECTED,
                 "message": "nothing to report"}]}, logger)
        raise kopf.TemporaryError(message, delay=IN_USE_RETRY_SECONDS)
