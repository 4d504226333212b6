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
from collections.abc import Iterable, Mapping
from typing import Any

from gpudock import __version__, metrics
from gpudock.adapters.docker.runtime import DockerRuntime
from gpudock.adapters.kube_api import KubeApi, ObjectNotFoundError
from gpudock.adapters.volumes.registry import open_volume_backend
from gpudock.agent.exec_runner import failed
from gpudock.api import exec_request, gpu_replica_set, image_commit, ownership, sized_volume
from gpudock.api.reasons import Reason
from gpudock.core.gpu_node import gpu_node_status, node_verdict, unreachable_status
from gpudock.core.gpus import GpuInventory
from gpudock.core.kstatus import with_kstatus
from gpudock.errors import GpudockError
from gpudock.settings import Settings

KIND = "GpuNode"
PLURAL = "gpunodes"


def beat(settings: Settings, now: str, docker: DockerRuntime, inventory: GpuInventory,
         kube: KubeApi, stream: Mapping[str, Any] | None = None) -> None:
    status = gpu_node_status(inventory.list_gpus(), docker.list_containers(),
                             (settings.port_range.first, settings.port_range.last),
                             __version__, now, hide_holders=settings.hide_holder_names)
    # New SizedVolumes go to the node's backend; the room is where it makes them.
    try:
        free: int | None = open_volume_backend(settings.volume_backend,
                                               settings.volumes_at, docker).free_bytes()
    except (OSError, GpudockError):
        free = None
    status["volumes"] = {"backend": settings.volume_backend, "freeBytes": free}
    status["stream"] = dict(stream) if stream else None  # kubectl gpudock logs
    kube.write_cluster_status(PLURAL, KIND, settings.node_name, with_kstatus(status))
    metrics.GPUS_TOTAL.labels(settings.node_name).set(status["gpusTotal"])
    metrics.GPUS_ALLOCATED.labels(settings.node_name).set(status["gpusAllocated"])


def watched(body: Mapping[str, Any]) -> dict[str, dict[str, Any]]:
    """A kopf index entry of a GpuReplicaSet or SizedVolume: under the node it names,
    what flag_unserved reads of it (names, finalizers, node, status)."""
    meta, spec = body.get("metadata") or {}, body.get("spec") or {}
    return {str(spec.get("nodeName")): {
        "metadata": {"namespace": meta.get("namespace"), "name": meta.get("name"),
                     "finalizers": list(meta.get("finalizers") or ())},
        "spec": {"nodeName": spec.get("nodeName")},
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
                    str((body.get("spec") or {}).get("nodeName"))
            meta, spec = body.get("metadata") or {}, body.get("spec") or {}
            node = spec.get("nodeName")
            if not isinstance(node, str) or node == settings.node_name:
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
                                     str((body.get("spec") or {}).get("replicaSetName"))))
            if node is None or node == settings.node_name:
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
