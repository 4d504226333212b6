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

from gpudock import node_health
from gpudock.adapters.kube_api import KubeUnavailableError
from gpudock.api import GROUP, VERSION, ownership, sized_volume
from gpudock.core.replica_set.status import waiting_on
from gpudock.core.volumes import unusable
from gpudock.crash_points import CrashPoints
from gpudock.errors import TransientError, UserError
from gpudock.settings import Settings
from gpudock.volume_reconciler import VolumeReconciler

SVOL = sized_volume.PLURAL
IN_USE_RETRY_SECONDS = 5


def volume_reconciler(memo: Any) -> VolumeReconciler:
    """Made at start-up (handlers.startup), once Docker is reachable."""
    settings: Settings = memo.settings
    return VolumeReconciler(settings.volume_backend, settings.volumes_at, memo.docker,
                            memo.store, memo.replica_sets.now,
                            CrashPoints(settings.crash_at))


def _on_this_node(spec: kopf.Spec, meta: kopf.Meta, memo: Any, **_: Any) -> bool:
    return ownership.handled_here(spec.get("nodeName"), meta.get("finalizers") or (),
                                  memo.settings.node_name)


def _write(memo: Any, body: kopf.Body, status: dict[str, Any],
           logger: logging.Logger | logging.LoggerAdapter[Any]) -> None:
    try:
        memo.kube.patch_status(SVOL, body["metadata"]["namespace"],
                               body["metadata"]["name"], status)
    except KubeUnavailableError as exc:
        logger.warning("volume status not written: %s", exc)


@kopf.index(GROUP, VERSION, SVOL)
def volumes_by_node(body: kopf.Body, **_: Any) -> dict[str, dict[str, Any]]:
    """Every watched SizedVolume under the node it names (node_health.flag_unserved)."""
    return node_health.watched(body)


@kopf.daemon(GROUP, VERSION, SVOL, when=_on_this_node, cancellation_timeout=600)
async def run_sized_volume(body: kopf.Body, stopped: kopf.DaemonStopped, memo: Any,
                           logger: logging.Logger | logging.LoggerAdapter[Any],
                           **_: Any) -> None:
    uid = body["metadata"]["uid"]
    wakeup = memo.wakeups.event(uid)
    first = True  # after a restart it may have been attached again: wake its users
    try:
        while not stopped:
            wakeup.clear()
            delay = memo.settings.resync_seconds
            if body["metadata"].get("deletionTimestamp"):
                return
            before = (body.get("status") or {}).get("phase")
            try:
                status = await asyncio.to_thread(
                    memo.volumes.reconcile, dict(body),
                    lambda now: _write(memo, body, now, logger),
                    lambda kind, reason, message: kopf.event(
                        body, type=kind, reason=reason, message=message))
                await asyncio.to_thread(_write, memo, body, status, logger)
                if status.get("phase") == "Ready" and (before != "Ready" or first):
                    memo.wakeups.wake_all()  # instances waiting for it may start
                first = False
            except TransientError as exc:
                logger.warning("volume: will retry in %.0fs: %s", exc.delay, exc)
                delay = min(delay, exc.delay)
                await asyncio.to_thread(_write, memo, body, waiting_on(
                    body.get("status") or {}, exc.reason, str(exc),
                    memo.replica_sets.now()), logger)
            except UserError as exc:  # e.g. its backend's root is not mounted any more
                logger.warning("volume: %s", exc)
                await asyncio.to_thread(_write, memo, body, unusable(
                    body.get("status") or {}, exc.reason, exc.message,
                    memo.replica_sets.now()), logger)
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(wakeup.wait(), timeout=delay)
    finally:
        memo.wakeups.forget(uid)


@kopf.on.update(GROUP, VERSION, SVOL, when=_on_this_node)
def wake_volume(body: kopf.Body, memo: Any, **_: Any) -> None:
    memo.wakeups.wake(body["metadata"]["uid"])


@kopf.on.delete(GROUP, VERSION, SVOL, when=_on_this_node)
async def delete_sized_volume(body: kopf.Body, memo: Any,
                              logger: logging.Logger | logging.LoggerAdapter[Any],
                              **_: Any) -> None:
    try:
        users = await asyncio.to_thread(memo.volumes.delete, dict(body))
    except TransientError as exc:
        raise kopf.TemporaryError(str(exc), delay=exc.delay) from exc
    if users:
        message = (f"in use by container(s) {', '.join(users)}: delete or change the "
                   "GpuReplicaSets that mount it first")
        await asyncio.to_thread(_write, memo, body, {
            "phase": "Deleting", "reason": "VolumeInUse", "conditions": [
                {"type": "Ready", "status": "False", "reason": "VolumeInUse",
                 "message": message},
                {"type": "Progressing", "status": "True", "reason": "VolumeInUse",
                 "message": message},
                {"type": "Degraded", "status": "False", "reason": "AsExpected",
                 "message": "nothing to report"}]}, logger)
        raise kopf.TemporaryError(message, delay=IN_USE_RETRY_SECONDS)
