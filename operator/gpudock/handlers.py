"""kopf registration: wires the adapters to the reconcilers. No decisions are made here.

Each GpuReplicaSet of this node gets a daemon that reconciles it level-based: at
start (also after an agent restart), whenever its spec changes or another resource
frees GPUs or ports, and every --resync-seconds to catch drift.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from typing import Any

import kopf

from gpudock.adapters.docker_runtime import DockerRuntime
from gpudock.adapters.gpu_inventory import inventory_from_settings
from gpudock.adapters.kube_api import KubeApi, ObjectNotFoundError
from gpudock.adapters.revision_store import open_revision_store
from gpudock.api import GROUP, VERSION, gpu_replica_set, sized_volume
from gpudock.errors import GpudockError, SpecError, TransientError
from gpudock.reconciler import Event, Outcome, ReplicaSetReconciler
from gpudock.settings import Settings

GRS = gpu_replica_set.PLURAL


class Wakeups:
    """One asyncio.Event per resource: set to make its daemon reconcile now."""

    def __init__(self) -> None:
        self._events: dict[str, asyncio.Event] = {}

    def event(self, uid: str) -> asyncio.Event:
        return self._events.setdefault(uid, asyncio.Event())

    def wake(self, uid: str) -> None:
        self.event(uid).set()

    def wake_all(self) -> None:
        for event in self._events.values():
            event.set()

    def forget(self, uid: str) -> None:
        self._events.pop(uid, None)


@kopf.on.login()
def login(**kwargs: Any) -> kopf.ConnectionInfo | None:
    """An explicit --kubeconfig wins; otherwise in-cluster first, then ~/.kube/config."""
    settings: Settings = kwargs["memo"].settings
    if settings.kubeconfig:
        return kopf.login_with_kubeconfig(**kwargs)
    return kopf.login_with_service_account(**kwargs) or kopf.login_with_kubeconfig(**kwargs)


@kopf.on.startup()
def startup(memo: Any, settings: kopf.OperatorSettings,
            logger: logging.Logger | logging.LoggerAdapter[Any], **_: Any) -> None:
    agent: Settings = memo.settings
    settings.persistence.finalizer = "gpudock.dev/finalizer"
    settings.persistence.progress_storage = kopf.AnnotationsProgressStorage(prefix=GROUP)
    settings.persistence.diffbase_storage = kopf.AnnotationsDiffBaseStorage(
        prefix=GROUP, key="last-handled-configuration")
    settings.posting.level = logging.INFO
    runtime = DockerRuntime(agent.docker_host, stop_timeout=agent.stop_timeout)
    inventory = inventory_from_settings(agent)
    try:
        logger.info("Docker %s at %s", runtime.version(), agent.docker_host or "default")
        gpus = inventory.list_gpus()
        store = open_revision_store(agent.store_url)
        store.list("", "")  # reachable now, or retry start-up
    except GpudockError as exc:
        raise kopf.TemporaryError(str(exc), delay=5) from exc
    logger.info("revision store: %s", agent.store_url)
    logger.info("node %s: %d GPUs (%s backend): %s", agent.node_name, len(gpus),
                agent.gpu_backend, ", ".join(g.uuid for g in gpus))
    memo.docker = runtime
    memo.kube = KubeApi(agent.kubeconfig)
    memo.store = store
    memo.replica_sets = ReplicaSetReconciler(agent, runtime, inventory, memo.kube, store)
    memo.wakeups = Wakeups()


@kopf.on.cleanup()
def cleanup(memo: Any, **_: Any) -> None:
    runtime = getattr(memo, "docker", None)
    if isinstance(runtime, DockerRuntime):
        runtime.close()
    store = getattr(memo, "store", None)
    if store is not None:
        store.close()


def _on_this_node(spec: kopf.Spec, memo: Any, **_: Any) -> bool:
    return bool(spec.get("nodeName") == memo.settings.node_name)


def _post(body: kopf.Body, events: list[Event]) -> None:
    for event in events:
        kopf.event(body, type=event.type, reason=event.reason, message=event.message)


@kopf.daemon(GROUP, VERSION, GRS, when=_on_this_node, cancellation_timeout=120)
async def run_replica_set(body: kopf.Body, stopped: kopf.DaemonStopped, memo: Any,
                          logger: logging.Logger | logging.LoggerAdapter[Any],
                          **_: Any) -> None:
    uid = body["metadata"]["uid"]
    wakeup = memo.wakeups.event(uid)
    settings: Settings = memo.settings
    shown: dict[str, Any] = {}  # the status written in this pass (the body may lag)

    def show(outcome: Outcome) -> None:
        """Post the events, write the status unless the resource already has it."""
        nonlocal shown
        _post(body, outcome.events)
        current = shown or body.get("status") or {}
        if outcome.status != {k: current.get(k) for k in outcome.status}:
            memo.kube.patch_status(GRS, body["metadata"]["namespace"],
                                   body["metadata"]["name"], outcome.status)
            shown = outcome.status

    try:
        while not stopped:
            wakeup.clear()
            delay = settings.resync_seconds
            shown = {}
            try:
                outcome = await asyncio.to_thread(memo.replica_sets.reconcile, dict(body),
                                                  show)
                if outcome is not None:
                    await asyncio.to_thread(show, outcome)
                    if outcome.released:
                        memo.wakeups.wake_all()
            except ObjectNotFoundError:
                return
            except TransientError as exc:
                logger.warning("will retry in %.0fs: %s", exc.delay, exc)
                delay = min(delay, exc.delay)
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(wakeup.wait(), timeout=delay)
    finally:
        memo.wakeups.forget(uid)


@kopf.on.update(GROUP, VERSION, GRS, when=_on_this_node)
def wake_on_change(body: kopf.Body, memo: Any, **_: Any) -> None:
    """The daemon picks the new spec up from the live body; this makes it look now."""
    memo.wakeups.wake(body["metadata"]["uid"])


@kopf.on.delete(GROUP, VERSION, GRS, when=_on_this_node)
async def delete_replica_set(body: kopf.Body, memo: Any, **_: Any) -> None:
    try:
        events = await asyncio.to_thread(memo.replica_sets.delete, dict(body))
    except TransientError as exc:
        raise kopf.TemporaryError(str(exc), delay=exc.delay) from exc
    _post(body, events)
    memo.wakeups.wake_all()  # its GPUs and ports are free: waiting resources may start


@kopf.on.resume(GROUP, VERSION, sized_volume.PLURAL, when=_on_this_node)
@kopf.on.create(GROUP, VERSION, sized_volume.PLURAL, when=_on_this_node)
@kopf.on.update(GROUP, VERSION, sized_volume.PLURAL, when=_on_this_node)
def validate_sized_volume(spec: kopf.Spec, meta: kopf.Meta, patch: kopf.Patch,
                          **_: Any) -> None:
    """Volumes are not provisioned yet: validate, and say so in the status."""
    generation = meta.get("generation")
    try:
        sized_volume.SizedVolumeSpec.parse(dict(spec))
    except SpecError as exc:
        patch.status["phase"] = "Failed"
        patch.status["observedGeneration"] = generation
        patch.status["conditions"] = [{"type": "Degraded", "status": "True",
                                       "reason": exc.reason, "message": exc.message}]
        return
    patch.status["phase"] = "Pending"
    patch.status["observedGeneration"] = generation
