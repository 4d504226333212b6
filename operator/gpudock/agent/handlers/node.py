"""kopf registration of what belongs to the node rather than to one resource: login,
start-up (the composition root, kopf's persistence settings), the node's heartbeat
(its GpuNode, and the resources of silent nodes), the orphan sweep, and clean-up."""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import hashlib
import json
import logging
import os
import threading
from typing import Any

import kopf

from gpudock import metrics
from gpudock.adapters.gpu_inventory import faults_from_settings
from gpudock.adapters.kube_api import ObjectNotFoundError, Reviews
from gpudock.agent import gpu_usage, node_health, wiring
from gpudock.agent.gpu_health import READMIT
from gpudock.agent.log_stream import LogStreams
from gpudock.agent.wiring import NodeAgent
from gpudock.api import GROUP, VERSION, gpu_replica_set, ownership, sized_volume
from gpudock.api.reasons import Reason
from gpudock.core.observed import ObservedContainer
from gpudock.errors import GpudockError
from gpudock.scheduler import kopf_login

Logger = logging.Logger | logging.LoggerAdapter[Any]
# Each reconcile and each Docker call runs in a worker thread. asyncio's default pool
# (cores + 4 threads) would let a few slow steps (stops waiting out their timeout,
# disk saves) of some resources hold every thread while the others wait: the pool is
# sized for every resource of a busy node to have its step running at once. Threads
# are made only when needed. ExecRequests and ImageCommits, which hold a thread for
# as long as their command or commit runs, never run here: they have their own pool
# and slots (wiring.NodeAgent.request_pool, request_slots.py).
WORKER_THREADS = 256
NODE_WRITE_GAP_SECONDS = 1.0  # many changes at once: one GpuNode write
BATCH_WINDOW_SECONDS = 0.01


@kopf.on.login()
def login(**kwargs: Any) -> kopf.ConnectionInfo | None:
    """An explicit --kubeconfig wins; otherwise in-cluster first, then ~/.kube/config."""
    return kopf_login.connect(wiring.settings_of(kwargs["memo"]).kubeconfig, **kwargs)


@kopf.on.startup()
async def start_node_agent(memo: kopf.Memo, settings: kopf.OperatorSettings,
                           logger: Logger, **kwargs: Any) -> None:
    """Build the NodeAgent (retried until Docker, the GPUs and the revision store
    answer), then start the node's own tasks."""
    agent_settings = wiring.settings_of(memo)
    kopf_login.retry_the_api_server(settings)
    settings.persistence.finalizer = ownership.node_finalizer(agent_settings.node_name)
    settings.persistence.progress_storage = kopf.AnnotationsProgressStorage(prefix=GROUP)
    settings.persistence.diffbase_storage = DigestDiffBaseStorage(
        prefix=GROUP, key="last-handled-configuration")
    # kopf waits this long after an object's watch event for more of the same object
    # before handling them as one (default 0.1 s): an apply reaches its daemon sooner,
    # and events of one object closer together than this are still taken as one.
    settings.batching.batch_window = BATCH_WINDOW_SECONDS
    settings.posting.level = logging.INFO
    settings.posting.reporting_component = "gpudock-agent"
    settings.posting.reporting_instance = agent_settings.node_name
    loop = asyncio.get_running_loop()
    loop.set_default_executor(
        concurrent.futures.ThreadPoolExecutor(WORKER_THREADS, thread_name_prefix="gpudock"))
    try:
        agent = await asyncio.to_thread(wiring.build, agent_settings)
    except GpudockError as exc:
        raise kopf.TemporaryError(str(exc), delay=5) from exc
    gpus = agent.inventory.list_gpus()
    logger.info("Docker %s at %s", agent.docker.version(),
                agent_settings.docker_host or "default")
    logger.info("revision store: %s", agent_settings.store_url)
    logger.info("node %s: %d GPUs (%s backend): %s", agent_settings.node_name, len(gpus),
                agent_settings.gpu_backend, ", ".join(g.uuid for g in gpus))
    if agent_settings.stream_port:  # first: a retried start-up has nothing else to undo
        streams = LogStreams(agent_settings, agent.docker, Reviews(agent_settings.kubeconfig))
        try:
            agent.stream.update(await streams.start())
        except (GpudockError, OSError) as exc:  # openssl missing, the port taken
            agent.request_pool.shutdown(wait=False)
            agent.docker.close()
            agent.store.close()
            raise kopf.TemporaryError(f"--stream-port: {exc}", delay=10) from exc
        agent.log_streams.append(streams)
    memo[wiring.MEMO_KEY] = agent
    if agent_settings.metrics_port:
        if agent_settings.instance_metrics:
            metrics.instance_metrics()
        metrics.serve(agent_settings.metrics_port)
        logger.info("Prometheus metrics on port %d", agent_settings.metrics_port)
    # Drift is seen as it happens: an event of a container wakes its resource's daemon
    # (and keeps the observation cache true, so a resync of an idle resource asks
    # Docker nothing about containers).
    def wake(uid: str) -> None:  # called on the event stream's thread
        loop.call_soon_threadsafe(agent.wakeups.wake, uid)

    def wake_every() -> None:  # the stream is back after a break: events were missed
        loop.call_soon_threadsafe(agent.wakeups.wake_all)

    agent.docker.follow_events(wake, wake_every)
    agent.migrations.wake = wake  # a migration that ends early wakes its instance
    try:  # the endpoint other nodes' migrations come in by (docs/migration.md)
        await asyncio.to_thread(agent.receiver.start)
    except (OSError, GpudockError) as exc:  # the port taken, no openssl
        logger.error("no migration endpoint on port %d (nothing can migrate to this "
                     "node): %s", agent_settings.transfer_port, exc)
    # kopf's indexes (empty until its watches have listed; kept current after).
    agent.watched.update({gpu_replica_set.PLURAL: kwargs["replica_sets_by_node"],
                          sized_volume.PLURAL: kwargs["volumes_by_node"]})
    agent.tasks.append(asyncio.create_task(_sweep_orphans(agent, logger)))
    agent.tasks.append(asyncio.create_task(_heartbeat(agent, logger)))
    _watch_gpu_health(agent, loop, logger)
    if agent.access_probe is not None:
        agent.tasks.append(asyncio.create_task(_probe_gpu_access(agent, logger)))


def _watch_gpu_health(agent: NodeAgent, loop: asyncio.AbstractEventLoop,
                      logger: Logger) -> None:
    """The GPU faults of the backend, on a thread (agent/gpu_health.py): a GPU that
    turns Unhealthy or comes back is written on the GpuNode at once, and every
    resource looks again (a holder says Degraded, or moves under Replace)."""
    health = agent.gpu_health
    if health is None:
        return
    settings = agent.settings
    node_body = {"apiVersion": f"{GROUP}/{VERSION}", "kind": node_health.KIND,
                 "metadata": {"name": settings.node_name,
                              "namespace": settings.release_namespace}}

    def announce(type_: str, reason: Reason, message: str) -> None:  # any thread
        logger.log(logging.WARNING if type_ == "Warning" else logging.INFO, "%s: %s",
                   reason, message)
        try:
            agent.kube.post_event(node_body, type_, reason, message, "gpudock-agent",
                                  agent.now())
        except GpudockError as exc:
            logger.warning("event %s on GpuNode %s not posted: %s", reason,
                           settings.node_name, exc)

    def changed() -> None:  # any thread
        loop.call_soon_threadsafe(agent.node_changed.set)
        loop.call_soon_threadsafe(agent.wakeups.wake_all)

    health.start(faults_from_settings(settings, health.backend, health.faults_offset),
                 announce, changed)


async def _probe_gpu_access(agent: NodeAgent, logger: Logger) -> None:
    """Every --gpu-access-probe-seconds: the GPU access probe (agent/gpu_access.py);
    an instance whose container lost its GPUs is woken to be recreated."""
    probe = agent.access_probe
    assert probe is not None

    def announce(container: ObservedContainer, type_: str, reason: Reason,
                 message: str) -> None:
        logger.warning("%s: %s", reason, message)
        owner = container.owner
        assert owner is not None
        body = {"apiVersion": f"{GROUP}/{VERSION}", "kind": gpu_replica_set.KIND,
                "metadata": {"namespace": owner.namespace, "name": owner.name,
                             "uid": container.uid}}
        try:
            agent.kube.post_event(body, type_, reason, message, "gpudock-agent", agent.now())
        except GpudockError as exc:
            logger.warning("event %s not posted: %s", reason, exc)

    while True:
        await asyncio.sleep(agent.settings.gpu_access_probe_seconds)
        try:
            flagged = await asyncio.to_thread(probe.probe, agent.docker, agent.docker.exec,
                                              announce)
        except Exception as exc:  # the probe must outlive any one failure
            logger.warning("GPU access probe failed, will retry: %s", exc)
            continue
        for container in flagged:
            agent.wakeups.wake(container.uid)


@kopf.on.event(GROUP, VERSION, node_health.PLURAL, annotations={READMIT: kopf.PRESENT})
def readmit_gpus(body: kopf.Body, memo: kopf.Memo, logger: Logger, **_: Any) -> None:
    """``gpudock.dev/readmit`` on this node's GpuNode: the GPUs it names are back in
    service (their marks lifted); the annotation is removed."""
    agent = memo.get(wiring.MEMO_KEY)
    if not isinstance(agent, NodeAgent) or agent.gpu_health is None or \
            body.get("metadata", {}).get("name") != agent.settings.node_name:
        return
    names = str(body.get("metadata", {}).get("annotations", {}).get(READMIT) or "")
    for line in agent.gpu_health.readmit(names):
        logger.info("readmit: %s", line)
    with contextlib.suppress(ObjectNotFoundError):
        agent.kube.patch_cluster(node_health.PLURAL, agent.settings.node_name,
                                 {"metadata": {"annotations": {READMIT: None}}})


@kopf.index(GROUP, VERSION, gpu_replica_set.PLURAL)
def replica_sets_by_node(body: kopf.Body, **_: Any) -> dict[str, dict[str, Any]]:
    """Every watched GpuReplicaSet under the node it names, for the check of resources
    whose node has no live agent (node_health.flag_unserved)."""
    return node_health.watched(body)


@kopf.index(GROUP, VERSION, sized_volume.PLURAL)
def volumes_by_node(body: kopf.Body, **_: Any) -> dict[str, dict[str, Any]]:
    """Every watched SizedVolume under the node it names (node_health.flag_unserved)."""
    return node_health.watched(body)


async def _heartbeat(agent: NodeAgent, logger: Logger) -> None:
    """This node's GpuNode when something on the node changed (a GPU or port taken
    or freed), and every --heartbeat-seconds anyway; then the resources of nodes
    whose agent is silent or absent (node_health.py)."""
    settings = agent.settings
    while True:
        agent.node_changed.clear()
        try:
            transfer = agent.receiver.advertised() if agent.receiver.port else None
            idle = await asyncio.to_thread(node_health.beat, settings, agent.now(),
                                           agent.docker, agent.inventory, agent.kube,
                                           agent.store, agent.usage, agent.stream, transfer,
                                           agent.replica_sets.arrivals,
                                           agent.receiver.clear_ended)
            index = agent.watched.get(gpu_replica_set.PLURAL)
            mine = list(index.get(settings.node_name) or ()) if idle and index else []
            for line in await asyncio.to_thread(gpu_usage.stop_idle, agent.kube,
                                                agent.usage, idle, mine, agent.now()):
                logger.info("idle stop: %s", line)
            others = {plural: [entry for node, entries in index.items()
                               if node != settings.node_name for entry in entries]
                      for plural, index in agent.watched.items()}  # read in the loop
            await asyncio.to_thread(node_health.flag_unserved, settings, agent.now(),
                                    agent.kube, others)
        except Exception as exc:  # the heartbeat must outlive any one failure
            logger.warning("node heartbeat failed, will retry: %s", exc)
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(agent.node_changed.wait(),
                                   timeout=settings.heartbeat_seconds)
        await asyncio.sleep(NODE_WRITE_GAP_SECONDS)


async def _sweep_orphans(agent: NodeAgent, logger: Logger) -> None:
    """Every --resync-seconds: save and remove this node's containers whose resource
    is gone (ReplicaSetReconciler.sweep_orphans); waiting resources may start then."""
    def lookup(namespace: str, name: str) -> dict[str, Any] | None:
        try:
            return agent.kube.get(gpu_replica_set.PLURAL, namespace, name)
        except ObjectNotFoundError:
            return None

    while True:
        try:
            swept = await asyncio.to_thread(agent.replica_sets.sweep_orphans, lookup,
                                            agent.wakeups.running())
        except Exception as exc:  # the sweep must outlive any one failure
            logger.warning("orphan sweep failed, will retry: %s", exc)
            swept = []
        for line in swept:
            logger.warning("orphaned container: %s", line)
        if swept:
            agent.wakeups.wake_unsettled()
            agent.node_changed.set()
        await asyncio.sleep(agent.settings.resync_seconds)


class DigestDiffBaseStorage(kopf.AnnotationsDiffBaseStorage):
    """kopf's last-handled-configuration annotation, holding a digest of the resource's
    essence instead of the essence itself. The handlers never read the diff (an update
    only wakes the resource's daemon), and a spec near the schema's bounds would not
    fit the API server's 256 KiB limit on annotations: every patch of kopf's would be
    refused, and with it the removal of the finalizer on delete."""

    def build(self, *, body: kopf.Body, extra_fields: Any = None) -> Any:
        essence: dict[str, Any] = dict(super().build(body=body, extra_fields=extra_fields))
        # kopf leaves out every annotation under its storage prefix (gpudock.dev/, marked
        # by gpudock.dev/kopf-managed), so a new gpudock.dev/redeploy value would not
        # wake the daemon (#25 item 4); added only when set, so the digest of a
        # resource without it stays what it was.
        token = (body.get("metadata", {}).get("annotations") or {}).get(
            gpu_replica_set.REDEPLOY_ANNOTATION)
        if token:
            essence = {**essence, gpu_replica_set.REDEPLOY_ANNOTATION: token}
        encoded = json.dumps(essence, sort_keys=True, separators=(",", ":"), default=str)
        return {"spec": {"sha256": hashlib.sha256(encoded.encode()).hexdigest()}}


EXIT_GRACE_SECONDS = 30.0
logger = logging.getLogger(__name__)


def exit_if_stuck(grace: float = EXIT_GRACE_SECONDS) -> threading.Timer:
    """Make sure the process ends once kopf stops: a worker thread still blocked
    (asyncio waits for the default executor's threads before kopf.run returns) kept
    an agent whose kopf had stopped alive for good, its liveness endpoint gone, so
    nothing restarted it but a kubelet (found by the soak). Every step is safe to
    cut at any point, as a SIGKILL would."""
    def force() -> None:
        logger.error("the agent has not stopped %.0f s after kopf's cleanup (a thread "
                     "is still blocked): exiting", grace)
        logging.shutdown()
        os._exit(1)
    timer = threading.Timer(grace, force)
    timer.daemon = True
    timer.start()
    return timer


@kopf.on.cleanup()
async def stop_node_agent(memo: kopf.Memo, **_: Any) -> None:
    exit_if_stuck()
    agent = memo.get(wiring.MEMO_KEY)
    if not isinstance(agent, NodeAgent):
        return  # it never started
    for task in [*agent.tasks, *agent.requests.running.values()]:
        task.cancel()
    agent.request_pool.shutdown(wait=False, cancel_futures=True)
    for streams in agent.log_streams:
        await streams.stop()
    if agent.gpu_health is not None:
        agent.gpu_health.stop()
    agent.receiver.stop()
    agent.docker.close()
    agent.store.close()
