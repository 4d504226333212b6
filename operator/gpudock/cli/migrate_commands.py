"""``kubectl gpudock migrate NAME [--to NODE]`` and ``kubectl gpudock drain NODE``:
GpuMigrations made for people (docs/migration.md)."""

from __future__ import annotations

import time
from typing import Any, TextIO

from gpudock.adapters.kube_api import KubeApi
from gpudock.api import GROUP, VERSION, gpu_migration, gpu_replica_set

FINISHED = tuple(str(p) for p in gpu_migration.FINISHED)


def _migration(kube: KubeApi, namespace: str, name: str, target: str | None) -> str:
    spec: dict[str, Any] = {"replicaSetName": name}
    if target:
        spec["targetNode"] = target
    created = kube.create(gpu_migration.PLURAL, namespace, {
        "apiVersion": f"{GROUP}/{VERSION}", "kind": gpu_migration.KIND,
        "metadata": {"generateName": f"{name[:40]}-migrate-"}, "spec": spec})
    return str(created["metadata"]["name"])


def migrate(kube: KubeApi, namespace: str, name: str, target: str | None, wait: float,
            out: TextIO) -> int:
    """Make a GpuMigration; with ``wait``, follow it until it ends (exit 1 unless
    Succeeded)."""
    made = _migration(kube, namespace, name, target)
    print(f"gpumigration.gpudock.dev/{made} created", file=out)
    if wait <= 0:
        return 0
    deadline = time.monotonic() + wait
    status: dict[str, Any] = {}
    while time.monotonic() < deadline:
        status = kube.get(gpu_migration.PLURAL, namespace, made).get("status") or {}
        if status.get("phase") in FINISHED:
            break
        time.sleep(1.0)
    print(f"{made}: {status.get('phase') or 'Pending'} {status.get('reason') or ''}: "
          f"{status.get('message') or ''} (downtime {status.get('downtimeSeconds')} s)",
          file=out)
    return 0 if status.get("phase") == gpu_migration.Phase.SUCCEEDED else 1


def cordon(kube: KubeApi, node: str, unschedulable: bool, out: TextIO) -> int:
    """Mark the node (GpuNode spec.unschedulable) so the scheduler binds nothing new
    to it, or clear the mark; what runs there stays (docs/fleet.md)."""
    kube.get_cluster("gpunodes", node)  # a node that does not exist is an error
    kube.patch_cluster("gpunodes", node, {"spec": {"unschedulable": unschedulable}})
    print(f"gpunode {node} {'cordoned' if unschedulable else 'uncordoned'}", file=out)
    return 0


def drain(kube: KubeApi, node: str, out: TextIO) -> int:
    """Cordon the node (GpuNode spec.unschedulable), then a GpuMigration for every
    instance bound to it, Stopped ones too (its agent moves at most
    --max-outbound-migrations at once). Instances pinned by spec.nodeName are listed,
    not moved."""
    cordon(kube, node, True, out)
    pinned = 0
    for body in kube.list_cluster(gpu_replica_set.PLURAL):
        meta, spec = body["metadata"], body.get("spec") or {}
        if spec.get("nodeName") == node:
            pinned += 1
            print(f"{meta['namespace']}/{meta['name']}: pinned by spec.nodeName; not "
                  "moved", file=out)
        elif (body.get("status") or {}).get("nodeName") == node and \
                not meta.get("deletionTimestamp"):
            made = _migration(kube, meta["namespace"], meta["name"], None)
            print(f"{meta['namespace']}/{meta['name']}: gpumigration {made}", file=out)
    return 1 if pinned else 0
