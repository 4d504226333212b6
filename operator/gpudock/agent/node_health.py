"""The node's heartbeat (its GpuNode) and the cluster-level check every agent makes:
a resource whose node has no agent, or a silent one, says so in its status.

Every agent makes the check for the namespaces it watches; they write the same
thing, and only when the resource does not say it already, so there is no fight.
A resource bound to a live agent is never touched here: that agent writes its status.
The GpuReplicaSets and SizedVolumes it checks come from kopf indexes the watch keeps
current (by the node each names, as ``watched`` makes them), so the check lists
nothing and costs nothing for the resources of this node.
"""

from __future__ import annotations

import contextlib
import functools
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Any

from gpudock import __version__, metrics
from gpudock.adapters.docker.runtime import DockerRuntime
from gpudock.adapters.kube_api import KubeApi, KubeUnavailableError, ObjectNotFoundError
from gpudock.adapters.volumes.registry import open_volume_backend
from gpudock.agent.exec_runner import failed
from gpudock.agent.gpu_usage import UsageMeter
from gpudock.agent.migration_arrivals import Arrival, Arrivals
from gpudock.api import (
    exec_request,
    gpu_migration,
    gpu_replica_set,
    image_commit,
    ownership,
    sized_volume,
)
from gpudock.api.placement import (
    LABEL_GPU_COUNT,
    LABEL_GPU_MEMORY,
    LABEL_GPU_PRODUCT,
    bound_node,
    label_value,
)
from gpudock.api.reasons import Reason
from gpudock.core.gpu_node import gpu_node_status, node_verdict, unreachable_status
from gpudock.core.gpus import GpuInventory
from gpudock.core.kstatus import with_kstatus
from gpudock.core.limits import (
    NANO_PER_MILLI,
    NodeCapacity,
    Requests,
    allocation,
    recorded_requests,
)
from gpudock.core.observed import ObservedContainer, ResourceKey
from gpudock.core.revision import RevisionStore
from gpudock.errors import GpudockError, StoreUnavailableError
from gpudock.settings import Settings

KIND = "GpuNode"
PLURAL = "gpunodes"


def beat(settings: Settings, now: str, docker: DockerRuntime, inventory: GpuInventory,
         kube: KubeApi, store: RevisionStore | None = None,
         usage: UsageMeter | None = None, stream: Mapping[str, Any] | None = None,
         transfer: Mapping[str, Any] | None = None,
         arrivals: Arrivals | None = None,
         ended: Callable[[list[Arrival]], None] | None = None) -> dict[ResourceKey, float]:
    """Write the GpuNode; returns how long each instance's GPUs have been idle (with
    ``usage``, which also writes the usage metrics). ``arrivals``: the GPUs held for
    migrations coming here, shown held (``arriving``); those that ended are dropped,
    and given to ``ended`` once the GpuNode is written (what it removes, and how
    long that takes, never holds the heartbeat up)."""
    containers = docker.list_containers()
    devices = inventory.list_gpus()
    dropped: list[Arrival] = []
    if arrivals is not None:
        dropped = arrivals.settle(containers, functools.partial(_migration_ended, kube))
    status = gpu_node_status(devices, containers,
                             (settings.port_range.first, settings.port_range.last),
                             __version__, now, hide_holders=settings.hide_holder_names,
                             arriving=arrivals.gpus() if arrivals is not None else None)
    capacity = docker.node_capacity()
    if capacity is not None:
        status["allocatable"] = capacity.to_dict()
    status["allocated"] = allocation(held_requests(containers, store, settings, capacity))
    # New SizedVolumes go to the node's backend; the room is where it makes them.
    try:
        free: int | None = open_volume_backend(settings.volume_backend,
                                               settings.volumes_at, docker).free_bytes()
    except (OSError, GpudockError):
        free = None
    status["volumes"] = {"backend": settings.volume_backend, "freeBytes": free}
    status["ports"]["explicitRange"] = str(settings.explicit_port_range)  # for the scheduler
    status["stream"] = dict(stream) if stream else None  # kubectl gpudock logs
    if transfer is not None:  # the migration endpoint (docs/migration.md)
        status["transfer"] = dict(transfer)
    kube.write_cluster_status(PLURAL, KIND, settings.node_name, with_kstatus(status),
                              gpu_labels(status["gpus"]))
    metrics.GPUS_TOTAL.labels(settings.node_name).set(status["gpusTotal"])
    metrics.GPUS_ALLOCATED.labels(settings.node_name).set(status["gpusAllocated"])
    if dropped and ended is not None:
        ended(dropped)
    return usage.record(devices, containers) if usage is not None else {}


def _migration_ended(kube: KubeApi, where: tuple[str, str]) -> bool:
    """The GpuMigration has finished or is gone (an API server away: not known, so
    not ended)."""
    try:
        body = kube.get(gpu_migration.PLURAL, *where)
    except ObjectNotFoundError:
        return True
    except KubeUnavailableError:
        return False
    return gpu_migration.phase_of(body) in gpu_migration.FINISHED


def gpu_labels(gpus: list[dict[str, Any]]) -> dict[str, str]:
    """The labels the agent keeps on its GpuNode, for spec.nodeSelector (the first
    GPU's model and memory; a node of mixed GPUs is matched by gpuSelector)."""
    first = gpus[0] if gpus else {}
    return {LABEL_GPU_COUNT: str(len(gpus)),
            **({LABEL_GPU_PRODUCT: label_value(str(first.get("model")))} if gpus else {}),
            **({LABEL_GPU_MEMORY: str(first.get("memoryMiB"))} if gpus else {})}


def held_requests(containers: Sequence[ObservedContainer], store: RevisionStore | None,
                  settings: Settings, capacity: NodeCapacity | None) -> list[Requests]:
    """The requests of each instance holding a container on the node (its newest
    one), from its revision's record, which in-place changes keep current; a
    container without one counts what Docker limits it to, and so do all once the
    store is found unavailable: the heartbeat goes on while it is away (the soak's
    etcd_stop found the node shown NodeNotReady, its instances Degraded, while their
    containers ran)."""
    newest: dict[tuple[str, str], ObservedContainer] = {}
    for c in containers:
        if c.owner is not None:
            key = (c.owner.namespace, c.owner.name)
            if key not in newest or c.revision > newest[key].revision:
                newest[key] = c
    found = []
    for (namespace, name), c in sorted(newest.items()):
        record = None
        if store is not None:
            try:
                record = store.get(namespace, name, c.revision)
            except StoreUnavailableError:
                store = None  # not asked again in this heartbeat (each try waits)
        if record is not None and record.uid == c.uid:
            found.append(recorded_requests(record.spec, settings.limit_defaults, capacity))
        else:
            found.append(Requests(cpu=c.limits.nano_cpus // NANO_PER_MILLI,
                                  memory=c.limits.memory))
    return found


def watched(body: Mapping[str, Any]) -> dict[str, dict[str, Any]]:
    """A kopf index entry of a GpuReplicaSet or SizedVolume: under the node it names,
    what flag_unserved reads of it (names, finalizers, node, status)."""
    meta, spec = body.get("metadata") or {}, body.get("spec") or {}
    return {bound_node(body): {  # "" for those the scheduler has not placed yet
        "metadata": {"namespace": meta.get("namespace"), "name": meta.get("name"),
                     "finalizers": list(meta.get("finalizers") or ())},
        "spec": {"nodeName": spec.get("nodeName"), "state": spec.get("state"),
                 "idleStopSeconds": spec.get("idleStopSeconds")},
        "status": dict(body.get("status") or {})}}


def flag_unserved(settings: Settings, now: str, kube: KubeApi,
                  others: Mapping[str, Iterable[Mapping[str, Any]]]) -> list[str]:
    """Write NodeNotFound / NodeNotReady on the watched resources whose node cannot
    serve them, and fail the requests (ExecRequest, ImageCommit) not yet taken whose
    GpuReplicaSet is on such a node; returns what was written, for the log.
    ``others``: by plural, the GpuReplicaSets and SizedVolumes that name another node
    than this one (``watched`` entries)."""
    nodes: dict[str, tuple[Reason, str] | None] = {}
    written = []
    replica_sets: dict[tuple[str, str], str] = {}
    for plural in (gpu_replica_set.PLURAL, sized_volume.PLURAL):
        for body in others.get(plural, ()):
            if plural == gpu_replica_set.PLURAL:
                replica_sets[(body["metadata"]["namespace"], body["metadata"]["name"])] = \
                    bound_node(body)
            meta = body.get("metadata") or {}
            node = bound_node(body)
            if not node or node == settings.node_name:  # unplaced: the scheduler says
                continue
            bound = [f for f in meta.get("finalizers") or ()
                     if f.startswith(ownership.FINALIZER_PREFIX)]
            if bound and ownership.node_finalizer(node) not in bound:
                continue  # held by another node than it names: that node's affair
            if node not in nodes:
                nodes[node] = _verdict(kube, node, now, settings.heartbeat_seconds)
            verdict = nodes[node]
            if verdict is None:
                continue
            status = unreachable_status(body.get("status") or {}, *verdict, now)
            if status is None:
                continue
            try:
                kube.patch_status(plural, meta["namespace"], meta["name"],
                                  with_kstatus(status))
            except ObjectNotFoundError:
                continue
            written.append(f"{plural} {meta['namespace']}/{meta['name']}: {verdict[0]}")
    for plural in (exec_request.PLURAL, image_commit.PLURAL):
        if not replica_sets:
            break  # no GpuReplicaSet of another node: no request to fail here
        for body in kube.list_objects(plural, settings.namespaces):
            meta = body["metadata"]
            if (body.get("status") or {}).get("phase"):
                continue  # taken by an agent already
            node = replica_sets.get((meta["namespace"],
                                     str((body.get("spec") or {}).get("replicaSetName"))), "")
            if not node or node == settings.node_name:
                continue  # no GpuReplicaSet: its agent-less failure is written elsewhere
            if node not in nodes:
                nodes[node] = _verdict(kube, node, now, settings.heartbeat_seconds)
            verdict = nodes[node]
            if verdict is not None:
                with contextlib.suppress(ObjectNotFoundError):
                    kube.patch_status(plural, meta["namespace"], meta["name"],
                                      with_kstatus(failed(*verdict, now, settings.node_name)))
                written.append(f"{plural} {meta['namespace']}/{meta['name']}: {verdict[0]}")
    return written


def _verdict(kube: KubeApi, node: str, now: str,
             heartbeat_seconds: float) -> tuple[Reason, str] | None:
    try:
        gpu_node = kube.get_cluster(PLURAL, node)
    except ObjectNotFoundError:
        return node_verdict(node, None, now, heartbeat_seconds)
    return node_verdict(node, gpu_node, now, heartbeat_seconds)
