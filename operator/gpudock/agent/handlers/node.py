"""kopf registration of what belongs to the node rather than to one resource: login,
start-up (the composition root, kopf's persistence settings), the node's heartbeat
(its GpuNode, and the resources of silent nodes), the orphan sweep, and clean-up."""

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

from gpudock import metrics
from gpudock.adapters.kube_api import ObjectNotFoundError, in_cluster_server
from gpudock.agent import node_health, wiring
from gpudock.agent.wiring import NodeAgent
from gpudock.api import GROUP, VERSION, gpu_replica_set, ownership, sized_volume
from gpudock.errors import GpudockError

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
    if wiring.settings_of(kwargs["memo"]).kubeconfig:
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
async def start_node_agent(memo: kopf.Memo, settings: kopf.OperatorSettings,
                           logger: Logger, **kwargs: Any) -> None:
    """Build the NodeAgent (retried until Docker, the GPUs and the revision store
    answer), then start the node's own tasks."""
    agent_settings = wiring.settings_of(memo)
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
    memo[wiring.MEMO_KEY] = agent
    if agent_settings.metrics_port:
        metrics.serve(agent_settings.metrics_port)
        logger.info("Prometheus metrics on port %d", agent_settings.metrics_port)
    # Drift is seen as it happens: an event of a container wakes its resource's daemon
    # (and keeps the observation cache true, so a resync of an idle resource asks
    # Docker nothing about containers).
    def wake(uid: str) -> None:  # called on the event stream's thread
        loop.call_soon_threadsafe(agent.wakeups.wake, uid)

    agent.docker.follow_events(wake)
    agent.migrations.wake = wake  # a migration that ends early wakes its instance
    try:  # the endpoint other nodes' migrations come in by (docs/migration.md)
        await asyncio.to_thread(agent.receiver.start)
    except OSError as exc:
        logger.error("no migration endpoint on port %d (nothing can migrate to this "
                     "node): %s", agent_settings.transfer_port, exc)
    # kopf's indexes (empty until its watches have listed; kept current after).
    agent.watched.update({gpu_replica_set.PLURAL: kwargs["replica_sets_by_node"],
                          sized_volume.PLURAL: kwargs["volumes_by_node"]})
    agent.tasks.append(asyncio.create_task(_sweep_orphans(agent, logger)))
    agent.tasks.append(asyncio.create_task(_heartbeat(agent, logger)))


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
            await asyncio.to_thread(node_health.beat, settings, agent.now(), agent.docker,
                                    agent.inventory, agent.kube, agent.store,
                                    agent.receiver.advertised() if agent.receiver.port
                                    else None)
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
        essence = super().build(body=body, extra_fields=extra_fields)
        encoded = json.dumps(essence, sort_keys=True, separators=(",", ":"), default=str)
        return {"spec": {"sha256": hashlib.sha256(encoded.encode()).hexdigest()}}


@kopf.on.cleanup()
def stop_node_agent(memo: kopf.Memo, **_: Any) -> None:
    agent = memo.get(wiring.MEMO_KEY)
    if not isinstance(agent, NodeAgent):
        return  # it never started
    for task in [*agent.tasks, *agent.requests.running.values()]:
        task.cancel()
    agent.request_pool.shutdown(wait=False, cancel_futures=True)
    agent.receiver.stop()
    agent.docker.close()
    agent.store.close()
