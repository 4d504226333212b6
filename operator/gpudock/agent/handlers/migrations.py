"""kopf registration of GpuMigrations: the source node's agent runs each one
(migration_runner.py) in a thread and writes the status it shows. A migration is the
source's when its status names this node as the source, or, before it does, when this
node holds its GpuReplicaSet (its finalizer, the binding not moved away), or it is
bound here and held by no other node. Deleting it stops the daemon: before Switching
that cancels the migration (the runner sees it between frames and steps and starts
the source again); from Switching on it is finished first.
"""

from __future__ import annotations

import asyncio
import logging
import threading
from collections.abc import Mapping
from typing import Any

import kopf

from gpudock.adapters.kube_api import KubeUnavailableError, ObjectNotFoundError
from gpudock.agent import migration_targets, wiring
from gpudock.api import GROUP, VERSION, gpu_migration, gpu_replica_set, ownership
from gpudock.api.gpu_migration import Phase

Logger = logging.Logger | logging.LoggerAdapter[Any]
SLOT_RETRY_SECONDS = 5.0


def _replica_set_unknown(body: kopf.Body, memo: kopf.Memo, **_: Any) -> bool:
    """No status yet and no GpuReplicaSet of that name among those this agent follows:
    perhaps none exists, which a live read decides (fail_without_replica_set)."""
    if body.get("status"):
        return False
    found = _its_replica_set(body, memo)
    return found is not None and not found


def _its_replica_set(body: kopf.Body, memo: kopf.Memo,
                     ) -> list[tuple[str, Mapping[str, Any]]] | None:
    """The watched index entries (the node each is under, the entry) of the
    GpuMigration's GpuReplicaSet; None before the agent and its index are there."""
    agent = memo.get(wiring.MEMO_KEY)
    if not isinstance(agent, wiring.NodeAgent):
        return None
    index = agent.watched.get(gpu_replica_set.PLURAL)
    if index is None:
        return None
    namespace = body["metadata"]["namespace"]
    name = (body.get("spec") or {}).get("replicaSetName")
    return [(bound_to, entry) for bound_to, entries in index.items() for entry in entries
            if (entry.get("metadata") or {}).get("namespace") == namespace
            and (entry.get("metadata") or {}).get("name") == name]


@kopf.on.event(GROUP, VERSION, gpu_migration.PLURAL, when=_replica_set_unknown)
async def fail_without_replica_set(body: kopf.Body, memo: kopf.Memo, type: str | None,
                                   logger: Logger, **_: Any) -> None:
    """A GpuMigration of a GpuReplicaSet that does not exist: Failed, ReplicaSetNotFound
    (no node holds it, so no source would ever take it up; #27 item 4's fuzz)."""
    meta = body["metadata"]
    if type == "DELETED" or meta.get("deletionTimestamp"):
        return
    agent = wiring.of(memo)
    try:
        status = await asyncio.to_thread(migration_targets.replica_set_missing, dict(body),
                                         agent.kube, agent.now())
        if status is None:
            return
        await asyncio.to_thread(agent.kube.patch_status, gpu_migration.PLURAL,
                                meta["namespace"], meta["name"], status)
    except (KubeUnavailableError, ObjectNotFoundError) as exc:
        logger.warning("GpuMigration of a missing GpuReplicaSet not failed yet: %s", exc)
        return
    kopf.warn(body, reason=str(status["reason"]), message=str(status["message"]))


def _source_here(body: kopf.Body, memo: kopf.Memo, **_: Any) -> bool:
    if gpu_migration.phase_of(body) not in gpu_migration.ACTIVE:
        return False
    node = wiring.settings_of(memo).node_name
    source = gpu_migration.source_of(body)
    if source:
        return source == node
    for bound_to, entry in _its_replica_set(body, memo) or ():
        finalizers = (entry.get("metadata") or {}).get("finalizers") or ()
        # Held here (also when spec.nodeName names the target already), or bound
        # here and held by no other node.
        if ownership.holds((entry.get("status") or {}).get("nodeName"), finalizers,
                           node) or (bound_to == node and
                                     not ownership.bound_elsewhere(finalizers, node)):
            return True
    return False


@kopf.daemon(GROUP, VERSION, gpu_migration.PLURAL, when=_source_here,
             cancellation_timeout=600)
async def run_migration(body: kopf.Body, stopped: kopf.DaemonStopped, memo: kopf.Memo,
                        logger: Logger, **_: Any) -> None:
    agent = wiring.of(memo)
    meta = body["metadata"]
    cancel = threading.Event()

    def show(status: dict[str, Any]) -> None:
        try:
            agent.kube.patch_status(gpu_migration.PLURAL, meta["namespace"], meta["name"],
                                    status)
        except (KubeUnavailableError, ObjectNotFoundError) as exc:
            logger.warning("status not written: %s", exc)
        reason, phase = status.get("reason"), status.get("phase")
        if phase in (Phase.FAILED, Phase.CANCELLED):
            kopf.warn(body, reason=str(reason), message=str(status.get("message")))
        elif phase != Phase.PENDING:
            kopf.info(body, reason=str(reason), message=f"{phase}: {status.get('message')}")

    async def watch_stop() -> None:
        await stopped.wait()
        cancel.set()

    watcher = asyncio.ensure_future(watch_stop())
    try:
        while not stopped:
            current = await asyncio.to_thread(
                agent.kube.get, gpu_migration.PLURAL, meta["namespace"], meta["name"])
            done = await asyncio.to_thread(agent.migrations.run, current, cancel.is_set,
                                           show)
            if done:
                return
            await stopped.wait(SLOT_RETRY_SECONDS)
    except ObjectNotFoundError:
        return
    finally:
        watcher.cancel()
