"""Each revision the API makes, kept as an apps/v1 ControllerRevision owned by its
GpuReplicaSet and labelled gpudock.dev/name (as Deployments and StatefulSets keep
theirs): its ``data`` is the Go service's Info of that version, from which GET
history answers."""

from __future__ import annotations

import contextlib
import hashlib
from collections.abc import Mapping
from typing import Any

from gpudock.api import GROUP, VERSION
from gpudock.api.gpu_replica_set import KIND
from gpudock.errors import GpudockError
from gpudock.rest.context import ApiContext

NAME_LABEL = "gpudock.dev/name"


def label_value(object_name: str) -> str:
    if len(object_name) <= 63:
        return object_name
    digest = hashlib.sha256(object_name.encode()).hexdigest()[:10]
    return f"{object_name[:50].rstrip('.-')}-{digest}"


def selector(object_name: str) -> str:
    return f"{NAME_LABEL}={label_value(object_name)},gpudock.dev/kind={KIND}"


def record(ctx: ApiContext, namespace: str, obj: Mapping[str, Any],
           info: Mapping[str, Any]) -> None:
    meta = obj.get("metadata") or {}
    version = int(info.get("version") or 0)
    body = {
        "apiVersion": "apps/v1", "kind": "ControllerRevision",
        "metadata": {
            "name": f"{meta['name'][:230]}-grs-{version}",
            "labels": {NAME_LABEL: label_value(str(meta["name"])), "gpudock.dev/kind": KIND},
            "ownerReferences": [{"apiVersion": f"{GROUP}/{VERSION}", "kind": KIND,
                                 "name": meta["name"], "uid": meta["uid"]}],
        },
        "revision": version, "data": dict(info),
    }
    # Recorded already (a retried call): the first one stays.
    with contextlib.suppress(GpudockError):
        ctx.kube.create_controller_revision(namespace, body)


def recorded(ctx: ApiContext, namespace: str, object_name: str,
             uid: str) -> dict[int, dict[str, Any]]:
    """version -> Info of the revisions recorded for the object of ``uid``."""
    found: dict[int, dict[str, Any]] = {}
    for item in ctx.kube.list_controller_revisions(namespace, selector(object_name)):
        owners = (item.get("metadata") or {}).get("ownerReferences") or ()
        if any(o.get("uid") == uid for o in owners) and isinstance(item.get("data"), dict):
            found[int(item.get("revision") or 0)] = item["data"]
    return found


def purge(ctx: ApiContext, namespace: str, object_name: str) -> None:
    ctx.kube.delete_controller_revisions(namespace, selector(object_name))
