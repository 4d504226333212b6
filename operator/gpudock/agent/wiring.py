"""The node agent's composition root: every long-lived object the handlers use, built
once at start-up from the settings, and handed to the handlers typed.

kopf gives each handler its ``memo``; the agent keeps exactly one thing in it, the
:class:`NodeAgent` built by :func:`build`, and handlers take it with :func:`of`.
Nothing else is stored in the memo, so what a handler depends on is what it reads off
the NodeAgent, and a test can build one from fakes.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import kopf

from gpudock import metrics
from gpudock.adapters.docker.runtime import DockerRuntime
from gpudock.adapters.gpu_inventory import inventory_from_settings
from gpudock.adapters.kube_api import KubeApi
from gpudock.adapters.revision_store import open_revision_store
from gpudock.adapters.timed_store import TimedRevisionStore
from gpudock.agent.gpu_access import AccessProbe
from gpudock.agent.gpu_health import GpuHealth
from gpudock.agent.gpu_usage import UsageMeter
from gpudock.agent.log_stream import LogStreams
from gpudock.agent.migration_context import MigrationContext
from gpudock.agent.migration_receiver import MigrationReceiver
from gpudock.agent.migration_runner import MigrationRunner
from gpudock.agent.node_locks import NodeLocks
from gpudock.agent.replica_set_reconciler import ReplicaSetReconciler
from gpudock.agent.request_slots import RequestSlots
from gpudock.agent.status_writer import StatusWriter
from gpudock.agent.volume_reconciler import VolumeReconciler
from gpudock.agent.wakeups import Wakeups
from gpudock.api import gpu_replica_set, sized_volume
from gpudock.core.gpus import GpuInventory
from gpudock.core.revision import RevisionStore
from gpudock.core.times import utc_now
from gpudock.crash_points import CrashPoints
from gpudock.settings import Settings

MEMO_KEY = "agent"


@dataclass
class RequestBook:
    """What this agent knows of the one-shot requests (ExecRequest, ImageCommit)."""

    # UIDs this agent runs now, or waits to run (for a slot: request_slots.py).
    running: dict[str, asyncio.Task[None]] = field(default_factory=dict)
    waiting: set[str] = field(default_factory=set)  # of those, the ones without a slot
    done: set[str] = field(default_factory=set)  # UIDs it ran (older events may follow)
    expiring: dict[str, asyncio.Task[None]] = field(default_factory=dict)  # TTL deletes


@dataclass(frozen=True)
class NodeAgent:
    """Everything the handlers of one node agent share. Built by :func:`build`."""

    settings: Settings
    clock: Callable[[], str]
    docker: DockerRuntime
    inventory: GpuInventory
    kube: KubeApi
    store: RevisionStore
    replica_sets: ReplicaSetReconciler
    volumes: VolumeReconciler
    replica_set_status: StatusWriter
    volume_status: StatusWriter
    # ExecRequests and ImageCommits run on threads of their own, never on the default
    # pool that the reconciles, the Docker and API calls and the heartbeat use; a
    # request runs only with one of the slots (as many as the pool has threads).
    request_pool: concurrent.futures.ThreadPoolExecutor
    request_slots: RequestSlots
    migrations: MigrationRunner  # GpuMigrations leaving this node (docs/migration.md)
    receiver: MigrationReceiver  # the --transfer-port endpoint, for those coming in
    wakeups: Wakeups = field(default_factory=Wakeups)
    # Set when a GPU or port was taken or freed: the heartbeat writes the GpuNode now.
    node_changed: asyncio.Event = field(default_factory=asyncio.Event)
    phases: dict[str, str] = field(default_factory=dict)  # GpuReplicaSet UID -> phase
    requests: RequestBook = field(default_factory=RequestBook)
    # kopf's indexes of the watched resources by node, filled in when the node's
    # tasks start (kopf hands indexes to handlers only).
    watched: dict[str, kopf.Index[str, dict[str, Any]]] = field(default_factory=dict)
    tasks: list[asyncio.Task[None]] = field(default_factory=list)
    # `kubectl gpudock logs` (--stream-port): the server, and what the GpuNode publishes.
    log_streams: list[LogStreams] = field(default_factory=list)
    stream: dict[str, Any] = field(default_factory=dict)
    # The GPUs' health marks (agent/gpu_health.py); also what ``inventory`` is.
    gpu_health: GpuHealth | None = None
    access_probe: AccessProbe | None = None  # --gpu-access-probe-seconds; None: off
    usage: UsageMeter = field(default_factory=lambda: UsageMeter("", False))

    def now(self) -> str:
        return self.clock()


def build(settings: Settings, clock: Callable[[], str] = utc_now) -> NodeAgent:
    """Connect to Docker, the GPUs, the API server and the revision store. Raises the
    adapters' errors (a TransientError when a dependency is not reachable yet)."""
    docker = DockerRuntime(settings.docker_host, stop_timeout=settings.stop_timeout,
                           on_request=lambda method: metrics.DOCKER_REQUESTS.labels(
                               method).inc())
    gpu_health = GpuHealth(inventory_from_settings(settings), settings.state_dir,
                           settings.gpu_readmit_seconds, clock, settings.node_name)
    inventory: GpuInventory = gpu_health
    kube = KubeApi(settings.kubeconfig)
    try:
        docker.version()  # reachable now, or retry start-up
        docker.ensure_network(settings.instance_network, settings.instance_subnet)
        inventory.list_gpus()
        store = TimedRevisionStore(open_revision_store(settings.store_url, settings.node_name))
    except BaseException:
        docker.close()
        raise
    try:
        store.list("", "")
    except BaseException:
        store.close()
        docker.close()
        raise
    volumes = VolumeReconciler(settings.volume_backend, settings.volumes_at, docker,
                               store, clock, CrashPoints(settings.crash_at),
                               locks=NodeLocks(settings.state_dir / "volume-locks"))
    replica_sets = ReplicaSetReconciler(settings, docker, inventory, kube, store, clock,
                                        volumes)
    moving = MigrationContext(settings, kube, docker, store, inventory, replica_sets,
                              volumes, clock)
    return NodeAgent(
        settings=settings, clock=clock, docker=docker, inventory=inventory, kube=kube,
        store=store, replica_sets=replica_sets,
        migrations=MigrationRunner(moving), receiver=MigrationReceiver(moving),
        volumes=volumes,
        replica_set_status=StatusWriter(kube, gpu_replica_set.PLURAL, gpu_replica_set.KIND,
                                        settings.node_name, clock),
        volume_status=StatusWriter(kube, sized_volume.PLURAL, sized_volume.KIND,
                                   settings.node_name, clock),
        request_pool=concurrent.futures.ThreadPoolExecutor(
            settings.max_running_requests, thread_name_prefix="gpudock-request"),
        request_slots=RequestSlots(settings.max_running_requests,
                                   settings.max_running_execs_per_namespace),
        gpu_health=gpu_health,
        access_probe=AccessProbe(settings.gpu_access_probe_command, replica_sets.access_lost)
        if settings.gpu_access_probe_seconds > 0 else None,
        usage=UsageMeter(settings.node_name, settings.instance_metrics),
    )


def of(memo: kopf.Memo) -> NodeAgent:
    """The NodeAgent of a handler's memo (put there by the start-up handler)."""
    agent = memo.get(MEMO_KEY)
    if not isinstance(agent, NodeAgent):
        raise RuntimeError("the node agent is not started (no NodeAgent in kopf's memo)")
    return agent


def settings_of(memo: kopf.Memo) -> Settings:
    """The settings, known before start-up (handed to kopf.run in its memo)."""
    settings = memo.get("settings")
    if not isinstance(settings, Settings):
        raise RuntimeError("kopf's memo has no gpudock Settings")
    return settings
