"""kopf registration: wires the adapters to the reconcilers. No decisions are made here.

Each GpuReplicaSet of this node gets a daemon that reconciles it level-based: at
start (also after an agent restart), whenever its spec changes or another resource
frees GPUs or ports, and every --resync-seconds to catch drift.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import dataclasses
import hashlib
import json
import logging
import os
from typing import Any

import kopf

from gpudock import metrics, node_health, volume_handlers
from gpudock.adapters.docker_runtime import DockerRuntime
from gpudock.adapters.gpu_inventory import inventory_from_settings
from gpudock.adapters.kube_api import (
    KubeApi,
    KubeUnavailableError,
    ObjectNotFoundError,
    in_cluster_server,
)
from gpudock.adapters.revision_store import open_revision_store
from gpudock.adapters.timed_store import TimedRevisionStore
from gpudock.api import GROUP, VERSION, gpu_replica_set, ownership
from gpudock.core.replica_set.status import waiting_on
from gpudock.errors import GpudockError, TransientError
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
        """Wake the daemon of a resource; nothing when it has none here (yet): its
        first pass, when it starts, sees the change anyway."""
        event = self._events.get(uid)
        if event is not None:
            event.set()

    def running(self) -> frozenset[str]:
        """The UIDs of the resources whose daemon runs in this agent: each exists and
        is handled here (kopf stops a daemon when its resource is deleted or no
        longer handled by this node)."""
        return frozenset(self._events)

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
    in_cluster = kopf.login_with_service_account(**kwargs)
    if in_cluster is None:
        return kopf.login_with_kubeconfig(**kwargs)
    # kopf names the server kubernetes.default.svc, which a host-network pod resolves
    # only through cluster DNS; the address the kubelet injects needs no DNS (as
    # client-go's and the kubernetes client's in-cluster configs use it).
    server = in_cluster_server(os.environ)
    return dataclasses.replace(in_cluster, server=server) if server else in_cluster


@kopf.on.startup()
def startup(memo: Any, settings: kopf.OperatorSettings,
            logger: logging.Logger | logging.LoggerAdapter[Any], **_: Any) -> None:
    agent: Settings = memo.settings
    settings.persistence.finalizer = ownership.node_finalizer(agent.node_name)
    settings.persistence.progress_storage = kopf.AnnotationsProgressStorage(prefix=GROUP)
    settings.persistence.diffbase_storage = DigestDiffBaseStorage(
        prefix=GROUP, key="last-handled-configuration")
    settings.posting.level = logging.INFO
    settings.posting.reporting_component = "gpudock-agent"
    settings.posting.reporting_instance = agent.node_name
    runtime = DockerRuntime(agent.docker_host, stop_timeout=agent.stop_timeout,
                            on_request=lambda method: metrics.DOCKER_REQUESTS.labels(
                                method).inc())
    inventory = inventory_from_settings(agent)
    try:
        logger.info("Docker %s at %s", runtime.version(), agent.docker_host or "default")
        gpus = inventory.list_gpus()
        store = TimedRevisionStore(open_revision_store(agent.store_url))
        store.list("", "")  # reachable now, or retry start-up
    except GpudockError as exc:
        raise kopf.TemporaryError(str(exc), delay=5) from exc
    logger.info("revision store: %s", agent.store_url)
    logger.info("node %s: %d GPUs (%s backend): %s", agent.node_name, len(gpus),
                agent.gpu_backend, ", ".join(g.uuid for g in gpus))
    memo.docker = runtime
    memo.inventory = inventory
    memo.kube = KubeApi(agent.kubeconfig)
    memo.store = store
    memo.replica_sets = ReplicaSetReconciler(agent, runtime, inventory, memo.kube, store)
    memo.wakeups = Wakeups()
    memo.volumes = volume_handlers.volume_reconciler(memo)
    memo.phases = {}  # uid -> phase of this agent's GpuReplicaSets (metrics)
    if agent.metrics_port:
        metrics.serve(agent.metrics_port)
        logger.info("Prometheus metrics on port %d", agent.metrics_port)


# Each reconcile and each Docker call runs in a worker thread. asyncio's default pool
# (cores + 4 threads) would let a few slow steps (stops waiting out their timeout,
# disk saves) of some resources hold every thread while the others wait: the pool is
# sized for every resource of a busy node to have its step running at once. Threads
# are made only when needed.
WORKER_THREADS = 256


@kopf.index(GROUP, VERSION, GRS)
def replica_sets_by_node(body: kopf.Body, **_: Any) -> dict[str, dict[str, Any]]:
    """Every watched GpuReplicaSet under the node it names, for the check of resources
    whose node has no live agent (node_health.flag_unserved)."""
    return node_health.watched(body)


@kopf.on.startup()
async def start_orphan_sweep(memo: Any, logger: logging.Logger | logging.LoggerAdapter[Any],
                             **kwargs: Any) -> None:
    loop = asyncio.get_running_loop()
    loop.set_default_executor(
        concurrent.futures.ThreadPoolExecutor(WORKER_THREADS, thread_name_prefix="gpudock"))
    # Drift is seen as it happens: an event of a container wakes its resource's daemon
    # (and keeps the observation cache true, so a resync of an idle resource asks
    # Docker nothing about containers).
    memo.docker.follow_events(
        lambda uid: loop.call_soon_threadsafe(memo.wakeups.wake, uid))
    memo.sweeper = asyncio.create_task(_sweep_orphans(memo, logger))
    # kopf's indexes (empty until its watches have listed; kept current after).
    memo.watched = {GRS: kwargs["replica_sets_by_node"],
                    volume_handlers.SVOL: kwargs["volumes_by_node"]}
    memo.node_changed = asyncio.Event()
    memo.heartbeat = asyncio.create_task(_heartbeat(memo, logger))


async def _heartbeat(memo: Any, logger: logging.Logger | logging.LoggerAdapter[Any],
                     ) -> None:
    """This node's GpuNode when something on the node changed (a GPU or port taken
    or freed), and every --heartbeat-seconds anyway; then the resources of nodes
    whose agent is silent or absent (node_health.py)."""
    while True:
        memo.node_changed.clear()
        try:
            await asyncio.to_thread(node_health.beat, memo.settings, memo.replica_sets.now(),
                                    memo.docker, memo.inventory, memo.kube)
            others = {plural: [entry for node, entries in index.items()
                               if node != memo.settings.node_name for entry in entries]
                      for plural, index in memo.watched.items()}  # read in the loop
            await asyncio.to_thread(node_health.flag_unserved, memo.settings,
                                    memo.replica_sets.now(), memo.kube, others)
        except Exception as exc:  # the heartbeat must outlive any one failure
            logger.warning("node heartbeat failed, will retry: %s", exc)
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(memo.node_changed.wait(),
                                   timeout=memo.settings.heartbeat_seconds)
        await asyncio.sleep(NODE_WRITE_GAP_SECONDS)  # many changes at once: one write


NODE_WRITE_GAP_SECONDS = 1.0


async def _sweep_orphans(memo: Any, logger: logging.Logger | logging.LoggerAdapter[Any],
                         ) -> None:
    """Every --resync-seconds: save and remove this node's containers whose resource
    is gone (ReplicaSetReconciler.sweep_orphans); waiting resources may start then."""
    def lookup(namespace: str, name: str) -> dict[str, Any] | None:
        try:
            return memo.kube.get(GRS, namespace, name)  # type: ignore[no-any-return]
        except ObjectNotFoundError:
            return None

    while True:
        try:
            swept = await asyncio.to_thread(memo.replica_sets.sweep_orphans, lookup,
                                            memo.wakeups.running())
        except Exception as exc:  # the sweep must outlive any one failure
            logger.warning("orphan sweep failed, will retry: %s", exc)
            swept = []
        for line in swept:
            logger.warning("orphaned container: %s", line)
        if swept:
            memo.wakeups.wake_all()
            memo.node_changed.set()
        await asyncio.sleep(memo.settings.resync_seconds)


class DigestDiffBaseStorage(kopf.AnnotationsDiffBaseStorage):
    """kopf's last-handled-configuration annotation, holding a digest of the resource's
    essence instead of the essence itself. The handlers never read the diff (an update
    only wakes the resource's daemon), and a spec near the schema's bounds would not
    fit the API server's 256 KiB limit on annotations: every patch of kopf's would be
    refused, and with it the removal of the finalizer on delete."""

    def build(self, *, body: kopf.Body, extra_fields: Any = None) -> Any:
        essence = super().build(body=body, extra_fields=extra_fields)
        encoded = json.dumps(essence, sort_keys=True, separators=(",", ":"), default=str)
        return {"spec": {"sha256": hashlib.sha256(encoded.encode()).hexdigest()}}


@kopf.on.cleanup()
def cleanup(memo: Any, **_: Any) -> None:
    for task in (getattr(memo, "sweeper", None), getattr(memo, "heartbeat", None)):
        if task is not None:
            task.cancel()
    runtime = getattr(memo, "docker", None)
    if isinstance(runtime, DockerRuntime):
        runtime.close()
    store = getattr(memo, "store", None)
    if store is not None:
        store.close()


def _on_this_node(spec: kopf.Spec, meta: kopf.Meta, memo: Any, **_: Any) -> bool:
    """Resources this node's agent handles (api/ownership.py): those bound to it by
    its finalizer, and new ones that name it."""
    return ownership.handled_here(spec.get("nodeName"), meta.get("finalizers") or (),
                                  memo.settings.node_name)


def _drop_legacy_finalizer(memo: Any, body: kopf.Body) -> None:
    """Resources made by an agent before 0.2 carry the finalizer every agent shared;
    once this node's own is there, the old one goes (else deletes would hang)."""
    finalizers = body["metadata"].get("finalizers") or ()
    if ownership.LEGACY_FINALIZER in finalizers:
        memo.kube.remove_finalizer(GRS, body["metadata"]["namespace"],
                                   body["metadata"]["name"], ownership.LEGACY_FINALIZER)


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
    shown: dict[str, Any] = {}  # the status as this pass knows it (the body may lag)
    # The resourceVersion the daemon last read or made with a status write: a pass
    # woken at once (by the Docker event of its own last step) can start before the
    # watch has brought that write into ``body``, and must not take the older status
    # for the resource's last (a note such as DriftRepaired would be lost).
    known_version: str | None = None
    # What could not be written while the API server was away: the next pass starts
    # from that status (so a repair it notes is not forgotten) and posts the events.
    carried: dict[str, Any] = {}
    unsent: list[Event] = []

    def show(outcome: Outcome) -> None:
        """Post the events, write the status unless the resource already has it. The
        API server being away does not stop the work on the node: the status and
        the events catch up on a later pass."""
        nonlocal shown, carried, unsent, known_version
        unsent += outcome.events
        try:
            _post(body, unsent)
            unsent = []
            current = shown or body.get("status") or {}
            if _without_nulls(outcome.status) != _without_nulls(
                    {k: current.get(k) for k in outcome.status}):
                known_version = memo.kube.patch_status(
                    GRS, body["metadata"]["namespace"], body["metadata"]["name"],
                    outcome.status)
                shown = outcome.status
            carried = {}
        except KubeUnavailableError as exc:
            logger.warning("status not written (will catch up): %s", exc)
            carried = outcome.status

    quiet = 0  # passes in a row that found the resource settled and changed nothing
    try:
        while not stopped:
            wakeup.clear()
            delay = settings.resync_seconds
            shown = {}
            calm = False
            try:
                view = await asyncio.to_thread(_caught_up, memo, body, known_version)
                known_version = view["metadata"].get("resourceVersion")
                shown = view.get("status") or {}
                if carried:
                    view = {**view, "status": carried}
                await asyncio.to_thread(_drop_legacy_finalizer, memo, body)
                with metrics.timed(metrics.RECONCILE_SECONDS, gpu_replica_set.KIND):
                    outcome = await asyncio.to_thread(memo.replica_sets.reconcile, view,
                                                      show)
                if outcome is not None:
                    written = known_version
                    await asyncio.to_thread(show, outcome)
                    calm = (not outcome.events and outcome.recheck_after is None
                            and known_version == written and outcome.settled)
                    if outcome.released:
                        memo.wakeups.wake_all()
                    if outcome.released or outcome.events:
                        memo.node_changed.set()
                    delay = min(delay, outcome.recheck_after or delay)
                    _count(memo, uid, outcome.status)
            except ObjectNotFoundError:
                return
            except TransientError as exc:
                logger.warning("will retry in %.0fs: %s", exc.delay, exc)
                delay = min(delay, exc.delay)
                metrics.RECONCILE_ERRORS.labels(gpu_replica_set.KIND, exc.reason).inc()
                await asyncio.to_thread(_show_waiting, memo, body, exc)
            if carried or unsent:
                delay = min(delay, STATUS_RETRY_SECONDS)
                calm = False
            quiet = quiet + 1 if calm and memo.docker.events_followed() else 0
            if quiet:
                delay = settings.resync_seconds * min(2 ** quiet, QUIET_RESYNC_FACTOR)
            await _sleep(wakeup, stopped, delay)
            if wakeup.is_set():
                quiet = 0  # woken by a change: the usual period again
    finally:
        memo.wakeups.forget(uid)
        memo.phases.pop(uid, None)
        metrics.set_phases(gpu_replica_set.KIND, memo.phases)


def _caught_up(memo: Any, body: kopf.Body, known_version: str | None) -> dict[str, Any]:
    """The resource as the pass must see it: the watched body when it is at the
    version the daemon knows (or the daemon knows none yet); otherwise the body may
    not have caught up with the daemon's own status write, so read afresh."""
    if known_version is None or body["metadata"].get("resourceVersion") == known_version:
        return dict(body)
    fresh: dict[str, Any] = memo.kube.get(GRS, body["metadata"]["namespace"],
                                          body["metadata"]["name"])
    return fresh


def _count(memo: Any, uid: str, status: dict[str, Any]) -> None:
    """The resource's phase for the gauge, and its problem for the error counter."""
    memo.phases[uid] = str(status.get("phase"))
    metrics.set_phases(gpu_replica_set.KIND, memo.phases)
    degraded = next((c for c in status.get("conditions") or ()
                     if c.get("type") == "Degraded" and c.get("status") == "True"), None)
    if degraded is not None:
        metrics.RECONCILE_ERRORS.labels(gpu_replica_set.KIND, degraded["reason"]).inc()


STATUS_RETRY_SECONDS = 5.0
# A settled resource's look while Docker's events are followed (every change of its
# container wakes it): the period doubles with each pass that changes nothing, up to
# this many times --resync-seconds; a wake-up brings it back.
QUIET_RESYNC_FACTOR = 4


def _without_nulls(value: Any) -> Any:
    """The API server drops null fields from what it stores: compare without them,
    or every pass would write the same status again."""
    if isinstance(value, dict):
        return {k: _without_nulls(v) for k, v in value.items() if v is not None}
    if isinstance(value, list):
        return [_without_nulls(v) for v in value]
    return value


async def _sleep(wakeup: asyncio.Event, stopped: kopf.DaemonStopped, delay: float) -> None:
    """Until the resource is woken (its spec changed, GPUs were freed), kopf stops
    the daemon (the resource is being deleted, the agent exits) or ``delay`` passes."""
    woken = asyncio.ensure_future(wakeup.wait())
    ending = asyncio.ensure_future(stopped.wait(delay))
    try:
        await asyncio.wait((woken, ending), timeout=delay,
                           return_when=asyncio.FIRST_COMPLETED)
    finally:
        woken.cancel()
        ending.cancel()


def _show_waiting(memo: Any, body: kopf.Body, exc: TransientError) -> None:
    """Docker or the revision store does not answer: say so in the status (when the
    API server does), keeping the rest of what it says."""
    status = waiting_on(body.get("status") or {}, exc.reason, str(exc),
                        memo.replica_sets.now())
    with contextlib.suppress(KubeUnavailableError, ObjectNotFoundError):
        memo.kube.patch_status(GRS, body["metadata"]["namespace"], body["metadata"]["name"],
                               status)


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
    with contextlib.suppress(ObjectNotFoundError):
        await asyncio.to_thread(_drop_legacy_finalizer, memo, body)
    memo.wakeups.wake_all()  # its GPUs and ports are free: waiting resources may start
    memo.node_changed.set()
