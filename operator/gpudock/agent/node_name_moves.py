"""A changed spec.nodeName moves the instance (#23 item 1, docs/migration.md).

The agent that holds a GpuReplicaSet (api/ownership.holds) and finds its
spec.nodeName naming another node makes a GpuMigration to that node, owned by the
GpuReplicaSet. It is named after the generation and the target, so it is made once per
change: a move that fails (no agent there, no room) is not tried again until the spec
changes again, and its GpuMigration says why. The move itself is an ordinary
migration (migration_runner.py); until it switches, the instance serves where it is
and shows Degraded reason NodeNameChanged.
"""

from __future__ import annotations

import contextlib
import hashlib
from collections.abc import Mapping
from typing import Any

from gpudock.adapters.kube_api import ConflictError, ObjectNotFoundError
from gpudock.api import GROUP, VERSION, gpu_migration, gpu_replica_set, ownership
from gpudock.core.ports import KubeClient

MAX_NAME = 253  # a Kubernetes object name


def target_of(body: Mapping[str, Any], node_name: str) -> str:
    """The node spec.nodeName moves the resource to, "" when it does not move it:
    it names this node or none, this node does not hold it, or it is being deleted."""
    meta = body.get("metadata") or {}
    wanted = (body.get("spec") or {}).get("nodeName")
    if not isinstance(wanted, str) or not wanted or wanted == node_name or \
            meta.get("deletionTimestamp"):
        return ""
    held = ownership.holds((body.get("status") or {}).get("nodeName"),
                           meta.get("finalizers") or (), node_name)
    return wanted if held else ""


def migration_name(name: str, target: str, generation: object) -> str:
    """One name per (resource, target, generation); a long one is cut and hashed."""
    full = f"{name}-to-{target}-g{generation}"
    if len(full) <= MAX_NAME:
        return full
    digest = hashlib.sha256(full.encode()).hexdigest()[:10]
    return f"{full[:MAX_NAME - 11].rstrip('-.')}-{digest}"


def request_move(kube: KubeClient, body: Mapping[str, Any], node_name: str) -> str | None:
    """The GpuMigration that moves the resource to its changed spec.nodeName, made if
    it is not there yet; None when spec.nodeName does not move it."""
    target = target_of(body, node_name)
    if not target:
        return None
    meta = body["metadata"]
    name = migration_name(meta["name"], target, meta.get("generation"))
    try:
        kube.get(gpu_migration.PLURAL, meta["namespace"], name)
        return name
    except ObjectNotFoundError:
        pass
    with contextlib.suppress(ConflictError):  # made meanwhile (a previous pass)
        kube.create(gpu_migration.PLURAL, meta["namespace"], {
            "apiVersion": f"{GROUP}/{VERSION}", "kind": gpu_migration.KIND,
            "metadata": {"name": name, "labels": {"gpudock.dev/cause": "nodeName"},
                         "ownerReferences": [{
                             "apiVersion": f"{GROUP}/{VERSION}",
                             "kind": gpu_replica_set.KIND, "name": meta["name"],
                             "uid": meta["uid"]}]},
            "spec": {"replicaSetName": meta["name"], "targetNode": target}})
    return name
