"""What the scheduler knows of the fleet: the GpuNodes, GpuReplicaSets and
SizedVolumes as their watches (kopf's) last showed them, and as the scheduler's own
writes left them, so a pass never works from an older view than its last binding."""

from __future__ import annotations

import threading
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from gpudock.api import gpu_replica_set, sized_volume

GPU_NODES = "gpunodes"
PLURALS = (GPU_NODES, gpu_replica_set.PLURAL, sized_volume.PLURAL)


@dataclass(frozen=True)
class FleetSnapshot:
    gpu_nodes: list[dict[str, Any]]
    replica_sets: list[dict[str, Any]]
    volumes: list[dict[str, Any]]


class FleetCache:
    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._objects: dict[str, dict[str, dict[str, Any]]] = {p: {} for p in PLURALS}
        self.wake = threading.Event()

    def note(self, plural: str, event_type: str | None, body: Mapping[str, Any]) -> None:
        """A watch event (or the scheduler's own write): kept, or forgotten when
        deleted; an older resourceVersion never replaces a newer one seen."""
        uid = str((body.get("metadata") or {}).get("uid"))
        with self._lock:
            objects = self._objects[plural]
            if event_type == "DELETED":
                objects.pop(uid, None)
            else:
                known = objects.get(uid)
                if known is None or _version(body) >= _version(known):
                    objects[uid] = dict(body)
        self.wake.set()

    def snapshot(self) -> FleetSnapshot:
        with self._lock:
            return FleetSnapshot(*(list(self._objects[p].values()) for p in PLURALS))


def _version(body: Mapping[str, Any]) -> int:
    """resourceVersions are opaque to clients, but etcd's are increasing integers;
    anything else counts as newest."""
    text = str((body.get("metadata") or {}).get("resourceVersion") or "")
    return int(text) if text.isdigit() else 1 << 62
